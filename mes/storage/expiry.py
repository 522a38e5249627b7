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

import dataclasses
import datetime as dt
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Connection, Table, bindparam, delete, insert, select, update

from mes.days import day_int
from mes.log import get_logger

if TYPE_CHECKING:
    from mes.storage import Storage

__all__ = ["EXPIRED", "ExpiryPass", "expire_content", "forget_expired"]

log = get_logger("mes.expiry")

EXPIRED = "content_expired"
# The row of mes_content_expired that says before which day (``last_id``, 20260115) the
# conversations' titles are cleared.
_TITLES = "mes_conversations"
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


@dataclasses.dataclass
class ExpiryPass:
    """What one ``expire_content`` pass did: rows erased per table, and whether it reached
    the end (False: its time was up; the next pass goes on from where it stopped)."""

    rows: dict[str, int] = dataclasses.field(default_factory=dict)
    finished: bool = True


def _expire_table(
    storage: Storage, table: Table, after: int, batch: int, deadline: float | None
) -> tuple[int, int, bool]:
    """Erase the content of the rows of ``table`` past id ``after``, ``batch`` rows per
    transaction, until the end or ``deadline`` (``time.monotonic``); returns the rows
    erased, the last id read, and whether it reached the end."""
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
                return erased, last, True
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
            return erased, last, True
        if deadline is not None and time.monotonic() >= deadline:
            return erased, last, False


def expire_content(
    storage: Storage, days: int, *, batch: int = 1000, seconds: float | None = None
) -> ExpiryPass:
    """Erase the content of the days older than ``days`` days before today (in ``TZ``),
    for at most about ``seconds`` (None: to the end); returns the rows erased per table
    this pass (a table erased before is read only past the last row erased: a late event
    written into an old day since) and whether it finished. ``days`` <= 0, or no daily
    tables: nothing."""
    result = ExpiryPass()
    if days <= 0 or not storage.catalog.daily:
        return result
    deadline = None if seconds is None else time.monotonic() + seconds
    catalog = storage.catalog
    cutoff = storage.calendar.today() - dt.timedelta(days=days)
    known = catalog.refresh()
    marker = catalog.content_expired
    with storage.engine.connect() as conn:
        done = {r.table_name: (int(r.last_id), int(r.rows)) for r in conn.execute(select(marker))}
    erased = result.rows
    for day in (d for d in catalog.partition_days() if d < cutoff):
        if not result.finished:
            break
        tables = catalog.day_tables(day)
        for table in (tables.chat, tables.error):
            if table.name not in known:
                continue
            if not result.finished:
                break
            after, before = done.get(table.name, (0, 0))
            count, last, result.finished = _expire_table(storage, table, after, batch, deadline)
            if table.name in done and last == after:
                continue  # nothing new since the last pass
            _record(storage, table.name, done, last, before + count)
            if count:
                erased[table.name] = count
                log.info("content_expired", table=table.name, day=day.isoformat(), rows=count,
                         finished=result.finished)  # fmt: skip
    titled, _ = done.get(_TITLES, (0, 0))
    if result.finished and (erased or titled < day_int(cutoff)):
        cleared, result.finished = _untitle(storage, cutoff, batch, deadline)
        if result.finished:
            _record(storage, _TITLES, done, day_int(cutoff), done.get(_TITLES, (0, 0))[1] + cleared)
    return result


def _record(storage: Storage, name: str, done: dict[str, tuple[int, int]], last: int, rows: int) -> None:
    """How far ``name`` is erased, in ``mes_content_expired``."""
    marker = storage.catalog.content_expired
    record = {"last_id": last, "rows": rows, "expired_at": int(time.time())}
    with storage.engine.begin() as conn:
        if name in done:
            conn.execute(update(marker).where(marker.c.table_name == name).values(record))
        else:
            conn.execute(insert(marker).values(table_name=name, **record))
    done[name] = (last, rows)


def _untitle(storage: Storage, cutoff: dt.date, batch: int, deadline: float | None) -> tuple[int, bool]:
    """Conversations that started before ``cutoff`` lose their title (their first message's
    text), ``batch`` at a time: found by a plain read, rewritten by key (no statement locks
    the index rows of every conversation at once), until none is left or ``deadline``.
    Returns the titles cleared and whether none is left."""
    c = storage.catalog.conversations
    first_kept = storage.calendar.start_ms(cutoff)
    statement = (
        update(c)
        .where(
            c.c.conversation_id == bindparam("cid"),
            c.c.user_id == bindparam("uid"),
            c.c.first_at_ms < first_kept,
        )
        .values(title="")
    )
    engine = storage.engine.execution_options(mes_write=True)
    cleared = 0
    while True:
        with storage.engine.connect() as conn:  # the ones cleared no longer match: no cursor needed
            keys = conn.execute(
                select(c.c.conversation_id, c.c.user_id)
                .where(c.c.first_at_ms < first_kept, c.c.title != "")
                .limit(batch)
            ).all()
        if not keys:
            return cleared, True
        with engine.begin() as conn:
            conn.execute(statement, [{"cid": k.conversation_id, "uid": k.user_id} for k in keys])
        cleared += len(keys)
        if deadline is not None and time.monotonic() >= deadline:
            return cleared, False


def forget_expired(conn: Connection, storage: Storage, names: Iterable[str]) -> None:
    """These tables were dropped or filled again (an archive restored): not done any more."""
    marker = storage.catalog.content_expired
    wanted = list(names)
    if wanted:
        conn.execute(delete(marker).where(marker.c.table_name.in_(wanted)))
