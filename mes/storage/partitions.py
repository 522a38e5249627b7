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
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Table, delete, func, insert, select, update

from mes.days import date_of_int, day_int
from mes.errors import ConfigError
from mes.log import get_logger
from mes.storage.backends import backend_for
from mes.storage.plan import conversation_title
from mes.storage.tables import STAT_COUNTERS
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
KINDS = ("chat", "error", "ledger")
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
    return {"chat": t.chat, "error": t.error, "ledger": t.ledger}


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
def _affected(conn: Any, storage: Storage, day: dt.date) -> dict[tuple[str, int], Any]:
    """Index rows of conversations that list ``day`` among their days."""
    c = storage.catalog.conversations
    tag = str(day_int(day))
    rows = conn.execute(select(c).where(c.c.days.like(f"%{tag}%"))).fetchall()
    return {(r.conversation_id, r.user_id): r for r in rows if tag in r.days.split(",")}


def _recount_one(
    conn: Any, storage: Storage, key: tuple[str, int], days: Iterable[int], known: set[str]
) -> dict[str, Any] | None:
    """A conversation's index entry recounted from its rows in ``days``' tables."""
    cid, uid = key
    calendar = storage.calendar
    conv: dict[str, Any] | None = None
    chat_events: set[str] = set()
    error_events: set[str] = set()
    messages: list[tuple[int, int, str, Any]] = []
    for day in sorted(set(days)):
        tables = storage.catalog.day_tables(date_of_int(day))
        for kind, table in (("chat", tables.chat), ("error", tables.error)):
            if table.name not in known:
                continue
            c = table.c
            cols = [c.model_name, c.created_at_ms, c.event_id, c.role, c.content, c.seq]
            if kind == "chat":
                cols += [c.prompt_tokens, c.completion_tokens, c.total_tokens, c.ordinal, c.position]
            for row in conn.execute(select(*cols).where(c.conversation_id == cid, c.user_id == uid)):
                model, ms = row.model_name, row.created_at_ms
                if conv is None:
                    conv = {"first": (ms, model), "last": (ms, model), "message_count": 0, "models": defaultdict(int),
                            "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "days": set(),
                        "last_ordinal": 0, "max_position": 0}  # fmt: skip
                conv["first"] = min(conv["first"], (ms, model))
                conv["last"] = max(conv["last"], (ms, model))
                conv["days"].add(day_int(calendar.day_of(ms)))
                if kind == "chat":
                    conv["message_count"] += 1
                    conv["models"][model] += 1
                    conv["prompt_tokens"] += row.prompt_tokens
                    conv["completion_tokens"] += row.completion_tokens
                    conv["total_tokens"] += row.total_tokens
                    chat_events.add(row.event_id)
                    conv["last_ordinal"] = max(conv["last_ordinal"], row.ordinal or 0)
                    conv["max_position"] = max(conv["max_position"], row.position or 0)
                    messages.append((row.position or 0, row.ordinal or 0, row.role, row.content))
                else:
                    error_events.add(row.event_id)
    if conv is None:
        return None
    conv["event_count"], conv["error_count"] = len(chat_events), len(error_events)
    messages.sort(key=lambda m: (m[0], m[1]))
    conv["title"] = conversation_title(
        [{"role": role, "content": content} for _, _, role, content in messages]
    )
    return conv


def _add_stats(conn: Any, storage: Storage, key: tuple[int, int, str], deltas: dict[str, int]) -> None:
    """Add ``deltas`` to one rollup row (created if missing, removed when all zero)."""
    s = storage.catalog.daily_stats
    uid, day, model = key
    where = (s.c.user_id == uid, s.c.day == day, s.c.model_name == model)
    done = conn.execute(update(s).where(*where).values({n: s.c[n] + v for n, v in deltas.items()}))
    if done.rowcount == 0:
        if any(v < 0 for v in deltas.values()):
            return  # the row went with its day
        conn.execute(insert(s).values(user_id=uid, day=day, model_name=model,
                                      **{n: deltas.get(n, 0) for n in STAT_COUNTERS}))  # fmt: skip
    conn.execute(delete(s).where(*where, *(s.c[n] == 0 for n in STAT_COUNTERS)))


def _fix_conversations(
    conn: Any, storage: Storage, olds: dict[tuple[str, int], Any], extra_day: int | None
) -> None:
    """Recount each conversation and move its "conversations" count to its first day."""
    c, calendar = storage.catalog.conversations, storage.calendar
    now = int(time.time())
    known = storage.catalog.refresh()
    for key in sorted(olds):
        old = olds[key]
        days = {int(d) for d in old.days.split(",") if d} if old is not None else set()
        if extra_day is not None:
            days.add(extra_day)
        new = _recount_one(conn, storage, key, days, known)
        if old is not None:
            _add_stats(conn, storage, (key[1], day_int(calendar.day_of(old.first_at_ms)), old.first_model),
                       {"conversations": -1})  # fmt: skip
            conn.execute(delete(c).where(c.c.conversation_id == key[0], c.c.user_id == key[1]))
        if new is None:
            continue
        first_ms, first_model = new["first"]
        last_ms, last_model = new["last"]
        _add_stats(
            conn, storage, (key[1], day_int(calendar.day_of(first_ms)), first_model), {"conversations": 1}
        )
        conn.execute(insert(c).values(
            conversation_id=key[0], user_id=key[1], title=(old.title if old is not None and old.title else new["title"]),
            first_at_ms=first_ms, last_at_ms=last_ms, first_model=first_model, last_model=last_model,
            message_count=new["message_count"], event_count=new["event_count"], error_count=new["error_count"],
            prompt_tokens=new["prompt_tokens"], completion_tokens=new["completion_tokens"],
            total_tokens=new["total_tokens"], models=orjson.dumps(dict(new["models"])).decode(),
            days=",".join(str(d) for d in sorted(new["days"])),
            created_at=old.created_at if old is not None else now, updated_at=now,
            # Ordinals and positions are never reused; the tail stays valid for what is left
            # (a request re-sending a dropped row does not store it again: retention dropped it).
            last_ordinal=max(new["last_ordinal"], old.last_ordinal if old is not None else 0),
            max_position=max(new["max_position"], old.max_position if old is not None else 0),
            tail_digest=old.tail_digest if old is not None else "",
            tail_len=old.tail_len if old is not None else 0,
            tail_context=old.tail_context if old is not None else None,
        ))  # fmt: skip


# -- drop ------------------------------------------------------------------------------
def drop_day(storage: Storage, day: dt.date) -> list[str]:
    """Drop ``day``'s tables and fix the index and rollups; returns the tables dropped."""
    require_daily(storage)
    dropped = storage.catalog.drop_day(day)
    with storage.engine.begin() as conn:
        olds = _affected(conn, storage, day)
        s = storage.catalog.daily_stats
        conn.execute(delete(s).where(s.c.day == day_int(day)))
        _fix_conversations(conn, storage, olds, None)
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
    counts = dict.fromkeys(KINDS, 0)
    stats: dict[tuple[int, int, str], dict[str, Any]] = defaultdict(
        lambda: {"messages": 0, "requests": set(), "errors": set(), "prompt_tokens": 0,
                 "completion_tokens": 0, "total_tokens": 0}
    )  # fmt: skip
    keys: set[tuple[str, int]] = set()
    batch: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    calendar = storage.calendar
    legacy = "ordinal" not in columns["chat"]  # archived before transcripts (storage.migrate)
    numbers: dict[tuple[str, int], list[int]] = {}  # legacy rows: [last ordinal, last position]
    with storage.engine.begin() as conn:

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
                if kind == "chat" and legacy:
                    _number_legacy(conn, storage, row, numbers)
                batch[kind].append(row)
                counts[kind] += 1
                if kind != "ledger":
                    keys.add((row["conversation_id"], row["user_id"]))
                    skey = (row["user_id"], day_int(calendar.day_of(row["created_at_ms"])), row["model_name"])
                    if kind == "chat":
                        s = stats[skey]
                        s["messages"] += 1
                        s["requests"].add(row["event_id"])
                        for n in ("prompt_tokens", "completion_tokens", "total_tokens"):
                            s[n] += row[n]
                    else:
                        stats[skey]["errors"].add(row["event_id"])
                if len(batch[kind]) >= 1000:
                    flush(kind)
                if progress is not None:
                    progress(1)
        for kind in KINDS:
            flush(kind)
        for skey, s in stats.items():
            deltas = {n: (len(v) if isinstance(v, set) else v) for n, v in s.items()}
            _add_stats(conn, storage, skey, {n: v for n, v in deltas.items() if v})
        c = storage.catalog.conversations
        olds: dict[tuple[str, int], Any] = {}
        for key in keys:
            olds[key] = conn.execute(
                select(c).where(c.c.conversation_id == key[0], c.c.user_id == key[1])
            ).first()
        _fix_conversations(conn, storage, olds, day_int(day))
    log.info("partition_restored", day=day.isoformat(), path=path, rows=counts)
    return counts
