"""Daily tables as units of maintenance: list, create ahead, drop, archive and restore.

Dropping a day keeps the index and rollups equal to a recount of what remains: the
day's rows of ``mes_daily_stats`` go, and every conversation that had rows that day is
recounted from the days it still has (its index row removed when none is left; the
"conversations" counter moved to its new first day). Restoring an archive is the exact
inverse. Both are safe to repeat after a crash: the tables are dropped (or filled)
first, and the index is fixed in one transaction that a second run redoes.

An archive is gzip'd JSON Lines: a header line (format, version, day, table names,
columns, row counts), then one line per row: ``{"t": "chat"|"error"|"ledger", "r": [...]}``.
Table names come only from the day (a ``datetime.date``), never from the file's text.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Connection, Table, func, insert, select

from mes.days import day_int
from mes.errors import ConfigError
from mes.log import get_logger
from mes.storage.backends import backend_for
from mes.storage.expiry import forget_expired
from mes.storage.rollup import ConversationState, Tally, apply_rollup, forget_day, rewrite_conversations
from mes.storage.rows import KIND_CHAT
from mes.storage.transcript import GAP
from mes.storage.turns import message_digest, stored_message

if TYPE_CHECKING:
    from mes.storage import Storage

__all__ = [
    "ARCHIVE_FORMAT",
    "PartitionInfo",
    "apply_retention",
    "archive_day",
    "days_older_than",
    "drop_day",
    "drop_older_than",
    "list_partitions",
    "read_counts",
    "require_daily",
    "restore_archive",
    "retention_cutoff",
    "tables_of_day",
]

log = get_logger("mes.partitions")

ARCHIVE_FORMAT = "mes-day-archive"
ARCHIVE_VERSION = 1
KINDS = ("chat", "error", "ledger", "uncaptured")  # uncaptured: made on demand
Progress = Callable[[int], None]


@dataclasses.dataclass
class PartitionInfo:
    day: dt.date
    rows: dict[str, int]  # kind -> rows
    bytes: int | None  # data + indexes, where the backend tells


def require_daily(storage: Storage) -> None:
    if not storage.catalog.daily:
        raise ConfigError(
            "MES_DAILY_PARTITION is off: there are no daily tables (set MES_DAILY_PARTITION=true)"
        )


def tables_of_day(storage: Storage, day: dt.date) -> dict[str, Table]:
    t = storage.catalog.day_tables(day)
    return {"chat": t.chat, "error": t.error, "ledger": t.ledger, "uncaptured": t.uncaptured}


def _sizes(storage: Storage, names: list[str]) -> dict[str, int]:
    return backend_for(storage.engine).table_sizes(storage.engine, names) if names else {}


def list_partitions(storage: Storage) -> list[PartitionInfo]:
    """Every day with tables, oldest first, with exact row counts (a count per table)."""
    require_daily(storage)
    known = storage.catalog.refresh()
    days = storage.catalog.partition_days()
    names = [t.name for d in days for t in tables_of_day(storage, d).values() if t.name in known]
    sizes = _sizes(storage, names)
    out = []
    with storage.engine.connect() as conn:
        for day in days:
            rows, total, sized = {}, 0, False
            for kind, table in tables_of_day(storage, day).items():
                if table.name in known:
                    rows[kind] = int(conn.execute(select(func.count()).select_from(table)).scalar_one())
                    if table.name in sizes:
                        total += sizes[table.name]
                        sized = True
            out.append(PartitionInfo(day, rows, total if sized else None))
    return out


# -- the index and rollups ---------------------------------------------------------------
def _affected(conn: Connection, storage: Storage, day: dt.date) -> dict[tuple[str, int], ConversationState]:
    """Index rows of conversations that list ``day`` among their days."""
    c = storage.catalog.conversations
    tag = str(day_int(day))
    rows = conn.execute(select(c).where(c.c.days.like(f"%{tag}%"))).fetchall()
    states = (ConversationState.from_row(r) for r in rows)
    return {s.key: s for s in states if day_int(day) in s.days}


def _rewrite(
    conn: Connection,
    storage: Storage,
    olds: Mapping[tuple[str, int], ConversationState | None],
    day: int | None,
) -> None:
    rewrite_conversations(
        conn, storage.catalog, storage.calendar, olds, extra_day=day, now_s=int(time.time())
    )


# -- drop ------------------------------------------------------------------------------
def drop_day(storage: Storage, day: dt.date) -> list[str]:
    """Drop ``day``'s tables and fix the index and rollups; returns the tables dropped."""
    require_daily(storage)
    dropped = storage.catalog.drop_day(day)
    with storage.engine.begin() as conn:
        forget_expired(conn, storage, dropped)
        olds = _affected(conn, storage, day)
        forget_day(conn, storage.catalog.daily_stats, day_int(day))
        _rewrite(conn, storage, olds, None)
    log.info("partition_dropped", day=day.isoformat(), tables=dropped, conversations_fixed=len(olds))
    return dropped


def retention_cutoff(storage: Storage, days: int) -> dt.date:
    """The first day kept when days older than ``days`` days before today (in ``TZ``) go."""
    return storage.calendar.today() - dt.timedelta(days=days)


def days_older_than(storage: Storage, days: int) -> list[dt.date]:
    """The days with tables older than ``days`` days before today, oldest first."""
    require_daily(storage)
    cutoff = retention_cutoff(storage, days)
    return [d for d in storage.catalog.partition_days() if d < cutoff]


def drop_older_than(storage: Storage, days: int) -> list[dt.date]:
    """Drop every day older than ``days`` days before today (in ``TZ``); returns them."""
    gone = days_older_than(storage, days)
    for day in gone:
        drop_day(storage, day)
    return gone


def apply_retention(storage: Storage, retention_days: int) -> list[dt.date]:
    """``MES_RETENTION_DAYS``: drop what is older (0 or partitioning off: nothing)."""
    if retention_days <= 0 or not storage.catalog.daily:
        return []
    return drop_older_than(storage, retention_days)


# -- archive and restore ---------------------------------------------------------------
def archive_day(storage: Storage, day: dt.date, path: str, *, drop: bool = True,
                progress: Progress | None = None) -> dict[str, int]:  # fmt: skip
    """Write ``day``'s tables to ``path`` (gzip'd JSON Lines), check it, then drop them.

    Returns rows per kind. The file is complete (written to a temporary name, fsynced and
    renamed, its row counts read back) before anything is dropped.
    """
    require_daily(storage)
    known = storage.catalog.refresh()
    tables = {k: t for k, t in tables_of_day(storage, day).items() if t.name in known}
    if not tables:
        raise ConfigError(f"there are no tables for {day.isoformat()}")
    counts: dict[str, int] = {}
    with storage.engine.connect() as conn:
        for kind, table in tables.items():
            counts[kind] = int(conn.execute(select(func.count()).select_from(table)).scalar_one())
    header = {
        "format": ARCHIVE_FORMAT, "version": ARCHIVE_VERSION, "day": day.isoformat(),
        "tables": {k: t.name for k, t in tables.items()},
        "columns": {k: [c.name for c in t.columns] for k, t in tables.items()}, "rows": counts,
        "created_at": int(time.time()),
    }  # fmt: skip
    tmp = path + ".tmp"
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6) as out:
        out.write(orjson.dumps(header) + b"\n")
        with storage.engine.connect().execution_options(stream_results=True, yield_per=2000) as conn:
            for kind, table in tables.items():
                order = table.c.id if "id" in table.c else table.c.event_id
                for row in conn.execute(select(table).order_by(order)):
                    out.write(orjson.dumps({"t": kind, "r": list(row)}) + b"\n")
                    if progress is not None:
                        progress(1)
        out.flush()
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    read_back = read_counts(path)
    if read_back != {k: v for k, v in counts.items()}:
        raise OSError(f"archive {path} holds {read_back}, expected {counts}: nothing was dropped")
    log.info("partition_archived", day=day.isoformat(), path=path, rows=counts)
    if drop:
        drop_day(storage, day)
    return counts


def read_counts(path: str) -> dict[str, int]:
    counts: dict[str, int] = dict.fromkeys(_read_header(path)["tables"], 0)
    with gzip.open(path, "rb") as f:
        next(f)
        for line in f:
            counts[orjson.loads(line)["t"]] += 1
    return counts


def _read_header(path: str) -> dict[str, Any]:
    try:
        with gzip.open(path, "rb") as f:
            header = orjson.loads(f.readline())
    except (OSError, orjson.JSONDecodeError, EOFError) as exc:
        raise ConfigError(f"{path} is not a MES archive: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != ARCHIVE_FORMAT:
        raise ConfigError(f"{path} is not a MES archive (no {ARCHIVE_FORMAT} header)")
    if header.get("version") != ARCHIVE_VERSION:
        raise ConfigError(
            f"{path} is archive version {header.get('version')}; this MES reads {ARCHIVE_VERSION}"
        )
    return header


def _number_legacy(
    conn: Any, storage: Storage, row: dict[str, Any], numbers: dict[tuple[str, int], list[int]]
) -> None:
    """Give a row archived before transcripts its ordinal, position and digest: after the
    conversation's rows, in the order it was archived (by id, the order it was stored)."""
    key = (row["conversation_id"], row["user_id"])
    last = numbers.get(key)
    if last is None:
        c = storage.catalog.conversations.c
        found = conn.execute(
            select(c.last_ordinal, c.max_position).where(c.conversation_id == key[0], c.user_id == key[1])
        ).first()
        last = numbers[key] = [int(found[0]), int(found[1])] if found is not None else [0, 0]
    last[0] += 1
    last[1] += GAP
    row["ordinal"], row["position"] = last[0], last[1]
    row["digest"] = message_digest(stored_message(row["role"], row["content"], row["other"])).hex()


def restore_archive(storage: Storage, path: str, *, progress: Progress | None = None) -> dict[str, int]:
    """Recreate the archived day's tables, fill them, and add them back to the index and
    rollups. Refuses if that day's tables already hold rows. Returns rows per kind."""
    require_daily(storage)
    header = _read_header(path)
    try:
        day = dt.date.fromisoformat(header["day"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{path}: the header has no valid day") from None
    storage.catalog.ensure_days([day])
    if "uncaptured" in header.get("tables", {}):
        storage.catalog.ensure_uncaptured([day])
    tables = tables_of_day(storage, day)
    columns = {k: [str(c) for c in header["columns"].get(k, [])] for k in KINDS}
    for kind, names in columns.items():
        unknown = set(names) - set(tables[kind].c.keys())
        if unknown:
            raise ConfigError(f"{path}: columns {sorted(unknown)} are not in MES's {kind} table")
    with storage.engine.connect() as conn:
        for kind in ("chat", "error"):
            if conn.execute(select(func.count()).select_from(tables[kind])).scalar_one():
                raise ConfigError(
                    f"{tables[kind].name} already holds rows: drop the day first, or restore elsewhere"
                )
    counts = dict.fromkeys((k for k in KINDS if k != "uncaptured" or k in header.get("tables", {})), 0)
    tally = Tally(storage.calendar)
    keys: set[tuple[str, int]] = set()
    batch: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    legacy = "ordinal" not in columns["chat"]  # archived before transcripts (storage.migrate)
    numbers: dict[tuple[str, int], list[int]] = {}  # legacy rows: [last ordinal, last position]
    marks = storage.catalog.erasures
    skipped = 0
    with storage.engine.execution_options(mes_write=True).begin() as conn:
        # Users erased since the archive was made (storage.erase) are not brought back:
        # read under the write gate, as a batch does, so an erasure cannot run in between.
        storage.writer.bulk.gate(conn.connection.cursor())
        erased = {int(u): int(b) for u, b in conn.execute(select(marks.c.user_id, marks.c.before_ms))}

        def flush(kind: str) -> None:
            if batch[kind]:
                conn.execute(insert(tables[kind]), batch[kind])
                batch[kind] = []

        with gzip.open(path, "rb") as f:
            next(f)
            for line in f:
                item = orjson.loads(line)
                kind = item["t"]
                row = dict(zip(columns[kind], item["r"], strict=True))
                if kind != "ledger" and row["created_at_ms"] < erased.get(row["user_id"], -1):
                    skipped += 1
                    if progress is not None:
                        progress(1)
                    continue
                if kind == "chat" and legacy:
                    _number_legacy(conn, storage, row, numbers)
                batch[kind].append(row)
                counts[kind] += 1
                if kind != "ledger":
                    keys.add((row["conversation_id"], row["user_id"]))
                    who = (row["user_id"], row["model_name"], row["created_at_ms"], row["event_id"])
                    if kind == "uncaptured":
                        tokens = (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"])
                        tally.counted(*who[:3], row["kind"] == KIND_CHAT, tokens)
                    elif kind == "chat":
                        tally.chat(
                            *who, (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"])
                        )
                    else:
                        tally.error(*who)
                if len(batch[kind]) >= 1000:
                    flush(kind)
                if progress is not None:
                    progress(1)
        for kind in KINDS:
            flush(kind)
        forget_expired(conn, storage, [t.name for t in tables.values()])  # its content is back
        apply_rollup(conn, storage.catalog.daily_stats, tally.rollup)
        c = storage.catalog.conversations
        olds: dict[tuple[str, int], ConversationState | None] = {}
        for key in keys:
            found = conn.execute(
                select(c).where(c.c.conversation_id == key[0], c.c.user_id == key[1])
            ).first()
            olds[key] = ConversationState.from_row(found) if found is not None else None
        _rewrite(conn, storage, olds, day_int(day))
    if skipped:
        counts["erased"] = skipped  # rows of users erased after the archive was made
    log.info("partition_restored", day=day.isoformat(), path=path, rows=counts)
    return counts
