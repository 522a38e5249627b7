"""The batch writer: a batch of validated events into their day tables, exactly once.

One transaction per batch:

1. the write gate, under a shared lock held to the commit: the users erased, whose events
   from before their erasure are dropped (``storage.erase``); which event ids the ledger
   already holds (those are skipped: exactly once);
2. claim the conversations the rest touch, without waiting (``Bulk.claim``); events of a
   conversation that another batch is writing at this moment are left for a second
   transaction after this one commits (which waits for its claims), so two workers whose
   batches share a chat (an agent's rapid calls, a chat cut by a batch boundary, an
   active user) do not queue behind each other's whole transactions. Then lock the rows
   of the claimed conversations that exist, in key order;
3. plan (pure, but for reading the stored rows of a conversation whose request does not
   start with the conversation's tail: see ``plan._Matcher``), then insert: ledger rows first (a concurrent duplicate fails fast on the
   ledger's primary key), history rows with the backend's bulk path, dead letters;
5. insert the new conversation rows, rewrite the others, add to the rollups; commit.

Claims keep writers of one conversation apart, but they are not the guard: the keys are.
Existing conversations are read under a row lock; a conversation planned as new is
inserted with a plain INSERT, so a writer that did not see another's uncommitted new
conversation (or its rows) fails a unique key and runs again, instead of overwriting it.

The commit is the acknowledgement: a caller may drop its copy of the batch only after
``write`` returns. Duplicates die on unique keys, never on hope: a race the plan did not
foresee fails a key and the transaction is run again from step 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import orjson
from sqlalchemy import Engine

from mes.days import DayCalendar, date_of_int
from mes.errors import BatchDataError, ConnectionLost, DatabaseUnavailable
from mes.log import get_logger
from mes.privacy.capture import Capture
from mes.privacy.policy import Privacy, without_content
from mes.storage.bulk import Bulk, ErrorKind, bulk_for
from mes.storage.catalog import Catalog
from mes.storage.dead_letters import DeadLetter
from mes.storage.plan import Mark, Prepared, build_plan, prepare
from mes.storage.rollup import ConversationState
from mes.storage.rows import (
    CHAT_COLUMNS,
    CONVERSATION_COLUMNS,
    DEAD_LETTER_COLUMNS,
    ERROR_COLUMNS,
    LEDGER_COLUMNS,
    STATS_COLUMNS,
    STATS_KEY,
    UNCAPTURED_COLUMNS,
    DeadLetterRow,
)
from mes.storage.transcript import Entry

__all__ = ["BatchDataError", "BatchWriter", "ConnectionLost", "WriteResult"]

log = get_logger("mes.storage")

_CHUNK = 2000  # values per IN list: far below every backend's parameter limit
_EVENT_ONLY = Privacy()  # no operator policy: what an event asks for alone decides
_CONV_KEYS = ("conversation_id", "user_id")


@dataclasses.dataclass
class WriteResult:
    """What one ``write`` did; the worker's canonical log line is made of these."""

    events: int = 0
    applied: int = 0
    duplicates: int = 0
    rows: int = 0
    error_rows: int = 0
    dead_lettered: int = 0
    attempts: int = 0
    deferred: int = 0  # events left for a second transaction: another batch had their chat
    erased: int = 0  # events of a user erased after they happened (storage.erase): not stored

    def __add__(self, other: WriteResult) -> WriteResult:
        return WriteResult(
            *(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other), strict=True))
        )


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a batch is written; it runs again after.

    A batch allocates hundreds of thousands of small objects (rows, digests, plan entries)
    that reference counting frees, and makes almost no cycles; the collector, woken every
    700 allocations, walked them again and again (``bench/before_after.py`` on SQLite:
    0.86-0.95 of the old writer without the pause, 1.02-1.04 with it). Memory held by a
    batch's cycles, if any, waits until the batch is committed."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class BatchWriter:
    """Writes batches; thread-safe (each call takes its own pooled connection)."""

    def __init__(
        self,
        engine: Engine,
        catalog: Catalog,
        calendar: DayCalendar,
        *,
        max_attempts: int = 6,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.engine = engine
        self.catalog = catalog
        self.calendar = calendar
        self.bulk: Bulk = bulk_for(engine)
        self.max_attempts = max_attempts
        self._sleep = sleep
        # What is kept of each event and redacted from it (the worker sets it: mes.privacy);
        # None: everything, as sent.
        self.privacy: Privacy | None = None
        # The erased users (user id -> before_ms) as of the gate's count: see ``_erasures``
        self._gate: tuple[int, dict[int, int]] = (-1, {})

    # -- public ----------------------------------------------------------------------
    def write(
        self,
        events: Sequence[Mapping[str, Any]],
        dead_letters: Sequence[DeadLetter] = (),
        *,
        batch_id: str | None = None,
    ) -> WriteResult:
        """Write ``events`` (dicts that passed ``mes.schemas`` validation) and ``dead_letters``
        in one transaction; returns after the commit.

        Raises:
            DatabaseUnavailable: the database could not be reached or stayed locked: retry later.
            BatchDataError: the database refused a value; ``write_isolating`` finds the event.
        """
        with _cyclic_gc_paused():
            return self._write(events, self._guarded(dead_letters), batch_id, self._marks(events))

    def _guarded(self, dead: Sequence[DeadLetter]) -> Sequence[DeadLetter]:
        """Dead letters as ``privacy`` lets them be kept (``Privacy.dead_letter``): an event
        that reads as one is kept at its level and redacted; bytes that do not are kept
        only when no event may be kept at less than ``full``. The fingerprint stays the
        raw payload's, so the same bad event twice is still kept once."""
        if not dead:
            return dead
        privacy = self.privacy or _EVENT_ONLY
        out = []
        for letter in dead:
            kept, note = privacy.dead_letter(letter.payload) if letter.payload else (letter.payload, "")
            if kept == letter.payload:
                out.append(letter)
                continue
            size = letter.size if kept is None else len(kept)
            out.append(dataclasses.replace(
                letter, payload=kept or b"", size=size, fingerprint=letter.fingerprint,
                reason=f"{letter.reason} ({note})",
            ))  # fmt: skip
        return out

    def _marks(self, events: Sequence[Mapping[str, Any]]) -> dict[int, Mark] | None:
        """``privacy`` applied to each event, once (its texts redacted in place), by ``id``."""
        if self.privacy is None:
            return None
        apply = self.privacy.apply
        marks: dict[int, Mark] = {}
        for raw in events:
            try:
                marks[id(raw)] = apply(raw)  # type: ignore[arg-type]  # decoded events are dicts
            except Exception as exc:  # a redaction plug-in failed on this event: keep no words of it
                log.error("redaction_failed", event_id=_event_id(raw), error=_first_line(exc)[:300])
                marks[id(raw)] = (Capture.METADATA, {"redaction_failed": 1})
        return marks

    def _write(
        self,
        events: Sequence[Mapping[str, Any]],
        dead_letters: Sequence[DeadLetter],
        batch_id: str | None,
        marks: dict[int, Mark] | None,
    ) -> WriteResult:
        prepared: list[Prepared] = []
        seen: set[str] = set()
        for raw in events:
            ev = prepare(raw, self.calendar, None if marks is None else marks.get(id(raw)))
            if ev.event_id not in seen:
                seen.add(ev.event_id)
                prepared.append(ev)
        if self.catalog.daily:
            self.catalog.ensure_days({ev.day for ev in prepared})
        counted = {ev.day if self.catalog.daily else None for ev in prepared if not ev.rows_kept}
        if counted:
            self.catalog.ensure_uncaptured(counted)
        result = WriteResult(events=len(events), duplicates=len(events) - len(prepared))
        deferred = self._attempts(prepared, dead_letters, batch_id, result, defer=True)
        if deferred:  # their conversations were another batch's: now wait for it
            result.deferred = len(deferred)
            self._attempts(deferred, (), batch_id, result, defer=False)
        return result

    def _attempts(
        self,
        prepared: list[Prepared],
        dead_letters: Sequence[DeadLetter],
        batch_id: str | None,
        result: WriteResult,
        *,
        defer: bool,
    ) -> list[Prepared]:
        for attempt in range(1, self.max_attempts + 1):
            result.attempts += 1
            try:
                return self._transaction(prepared, dead_letters, batch_id, result, defer=defer)
            except _Retry as retry:
                if attempt == self.max_attempts:
                    raise DatabaseUnavailable(
                        f"gave up after {attempt} attempts: {retry}"
                    ) from retry.__cause__
                log.debug("batch_retry", attempt=attempt, reason=str(retry))
                self._sleep(min(1.0, 0.02 * 2**attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    def write_isolating(
        self,
        events: Sequence[Mapping[str, Any]],
        dead_letters: Sequence[DeadLetter] = (),
        *,
        batch_id: str | None = None,
    ) -> WriteResult:
        """Like ``write``, but no event's value can fail or hold back the others.

        When the database refuses a value, or drops the connection while it still answers
        (MySQL/MariaDB do that after a statement over ``max_allowed_packet``), the events
        are split (the largest alone, then in halves) until the one at fault is alone; it
        is dead-lettered with the database's reason and every other event commits. The
        dead letters are then written in their own transactions (bounded: see
        ``DeadLetter``); one the database refuses even so is kept without its payload.

        Raises:
            DatabaseUnavailable: the database does not answer: retry later (what committed
                is in the ledger, so the retry skips it).
            BatchDataError: the database refused a dead letter without payload: a fault of
                MES or of the database, not of an event.
        """
        marks = self._marks(events)
        dead_letters = self._guarded(dead_letters)
        try:
            with _cyclic_gc_paused():
                return self._write(events, dead_letters, batch_id, marks)
        except BatchDataError as exc:
            cause = str(exc)
        except ConnectionLost as exc:
            if not self._answers():
                raise
            cause = str(exc)
        log.info("batch_isolating", batch_id=batch_id, events=len(events), reason=cause[:200])
        culprits: list[DeadLetter] = []
        result = WriteResult()
        rest = list(events)
        if len(rest) > 2:
            # The largest event alone first: what the database refuses past validation is
            # mostly a size (each try of a large one costs a second), and halving would
            # send it again at every level.
            sizes = [len(_serialized(ev)) for ev in rest]
            result += self._isolate([rest.pop(sizes.index(max(sizes)))], batch_id, culprits, marks)
        if rest:
            result += self._isolate(rest, batch_id, culprits, marks)
        return result + self._write_dead([*dead_letters, *culprits], batch_id)

    def _isolate(
        self,
        events: list[Mapping[str, Any]],
        batch_id: str | None,
        culprits: list[DeadLetter],
        marks: dict[int, Mark] | None,
    ) -> WriteResult:
        """Write ``events``, halving them while the database refuses; an event it refuses
        alone is added to ``culprits`` instead."""
        lost = 0
        while True:
            try:
                with _cyclic_gc_paused():
                    return self._write(events, (), batch_id, marks)
            except BatchDataError as exc:
                why = f"the database refused this event: {exc}"
            except ConnectionLost as exc:
                if not self._answers():
                    raise
                lost += 1
                if len(events) == 1 and lost < 2:
                    continue  # a reset may be a coincidence once; twice, alone, it is this event
                why = (
                    "the database closed the connection each time this event was sent, while it "
                    "answered other statements (MySQL and MariaDB do so for a statement over "
                    f"max_allowed_packet): {exc}"
                )
            break
        if len(events) > 1:
            half = len(events) // 2
            log.info("batch_split", batch_id=batch_id, events=len(events), reason=why[:200])
            first = self._isolate(events[:half], batch_id, culprits, marks)
            return first + self._isolate(events[half:], batch_id, culprits, marks)
        (event,) = events
        mark = None if marks is None else marks.get(id(event))
        if mark is None or mark[0] == Capture.FULL:
            payload = _serialized(event)
        else:  # the policy keeps no words of it: neither does its dead letter
            payload = _serialized(without_content(event))
            why += " (kept without its content: capture level below full)"
        letter = DeadLetter(payload, why, _event_id(event))
        log.warning("event_refused", batch_id=batch_id, event_id=letter.event_id, size=letter.size,
                    reason=why[:300])  # fmt: skip
        culprits.append(letter)
        return WriteResult(events=1)

    def _write_dead(self, dead: list[DeadLetter], batch_id: str | None) -> WriteResult:
        """Write dead letters in one transaction, or in halves if the database refuses;
        one it refuses alone is written without its payload."""
        if not dead:
            return WriteResult()
        try:
            return self.write([], dead, batch_id=batch_id)
        except (BatchDataError, ConnectionLost) as exc:
            if isinstance(exc, ConnectionLost) and not self._answers():
                raise
            if len(dead) > 1:
                half = len(dead) // 2
                return self._write_dead(dead[:half], batch_id) + self._write_dead(dead[half:], batch_id)
            (letter,) = dead
            if not letter.payload:
                raise  # even a dead letter without payload is refused: nothing of an event's doing
            log.error(
                "dead_letter_stripped", batch_id=batch_id, event_id=letter.event_id, error=str(exc)[:300]
            )
            bare = dataclasses.replace(
                letter, payload=b"", reason=f"{letter.reason} (the database refused its payload too: {exc})"
            )
            return self._write_dead([bare], batch_id)

    def _answers(self) -> bool:
        """Whether the database answers a trivial query now, on a sound connection."""
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except Exception:  # any failure: it does not answer
            return False
        return True

    # -- the transaction -------------------------------------------------------------
    def _transaction(
        self,
        prepared: list[Prepared],
        dead: Sequence[DeadLetter],
        batch_id: str | None,
        result: WriteResult,
        *,
        defer: bool,
    ) -> list[Prepared]:
        """One transaction; returns the events it left for later (see step 2)."""
        bulk, catalog = self.bulk, self.catalog
        conn = self._connect()
        later: list[Prepared] = []
        try:
            bulk.begin(conn.driver_connection)
            cur = conn.cursor()
            now_s = self.calendar.now_ms() // 1000
            erasures = self._erasures(cur)  # first: under the gate's shared lock
            applied = self._ledger_hits(cur, prepared)
            fresh = [ev for ev in prepared if ev.event_id not in applied]
            erased = 0
            if erasures:
                kept = [ev for ev in fresh if ev.ms >= erasures.get(ev.user_id, -1)]
                erased, fresh = len(fresh) - len(kept), kept
                dead = [d for d in dead if not _of_erased(d.payload, erasures)]
            keys = sorted({ev.key for ev in fresh})
            busy = bulk.claim(cur, keys, wait=not defer)
            if busy and defer:
                later = [ev for ev in fresh if ev.key in busy]
                fresh = [ev for ev in fresh if ev.key not in busy]
                keys = [k for k in keys if k not in busy]
            states = self._load_states(cur, keys)
            stored = set(states)
            plan = build_plan(
                fresh,
                states,
                lambda state: self._stored_rows(cur, state),
                now_s=now_s,
                calendar=self.calendar,
            )
            for day, ledger in plan.ledger_rows.items():
                bulk.insert(cur, catalog.day_tables(day).ledger, LEDGER_COLUMNS, ledger)
            for day, counts in plan.uncaptured_rows.items():
                bulk.insert(cur, catalog.day_tables(day).uncaptured, UNCAPTURED_COLUMNS, counts)
            for table_day, message_keys in plan.chat_deletes.items():
                bulk.delete_keys(
                    cur, catalog.day_tables(table_day).chat, ("conversation_id", "message_id"), message_keys
                )
            for day, messages in plan.chat_rows.items():
                bulk.insert(cur, catalog.day_tables(day).chat, CHAT_COLUMNS, messages)
            for day, errors in plan.error_rows.items():
                bulk.insert(cur, catalog.day_tables(day).error, ERROR_COLUMNS, errors)
            if dead:
                letters = [
                    DeadLetterRow(
                        created_at=now_s, fingerprint=d.fingerprint, event_id=d.event_id, batch_id=batch_id,
                        source=d.source, reason=d.reason, payload=d.payload,
                    )
                    for d in dead
                ]  # fmt: skip
                bulk.upsert(
                    cur, catalog.dead_letters, DEAD_LETTER_COLUMNS, ("fingerprint",), letters, keep=True
                )
            new = [s.to_row() for s in plan.conversations if s.key not in stored]
            changed = [s.to_row() for s in plan.conversations if s.key in stored]
            bulk.insert(cur, catalog.conversations, CONVERSATION_COLUMNS, new)
            bulk.upsert(cur, catalog.conversations, CONVERSATION_COLUMNS, _CONV_KEYS, changed)
            stats = plan.stats_rows()
            bulk.upsert(
                cur, catalog.daily_stats, STATS_COLUMNS, STATS_KEY, stats, add=STATS_COLUMNS[len(STATS_KEY) :]
            )
            cur.close()
            conn.commit()
            bulk.after_transaction(conn.driver_connection, committed=True)
        except Exception as exc:
            self._fail(conn, exc)
        else:
            conn.close()
            result.applied += plan.applied
            result.duplicates += len(prepared) - len(fresh) - len(later) - erased
            result.erased += erased
            result.rows += plan.chat_row_count
            result.error_rows += plan.error_row_count
            result.dead_lettered += len(dead)
        return later

    def _connect(self) -> Any:
        try:
            return self.engine.raw_connection()
        except Exception as exc:
            raise DatabaseUnavailable(f"cannot connect to the MES database: {_first_line(exc)}") from exc

    def _fail(self, conn: Any, exc: Exception) -> None:
        kind = self.bulk.classify(exc)
        lost = False
        try:
            conn.rollback()
            self.bulk.after_transaction(conn.driver_connection, committed=False)
        except Exception:  # the connection is gone: make the pool forget it
            # A data error stays one even when the server hung up after it (MySQL does,
            # after a packet over max_allowed_packet): it is the event's, not the server's.
            lost = True
            kind = kind if kind in (ErrorKind.DATA, ErrorKind.RETRY) else ErrorKind.UNAVAILABLE
            conn.invalidate()
        finally:
            conn.close()
        if kind == ErrorKind.RETRY:
            raise _Retry(_first_line(exc)) from exc
        if kind == ErrorKind.UNAVAILABLE:
            if lost:
                raise ConnectionLost(f"the MES database failed: {_first_line(exc)}") from exc
            raise DatabaseUnavailable(f"the MES database failed: {_first_line(exc)}") from exc
        if kind == ErrorKind.DATA:
            raise BatchDataError(_first_line(exc)) from exc
        raise exc

    # -- reads inside the transaction -------------------------------------------------
    def _select_in(self, cur: Any, head: str, values: Sequence[Any], tail: str = "") -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        for i in range(0, len(values), _CHUNK):
            chunk = values[i : i + _CHUNK]
            cur.execute(head + self.bulk.marks(len(chunk)) + tail, tuple(chunk))
            out.extend(cur.fetchall())
        return out

    def _erasures(self, cur: Any) -> dict[int, int]:
        """The erased users and since when (``storage.erase``), read under a shared lock on
        the write gate that this transaction holds to its end: an erasure's update of the
        gate waits for it, and a transaction begun after the erasure sees its marker. The
        markers are read again only when the gate's count has moved."""
        q = self.bulk.q
        count = self.bulk.gate(cur)
        seen, erased = self._gate
        if count != seen:
            cur.execute(f"SELECT {q('user_id')}, {q('before_ms')} FROM {q('mes_erasures')}")
            erased = {int(user): int(before) for user, before in cur.fetchall()}
            self._gate = (count, erased)
        return erased

    def _ledger_hits(self, cur: Any, prepared: Iterable[Prepared]) -> set[str]:
        by_day: dict[Any, list[str]] = {}
        for ev in prepared:
            by_day.setdefault(ev.day if self.catalog.daily else None, []).append(ev.event_id)
        hits: set[str] = set()
        q = self.bulk.q
        for day, ids in by_day.items():
            table = self.catalog.day_tables(day).ledger.name
            rows = self._select_in(
                cur, f"SELECT {q('event_id')} FROM {q(table)} WHERE {q('event_id')} IN ", ids
            )
            hits.update(r[0] for r in rows)
        return hits

    def _load_states(self, cur: Any, keys: list[tuple[str, int]]) -> dict[tuple[str, int], ConversationState]:
        if not keys:
            return {}
        q = self.bulk.q
        cols = ", ".join(q(c) for c in CONVERSATION_COLUMNS)
        head = f"SELECT {cols} FROM {q('mes_conversations')}{self.bulk.by_key()} WHERE {q('conversation_id')} IN "
        wanted = set(keys)
        states = {}
        cids = sorted({k[0] for k in keys})
        for row in self._select_in(cur, head, cids, self.bulk.lock_suffix()):
            state = ConversationState.from_row(row)
            if state.key in wanted:
                states[state.key] = state
        return states

    def _stored_rows(self, cur: Any, state: ConversationState) -> list[Entry]:
        """A conversation's chat rows, from the tables of the days it spans."""
        q = self.bulk.q
        cols = ", ".join(
            q(c)
            for c in (
                "position",
                "ordinal",
                "digest",
                "is_response",
                "message_id",
                "model_name",
                "created_at_ms",
            )
        )
        tables = [self.catalog.day_tables(date_of_int(d)) for d in sorted(set(state.days))]
        if not self.catalog.daily:
            tables = [self.catalog.day_tables(None)]
        entries: list[Entry] = []
        for day_tables in tables:
            name = day_tables.chat.name
            if self.catalog.daily and not self.catalog.is_known(name):
                continue  # a day dropped by retention
            mark = self.bulk.param
            cur.execute(
                f"SELECT {cols} FROM {q(name)} WHERE {q('conversation_id')} = {mark} AND {q('user_id')} = {mark}",
                (state.conversation_id, state.user_id),
            )
            for position, ordinal, digest, is_response, mid, model, ms in cur.fetchall():
                entries.append(Entry(
                    int(position), int(ordinal), bytes.fromhex(digest), bool(is_response), mid, model, int(ms),
                    day_tables.day,
                ))  # fmt: skip
        return entries


class _Retry(Exception):
    """A transient conflict: run the whole transaction again."""


def _serialized(event: Mapping[str, Any]) -> bytes:
    try:
        return orjson.dumps(event)
    except (TypeError, orjson.JSONEncodeError):  # not from the wire: keep what can be shown
        return repr(event).encode("utf-8", "replace")


_USER_ID = re.compile(rb'"user_id"\s*:\s*([0-9]{1,10})(?![0-9.eE])')


def _of_erased(payload: bytes, erasures: Mapping[int, int]) -> bool:
    """Whether a dead letter's payload is an event of an erased user from before the
    erasure (one without a readable time counts as before; bytes that are not JSON are
    the user's when they say ``"user_id": N``)."""
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        found = _USER_ID.search(payload)
        return found is not None and int(found[1]) in erasures
    if not isinstance(event, dict):
        return False
    user, at = event.get("user_id"), event.get("occurred_at")
    if not isinstance(user, int) or user not in erasures:
        return False
    return not isinstance(at, int) or at < erasures[user]


def _event_id(event: Mapping[str, Any]) -> str | None:
    value = event.get("event_id")
    return value if isinstance(value, str) else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__
