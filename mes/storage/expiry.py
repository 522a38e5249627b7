"""Content retention shorter than metadata: ``MES_CONTENT_RETENTION_DAYS``.

The content of the daily tables older than the cutoff is erased, and everything else
stays: every row with its role, model, ids, times, tokens and finish reason, the index
and the rollups (which count rows, not words: they do not change). A row loses its
``content`` and what ``other`` kept of the message (tool calls, names, parts); ``other``
keeps only what MES put there about the request (its id, the gateway's metadata, the
response's envelope, the redaction counts) and says ``"content_expired": true``, which
the read API passes on. A conversation that started on an erased day loses its title.
Error rows keep their error (code and message), not the messages they carried.

The workers' maintenance runs it (one worker at a time, under its Redis lock), in bounded
transactions of ``batch`` rows walked by primary key, logging its progress. How far each
table is erased is recorded in ``mes_content_expired``: a later pass reads only the rows
added since (an event that arrived late, into an old day); a table dropped or restored from
an archive leaves that list, so a restored one is erased again. Interrupted, a pass
resumes: rows already erased are skipped. It needs daily tables (``MES_DAILY_PARTITION=true``).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Connection, Table, bindparam, delete, insert, select, update

from mes.log import get_logger

if TYPE_CHECKING:
    from mes.storage import Storage

__all__ = ["EXPIRED", "expire_content", "forget_expired"]

log = get_logger("mes.expiry")

EXPIRED = "content_expired"
# What ``other`` keeps once the content is gone: MES's own notes on the request.
_KEPT = ("request_id", "metadata", "response", "redacted")


def _expired_other(raw: str | None) -> str:
    try:
        old = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        old = {}
    kept = {k: old[k] for k in _KEPT if isinstance(old, dict) and k in old}
    return orjson.dumps({"content_stored": False, EXPIRED: True, **kept}).decode()


def _is_expired(empty: bool, other: str | None) -> bool:
    if not empty or not other:
        return False
    try:
        value = orjson.loads(other)
    except orjson.JSONDecodeError:
        return False
    return isinstance(value, dict) and value.get(EXPIRED) is True


def _expire_table(storage: Storage, table: Table, after: int, batch: int) -> tuple[int, int]:
    """Erase the content of the rows of ``table`` past id ``after``, ``batch`` rows per
    transaction; returns the rows erased and the last id read."""
    c = table.c
    erased, last = 0, after
    values: dict[str, Any] = {"content": None, "other": bindparam("new_other")}
    statement = update(table).where(c.id == bindparam("row_id")).values(values)
    engine = storage.engine.execution_options(mes_write=True)  # SQLite: BEGIN IMMEDIATE
    while True:
        with engine.begin() as conn:
            query = select(c.id, c.content.is_(None).label("empty"), c.other).where(c.id > last)
            rows = conn.execute(query.order_by(c.id).limit(batch)).all()
            if not rows:
                return erased, last
            todo = [
                {"row_id": r.id, "new_other": _expired_other(r.other)}
                for r in rows
                if not _is_expired(bool(r.empty), r.other)
            ]
            if todo:
                conn.execute(statement, todo)
        erased += len(todo)
        last = rows[-1].id
        if len(rows) < batch:
            return erased, last


def expire_content(storage: Storage, days: int, *, batch: int = 1000) -> dict[str, int]:
    """Erase the content of the days older than ``days`` days before today (in ``TZ``);
    returns the rows erased per table this pass (a table erased before is read only past
    the last row erased: a late event written into an old day since). ``days`` <= 0, or
    no daily tables: nothing."""
    if days <= 0 or not storage.catalog.daily:
        return {}
    catalog = storage.catalog
    cutoff = storage.calendar.today() - dt.timedelta(days=days)
    known = catalog.refresh()
    marker = catalog.content_expired
    with storage.engine.connect() as conn:
        done = {r.table_name: (int(r.last_id), int(r.rows)) for r in conn.execute(select(marker))}
    erased: dict[str, int] = {}
    for day in (d for d in catalog.partition_days() if d < cutoff):
        tables = catalog.day_tables(day)
        for table in (tables.chat, tables.error):
            if table.name not in known:
                continue
            after, before = done.get(table.name, (0, 0))
            count, last = _expire_table(storage, table, after, batch)
            if table.name in done and last == after:
                continue  # nothing new since the last pass
            with storage.engine.begin() as conn:
                record = {"last_id": last, "rows": before + count, "expired_at": int(time.time())}
                if table.name in done:
                    conn.execute(update(marker).where(marker.c.table_name == table.name).values(record))
                else:
                    conn.execute(insert(marker).values(table_name=table.name, **record))
            if count:
                erased[table.name] = count
                log.info("content_expired", table=table.name, day=day.isoformat(), rows=count)
    if erased:
        _untitle(storage, cutoff)
    return erased


def _untitle(storage: Storage, cutoff: dt.date) -> None:
    """Conversations that started before ``cutoff`` lose their title (their first message's text)."""
    c = storage.catalog.conversations
    first_kept = storage.calendar.start_ms(cutoff)
    with storage.engine.begin() as conn:
        conn.execute(update(c).where(c.c.first_at_ms < first_kept, c.c.title != "").values(title=""))


def forget_expired(conn: Connection, storage: Storage, names: Iterable[str]) -> None:
    """These tables were dropped or filled again (an archive restored): not done any more."""
    marker = storage.catalog.content_expired
    wanted = list(names)
    if wanted:
        conn.execute(delete(marker).where(marker.c.table_name.in_(wanted)))
