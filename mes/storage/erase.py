"""Erasing a user: every row and byte of their history, wherever MES keeps it.

``erase_user`` removes, in steps that are each safe to repeat (an interrupted erasure
is resumed by running it again):

1. **The marker.** ``mes_erasures`` gets (user, ``before_ms`` = now), in the transaction
   that bumps ``mes_write_gate``. Every batch's transaction reads the gate under a shared
   lock first (``BatchWriter._erasures``), so this update waits for the batches under way
   and, once committed, every later batch sees the marker: an event of that user that
   happened before it is not stored, whenever it arrives (still in the queue, in a
   producer's spool, a replayed failed job or dead letter, a restored archive). Events
   after it are stored as usual: erasure is not a ban.
2. **Conversations.** Each of the user's conversations in the index loses its rows from
   before the marker in every day it spans (every row, unless the user went on with it
   since), and what they added to the rollups; its index row is recounted from what is
   left (title and tail forgotten) or removed; one transaction each, so the rollups equal
   a recount at every step and an interrupted erasure leaves nothing inconsistent.
3. **A sweep.** Every history, error and counts table is read for rows of the user from
   before the marker that no indexed conversation reached (there should be none:
   ``stray_rows`` says if there were); they go with what they added to the rollups. The
   chat tables have no index on the user, so this reads each table once: the cost of an
   erasure grows with the history kept.
4. **Dead letters** whose payload is an event of the user (read as JSON, else searched
   for ``"user_id": N``) are deleted.

What the user does after the marker is stored and kept as usual. Kept as well: the event
ledger (event ids and kinds only: it is what stops a replay from bringing an event back),
the audit trail (``mes_audit``: who erased whom, when, from where; no content), and the
marker itself, with the last report.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Table, delete, func, insert, select, update

from mes.log import get_logger
from mes.storage.backends import backend_for
from mes.storage.delete import KINDS, delete_counted
from mes.storage.rollup import ConversationState, Tally, apply_rollup, rewrite_conversations
from mes.storage.tables import CHAT_BASE, ERROR_BASE, UNCAPTURED_BASE

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from mes.storage import Storage

__all__ = ["ErasureReport", "Progress", "erase_user", "erasure_of", "events_of", "finish"]

log = get_logger("mes.storage.erase")

_PAGE = 200  # conversations, dead letters, row ids per statement


@dataclasses.dataclass
class ErasureReport:
    """What an erasure removed (or, with ``dry_run``, would remove)."""

    user_id: int
    dry_run: bool = False
    resumed: bool = False  # an earlier run of it had not finished
    before_ms: int = 0  # events of the user that happened before this are not stored
    conversations: int = 0
    chat_rows: int = 0
    error_rows: int = 0
    counted_events: int = 0  # rows of mes_uncaptured: events kept as counts only
    stats_rows: int = 0  # rows of mes_daily_stats
    dead_letters: int = 0
    stray_rows: int = 0  # rows no indexed conversation reached (found by the sweep)
    spool_events: int = 0  # filled in by the caller that owns a spool folder
    queued_events: int = 0  # ... and by the one that reaches the queue
    left: list[str] = dataclasses.field(default_factory=list)  # what could not be cleaned now

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


Progress = Callable[[str, int], None]  # (step, items done in it)


def erase_user(
    storage: Storage, user_id: int, *, dry_run: bool = False, progress: Progress | None = None
) -> ErasureReport:
    """Erase ``user_id``'s history (see the module's steps); with ``dry_run``, count what
    would be removed and change nothing."""
    report = ErasureReport(user_id=user_id, dry_run=dry_run)
    note = progress or (lambda step, n: None)
    if dry_run:
        return _count(storage, report)
    report.resumed, report.before_ms = _mark(storage, user_id)
    log.info("erasure_started", user_id=user_id, resumed=report.resumed, before_ms=report.before_ms)
    stats_before = _stats_rows(storage, user_id)
    for cid in _conversations(storage, user_id):
        gone = _erase_conversation(storage, user_id, cid, report.before_ms)
        if gone is not None:
            report.conversations += 1
            report.chat_rows += gone[0]
            report.error_rows += gone[1]
            report.counted_events += gone[2]
            note("conversations", report.conversations)
    for table in _history_tables(storage):
        report.stray_rows += _sweep(storage, table, user_id, report.before_ms)
    note("sweep", report.stray_rows)
    report.stats_rows = max(0, stats_before - _stats_rows(storage, user_id))
    report.dead_letters = _dead_letters(storage, user_id, remove=True)
    note("dead_letters", report.dead_letters)
    if report.stray_rows:
        log.warning("erasure_stray_rows", user_id=user_id, rows=report.stray_rows)
    return report


def finish(storage: Storage, report: ErasureReport) -> None:
    """Record the erasure as finished, with its report (after the caller's own steps)."""
    marks = storage.catalog.erasures
    engine = storage.engine.execution_options(mes_write=True)
    with engine.begin() as conn:
        conn.execute(
            update(marks)
            .where(marks.c.user_id == report.user_id)
            .values(finished_at=_now_ms(storage), report=orjson.dumps(report.as_dict()).decode())
        )
    log.info("erasure_finished", **report.as_dict())


def erasure_of(storage: Storage, user_id: int) -> dict[str, Any] | None:
    """The marker of ``user_id``'s erasure (``before_ms``, ``started_at``, ``finished_at``,
    ``report``), or None if the user was never erased."""
    marks = storage.catalog.erasures
    with storage.engine.connect() as conn:
        row = conn.execute(select(marks).where(marks.c.user_id == user_id)).first()
    if row is None:
        return None
    out = dict(row._mapping)
    out["report"] = orjson.loads(out["report"]) if out["report"] else None
    return out


# -- the steps ---------------------------------------------------------------------------
def _now_ms(storage: Storage) -> int:
    return storage.calendar.now_ms()


def _mark(storage: Storage, user_id: int) -> tuple[bool, int]:
    """Step 1: the marker, under the write gate. Returns (resumed, before_ms)."""
    gate, marks = storage.catalog.write_gate, storage.catalog.erasures
    engine = storage.engine.execution_options(mes_write=True)  # SQLite: BEGIN IMMEDIATE
    with engine.begin() as conn:
        storage.writer.bulk.close_gate(conn)
        now = _now_ms(storage)  # once the batches under way are done
        bumped = conn.execute(update(gate).where(gate.c.id == 1).values(erasures=gate.c.erasures + 1))
        if bumped.rowcount == 0:
            conn.execute(insert(gate).values(id=1, erasures=1))
        old = conn.execute(
            select(marks.c.before_ms, marks.c.finished_at).where(marks.c.user_id == user_id)
        ).first()
        if old is None:
            conn.execute(insert(marks).values(user_id=user_id, before_ms=now, started_at=now))
            return False, now
        before = max(int(old.before_ms), now)
        conn.execute(
            update(marks)
            .where(marks.c.user_id == user_id)
            .values(before_ms=before, started_at=now, finished_at=None)
        )
        return old.finished_at is None, before


def _conversations(storage: Storage, user_id: int) -> Iterator[str]:
    """The user's conversation ids in the index, a page at a time (the deletes shrink it)."""
    conv = storage.catalog.conversations
    after = ""
    while True:
        with storage.engine.connect() as conn:
            page = list(
                conn.scalars(
                    select(conv.c.conversation_id)
                    .where(conv.c.user_id == user_id, conv.c.conversation_id > after)
                    .order_by(conv.c.conversation_id)
                    .limit(_PAGE)
                )
            )
        if not page:
            return
        yield from page
        after = page[-1]


def _history_tables(storage: Storage) -> list[Table]:
    catalog = storage.catalog
    names = catalog.refresh()
    tables: list[Table] = []
    days = catalog.partition_days() if catalog.daily else []
    for day in [*days, None]:
        day_tables = catalog.day_tables(day)
        tables.extend(
            t for t in (day_tables.chat, day_tables.error, day_tables.uncaptured) if t.name in names
        )
    return tables


def _erase_conversation(
    storage: Storage, user_id: int, cid: str, before_ms: int
) -> tuple[int, int, int] | None:
    """Step 2 for one conversation, in one transaction: its rows from before ``before_ms``
    (all of them, unless the user went on with it after the marker) go, with what they
    added to the rollups, and its index row is recounted from what is left, its title and
    tail (a digest of the erased turns) forgotten; or removed when nothing is left.
    Returns the (chat, error, counted) rows deleted; None when the conversation is gone."""
    catalog, calendar = storage.catalog, storage.calendar
    conv_t = catalog.conversations
    engine = storage.engine.execution_options(mes_write=True)  # SQLite: BEGIN IMMEDIATE
    with engine.begin() as conn:
        query = select(conv_t).where(conv_t.c.conversation_id == cid, conv_t.c.user_id == user_id)
        if backend_for(storage.engine).locks_rows:
            query = query.with_for_update()
        found = conn.execute(query).first()
        if found is None:
            return None
        old = ConversationState.from_row(found)
        if old.first_at_ms >= before_ms:
            return 0, 0, 0  # begun after the erasure: not the erased history
        gone = Tally(calendar)
        tables = [t for kind in KINDS for t in catalog.history_tables(old.days, kind)]
        deleted = [_take(conn, table, gone, user_id, before_ms, cid) for table in tables]
        apply_rollup(conn, catalog.daily_stats, gone.rollup.negated())
        forgotten = dataclasses.replace(old, title="", tail_digest="", tail_len=0, tail_context="")
        rewrite_conversations(conn, catalog, calendar, {old.key: forgotten}, extra_day=None,
                              now_s=_now_ms(storage) // 1000)  # fmt: skip
    totals = dict.fromkeys(KINDS, 0)
    for kind, n in deleted:
        totals[kind] += n
    return totals["chat"], totals["error"], totals["uncaptured"]


def _take(
    conn: Connection, table: Table, gone: Tally, user_id: int, before_ms: int, cid: str | None
) -> tuple[str, int]:
    """Delete the user's rows of ``table`` from before ``before_ms`` (of conversation ``cid``;
    None: of any, the sweep's strays), adding what they counted to ``gone``."""
    c, kind = table.c, _kind(table)
    mine = [c.user_id == user_id, c.created_at_ms < before_ms]
    if cid is not None:
        mine.append(c.conversation_id == cid)
    return kind, delete_counted(conn, table, kind, gone, mine)


def _kind(table: Table) -> str:
    for kind, base in (("error", ERROR_BASE), ("uncaptured", UNCAPTURED_BASE), ("chat", CHAT_BASE)):
        if table.name.startswith(base):
            return kind
    raise ValueError(table.name)


def _sweep(storage: Storage, table: Table, user_id: int, before_ms: int) -> int:
    """Step 3: the user's rows from before the marker still in ``table`` (no indexed
    conversation reached them), with what they added to the rollups. Looked for by a plain
    read first (no locks on a table writers are using)."""
    c = table.c
    with storage.engine.connect() as conn:
        left = conn.execute(
            select(func.count()).select_from(table).where(c.user_id == user_id, c.created_at_ms < before_ms)
        ).scalar_one()
    if not left:
        return 0
    gone = Tally(storage.calendar)
    with storage.engine.execution_options(mes_write=True).begin() as conn:
        _, n = _take(conn, table, gone, user_id, before_ms, None)
        apply_rollup(conn, storage.catalog.daily_stats, gone.rollup.negated())
    log.info("erasure_swept", table=table.name, rows=n)
    return n


def _stats_rows(storage: Storage, user_id: int) -> int:
    stats = storage.catalog.daily_stats
    with storage.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(stats).where(stats.c.user_id == user_id)
            ).scalar_one()
        )


def events_of(user_id: int, before_ms: int | None) -> Callable[[bytes], bool]:
    """A test on a serialized event (a dead letter's payload, a queued or spooled event):
    is it ``user_id``'s, from before ``before_ms`` (any time when None)? Bytes that do not
    read as JSON (what failed to decode) are searched for ``"user_id": N``."""
    pattern = re.compile(rb'"user_id"\s*:\s*' + str(user_id).encode() + rb"(?![0-9.eE])")

    def match(item: bytes) -> bool:
        try:
            event = orjson.loads(item)
        except orjson.JSONDecodeError:
            return pattern.search(item) is not None
        if not isinstance(event, dict):
            return pattern.search(item) is not None
        if type(event.get("user_id")) is not int or event["user_id"] != user_id:
            return False
        at = event.get("occurred_at")
        return before_ms is None or not isinstance(at, int) or at < before_ms

    return match


def _dead_letters(storage: Storage, user_id: int, *, remove: bool) -> int:
    """Step 5: the user's dead letters (removed, or only counted)."""
    letters = storage.catalog.dead_letters
    mine_test = events_of(user_id, None)
    found = 0
    after = 0
    engine = storage.engine.execution_options(mes_write=True)
    while True:
        with storage.engine.connect() as conn:
            page = conn.execute(
                select(letters.c.id, letters.c.payload)
                .where(letters.c.id > after)
                .order_by(letters.c.id)
                .limit(_PAGE)
            ).all()
        if not page:
            return found
        after = int(page[-1].id)
        mine = [int(r.id) for r in page if mine_test(bytes(r.payload))]
        found += len(mine)
        if mine and remove:
            with engine.begin() as conn:
                conn.execute(delete(letters).where(letters.c.id.in_(mine)))


def _count(storage: Storage, report: ErasureReport) -> ErasureReport:
    """The dry run: what each step would remove, were the marker set now."""
    user_id, before = report.user_id, _now_ms(storage)
    conv = storage.catalog.conversations
    totals = {"chat": 0, "error": 0, "uncaptured": 0}
    with storage.engine.connect() as conn:
        report.conversations = _scalar(conn, select(func.count()).select_from(conv).where(
            conv.c.user_id == user_id, conv.c.first_at_ms < before))  # fmt: skip
        for table in _history_tables(storage):
            c = table.c
            totals[_kind(table)] += _scalar(conn, select(func.count()).select_from(table).where(
                c.user_id == user_id, c.created_at_ms < before))  # fmt: skip
    report.chat_rows, report.error_rows, report.counted_events = (
        totals["chat"],
        totals["error"],
        totals["uncaptured"],
    )
    report.stats_rows = _stats_rows(storage, user_id)
    report.dead_letters = _dead_letters(storage, user_id, remove=False)
    return report


def _scalar(conn: Connection, query: Any) -> int:
    return int(conn.execute(query).scalar_one())
