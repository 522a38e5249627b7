"""The rollup rule, in one place: the index and rollups always equal a recount of the rows.

Three things keep ``mes_conversations`` and ``mes_daily_stats`` exact, and every write
goes through them:

* :class:`ConversationState`, a conversation's index row, and :func:`advance`, what one
  event does to it (and to the rollups: a conversation is counted on the day of its first
  event, and moves when an earlier event arrives late);
* :class:`Rollup`, a change to ``mes_daily_stats``: what a set of rows adds (the planner
  builds one per batch, a :class:`Tally` of stored rows builds one for delete and
  restore), applied by the writer's bulk upsert or by :func:`apply_rollup`;
* :func:`recount_conversation` and :func:`rewrite_conversations`: a conversation's index
  row recounted from the rows it still has, after a day is dropped or restored.

What one row contributes: a chat row is a message (and its tokens) on the day of its
request in ``TZ``, under the request's model; each request with chat rows is one
request there; each failed request with error rows is one error. ``storage.verify`` is
the independent recount that checks it (it shares no code with this module on purpose).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson
from sqlalchemy import Connection, Table, delete, insert, select, update

from mes.days import DayCalendar, date_of_int, day_int
from mes.storage.catalog import Catalog
from mes.storage.rows import KIND_CHAT, ConversationRow, StatsRow
from mes.storage.tables import STAT_COUNTERS

__all__ = [
    "TITLE_LEN",
    "ConversationState",
    "Rollup",
    "Tally",
    "advance",
    "apply_rollup",
    "conversation_title",
    "forget_day",
    "recount_conversation",
    "rewrite_conversations",
    "take_over",
]

TITLE_LEN = 100

StatsKey = tuple[int, int, str]  # (user_id, day as 20260115, model_name)
ConversationKey = tuple[str, int]  # (conversation_id, user_id)
Tokens = tuple[int, int, int]  # prompt, completion, total

_MESSAGES, _CONVERSATIONS, _REQUESTS, _ERRORS, _PROMPT, _COMPLETION, _TOTAL = (
    STAT_COUNTERS.index(name) for name in (
        "messages", "conversations", "requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens",
    )
)  # fmt: skip


class Rollup:
    """A change to ``mes_daily_stats``: per (user, day, model), one list of ``STAT_COUNTERS``."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[StatsKey, list[int]] = {}

    def _row(self, user_id: int, day: int, model: str) -> list[int]:
        key = (user_id, day, model)
        row = self.counts.get(key)
        if row is None:
            row = self.counts[key] = [0] * len(STAT_COUNTERS)
        return row

    def request(self, user_id: int, day: int, model: str, messages: int, tokens: Tokens) -> None:
        """A request stored ``messages`` chat rows, its answer carrying ``tokens``."""
        row = self._row(user_id, day, model)
        row[_MESSAGES] += messages
        row[_REQUESTS] += 1
        row[_PROMPT] += tokens[0]
        row[_COMPLETION] += tokens[1]
        row[_TOTAL] += tokens[2]

    def error(self, user_id: int, day: int, model: str) -> None:
        """A failed request stored its error rows."""
        self._row(user_id, day, model)[_ERRORS] += 1

    def messages(self, user_id: int, day: int, model: str, count: int) -> None:
        """``count`` chat rows more (fewer, when negative), no request."""
        self._row(user_id, day, model)[_MESSAGES] += count

    def conversation(self, user_id: int, day: int, model: str, count: int = 1) -> None:
        """A conversation starts (``count`` 1) or no longer starts (-1) on this day and model."""
        self._row(user_id, day, model)[_CONVERSATIONS] += count

    def negated(self) -> Rollup:
        out = Rollup()
        out.counts = {key: [-v for v in row] for key, row in self.counts.items()}
        return out

    def rows(self) -> list[StatsRow]:
        """The changes in key order (a fixed lock order: no deadlocks between writers)."""
        return [StatsRow(*key, *counts) for key, counts in sorted(self.counts.items()) if any(counts)]


class Tally:
    """What stored rows contribute to the rollups, fed one row at a time (delete, restore).

    A request is counted once per (user, day, model) however many of its rows are fed:
    by its event id.
    """

    __slots__ = ("calendar", "chat_events", "error_events", "rollup")

    def __init__(self, calendar: DayCalendar) -> None:
        self.calendar = calendar
        self.rollup = Rollup()
        self.chat_events: set[tuple[StatsKey, str]] = set()
        self.error_events: set[tuple[StatsKey, str]] = set()

    def chat(self, user_id: int, model: str, ms: int, event_id: str, tokens: Tokens) -> None:
        key = (user_id, day_int(self.calendar.day_of(ms)), model)
        if (key, event_id) in self.chat_events:
            self.rollup.messages(*key, 1)
            row = self.rollup.counts[key]
            row[_PROMPT] += tokens[0]
            row[_COMPLETION] += tokens[1]
            row[_TOTAL] += tokens[2]
        else:
            self.chat_events.add((key, event_id))
            self.rollup.request(*key, 1, tokens)

    def error(self, user_id: int, model: str, ms: int, event_id: str) -> None:
        key = (user_id, day_int(self.calendar.day_of(ms)), model)
        if (key, event_id) not in self.error_events:
            self.error_events.add((key, event_id))
            self.rollup.error(*key)

    def counted(self, user_id: int, model: str, ms: int, is_chat: bool, tokens: Tokens) -> None:
        """A row of ``mes_uncaptured``: one event, kept as its counts (no message)."""
        key = (user_id, day_int(self.calendar.day_of(ms)), model)
        if is_chat:
            self.rollup.request(*key, 0, tokens)
        else:
            self.rollup.error(*key)


def apply_rollup(conn: Connection, stats: Table, rollup: Rollup) -> None:
    """Add ``rollup`` to ``mes_daily_stats`` row by row (the writer's batches go through its
    bulk upsert instead): a missing row is created, a row whose counters all reach zero
    removed; a decrease of a row that is gone (its day was dropped) is dropped too."""
    s = stats.c
    for row in rollup.rows():
        deltas = dict(zip(STAT_COUNTERS, row[3:], strict=True))
        where = (s.user_id == row.user_id, s.day == row.day, s.model_name == row.model_name)
        done = conn.execute(update(stats).where(*where).values({n: s[n] + v for n, v in deltas.items() if v}))
        if done.rowcount == 0:
            if any(v < 0 for v in deltas.values()):
                continue
            conn.execute(insert(stats).values(row._asdict()))
        conn.execute(delete(stats).where(*where, *(s[n] == 0 for n in STAT_COUNTERS)))


def forget_day(conn: Connection, stats: Table, day: int) -> None:
    """A dropped day's rollups go whole (its conversations are then rewritten by
    :func:`rewrite_conversations`, which moves their "conversations" counts)."""
    conn.execute(delete(stats).where(stats.c.day == day))


# -- conversations ---------------------------------------------------------------------
def conversation_title(messages: Sequence[Mapping[str, Any]]) -> str:
    """The first user message's text, whitespace folded, at most ``TITLE_LEN`` characters."""
    for message in messages:
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(
                    str(p.get("text") or "")
                    for p in content
                    if isinstance(p, dict) and p.get("type") == "text"
                )
            text = str(content or "")
            head = " ".join(text[: 4 * TITLE_LEN].split())  # most texts: no need to split them all
            if len(head) > TITLE_LEN or len(text) <= 4 * TITLE_LEN:
                return head[:TITLE_LEN]
            return " ".join(text.split())[:TITLE_LEN]
    return ""


@dataclasses.dataclass(slots=True)
class ConversationState:
    """A row of ``mes_conversations`` as the writer reads and rewrites it."""

    conversation_id: str
    user_id: int
    title: str = ""
    first_at_ms: int = 0
    last_at_ms: int = 0
    first_model: str = ""
    last_model: str = ""
    message_count: int = 0
    event_count: int = 0
    error_count: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    models: dict[str, int] = dataclasses.field(default_factory=dict)
    days: list[int] = dataclasses.field(default_factory=list)
    created_at: int = 0
    updated_at: int = 0
    last_ordinal: int = 0  # the highest ordinal given to a row (never reused)
    max_position: int = 0  # the highest position given to a row: appends go after it
    # The tail: the turns the latest request sent, then its answer (digest, count, their
    # ordinals). A request that starts with them needs no look at the stored rows.
    tail_digest: str = ""
    tail_len: int = 0
    tail_context: str = ""

    @property
    def key(self) -> ConversationKey:
        return (self.conversation_id, self.user_id)

    @property
    def is_empty(self) -> bool:
        """No event has been applied yet (absent, or a placeholder of this transaction)."""
        return self.event_count == 0 and self.error_count == 0

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> ConversationState:
        """From a row of ``mes_conversations`` read in ``CONVERSATION_COLUMNS`` order."""
        r = ConversationRow._make(row)
        days = r.days
        return cls(
            conversation_id=r.conversation_id, user_id=r.user_id, title=r.title, first_at_ms=int(r.first_at_ms),
            last_at_ms=int(r.last_at_ms), first_model=r.first_model, last_model=r.last_model,
            message_count=int(r.message_count), event_count=int(r.event_count), error_count=int(r.error_count),
            prompt_tokens=int(r.prompt_tokens), completion_tokens=int(r.completion_tokens),
            total_tokens=int(r.total_tokens), models=orjson.loads(r.models or "{}"),
            days=[int(d) for d in days.split(",")] if days else [], created_at=int(r.created_at),
            updated_at=int(r.updated_at), last_ordinal=int(r.last_ordinal or 0),
            max_position=int(r.max_position or 0), tail_digest=r.tail_digest or "", tail_len=int(r.tail_len or 0),
            tail_context=r.tail_context or "",
        )  # fmt: skip

    def to_row(self) -> ConversationRow:
        # ConversationRow's fields in order (by position: once per conversation and batch)
        return ConversationRow(
            self.conversation_id, self.user_id, self.title, self.first_at_ms, self.last_at_ms,
            self.first_model, self.last_model, self.message_count, self.event_count, self.error_count,
            self.prompt_tokens, self.completion_tokens, self.total_tokens, orjson.dumps(self.models).decode(),
            ",".join(map(str, sorted(self.days))), self.created_at, self.updated_at,
            self.last_ordinal, self.max_position, self.tail_digest, self.tail_len, self.tail_context,
        )  # fmt: skip


def advance(
    state: ConversationState,
    rollup: Rollup,
    calendar: DayCalendar,
    *,
    ms: int,
    model: str,
    messages: Sequence[Mapping[str, Any]],
    chat_rows: int | None,
    tokens: Tokens,
) -> None:
    """One event applied to its conversation: a request that stored ``chat_rows`` rows with
    ``tokens``, or (``chat_rows`` None) a failed request; ``messages`` are what it sent."""
    day = day_int(calendar.day_of(ms))
    user_id = state.user_id
    if chat_rows is None:
        rollup.error(user_id, day, model)
    else:
        rollup.request(user_id, day, model, chat_rows, tokens)
    if state.is_empty:
        state.first_at_ms = state.last_at_ms = ms
        state.first_model = state.last_model = model
        state.title = conversation_title(messages)
        rollup.conversation(user_id, day, model)
    elif (ms, model) < (state.first_at_ms, state.first_model):
        # An earlier event arrived late: the conversation now starts on its day. Move the
        # "conversations started" count with it so per-day counts stay exact.
        old_day = day_int(calendar.day_of(state.first_at_ms))
        rollup.conversation(user_id, old_day, state.first_model, -1)
        rollup.conversation(user_id, day, model)
        state.first_at_ms, state.first_model = ms, model
        state.title = conversation_title(messages) or state.title
    # Ties on the millisecond are broken by model name, so the result does not depend on
    # the order events arrive in (and a recount can reproduce it).
    if (ms, model) > (state.last_at_ms, state.last_model):
        state.last_at_ms, state.last_model = ms, model
    if chat_rows is None:
        state.error_count += 1
    else:
        state.event_count += 1
        state.message_count += chat_rows
        if chat_rows:  # (a request kept as counts only stores none: MES_CAPTURE=none)
            state.models[model] = state.models.get(model, 0) + chat_rows
        state.prompt_tokens += tokens[0]
        state.completion_tokens += tokens[1]
        state.total_tokens += tokens[2]
    if day not in state.days:
        state.days.append(day)


def take_over(
    state: ConversationState, rollup: Rollup, calendar: DayCalendar, *, model: str, ms: int
) -> None:
    """A stored chat row (of ``model``, stored at ``ms``) is replaced by a row the batch
    adds (``storage.plan``'s answer claim): its message leaves the counters it was in."""
    rollup.messages(state.user_id, day_int(calendar.day_of(ms)), model, -1)
    state.message_count -= 1
    state.models[model] = state.models.get(model, 0) - 1
    if not state.models[model]:
        del state.models[model]


def recount_conversation(
    conn: Connection,
    catalog: Catalog,
    calendar: DayCalendar,
    key: ConversationKey,
    days: Iterable[int],
    known: set[str],
) -> ConversationState | None:
    """A conversation's index row recounted from its rows in the tables of ``days``
    (those in ``known``); None when it has no row left. Ordinals, positions and the tail
    are the highest its rows hold; the title is the first user message in their order."""
    cid, uid = key
    state: ConversationState | None = None
    chat_events: set[str] = set()
    error_events: set[str] = set()
    messages: list[tuple[int, int, str, Any]] = []
    for day in sorted(set(days)):
        tables = catalog.day_tables(date_of_int(day))
        for table, is_chat in ((tables.chat, True), (tables.error, False)):
            if table.name not in known:
                continue
            c = table.c
            cols = [c.model_name, c.created_at_ms, c.event_id, c.role, c.content]
            if is_chat:
                cols += [c.prompt_tokens, c.completion_tokens, c.total_tokens, c.ordinal, c.position]
            for row in conn.execute(select(*cols).where(c.conversation_id == cid, c.user_id == uid)):
                model, ms = row.model_name, int(row.created_at_ms)
                if state is None:
                    state = ConversationState(cid, uid, first_at_ms=ms, last_at_ms=ms, first_model=model,
                                              last_model=model)  # fmt: skip
                if (ms, model) < (state.first_at_ms, state.first_model):
                    state.first_at_ms, state.first_model = ms, model
                if (ms, model) > (state.last_at_ms, state.last_model):
                    state.last_at_ms, state.last_model = ms, model
                row_day = day_int(calendar.day_of(ms))
                if row_day not in state.days:
                    state.days.append(row_day)
                if not is_chat:
                    error_events.add(row.event_id)
                    continue
                state.message_count += 1
                state.models[model] = state.models.get(model, 0) + 1
                state.prompt_tokens += row.prompt_tokens
                state.completion_tokens += row.completion_tokens
                state.total_tokens += row.total_tokens
                chat_events.add(row.event_id)
                state.last_ordinal = max(state.last_ordinal, row.ordinal or 0)
                state.max_position = max(state.max_position, row.position or 0)
                messages.append((row.position or 0, row.ordinal or 0, row.role, row.content))
    for day in sorted(set(days)):
        table = catalog.day_tables(date_of_int(day)).uncaptured
        if table.name not in known:
            continue
        c = table.c
        for row in conn.execute(select(table).where(c.conversation_id == cid, c.user_id == uid)):
            model, ms = row.model_name, int(row.created_at_ms)
            if state is None:
                state = ConversationState(cid, uid, first_at_ms=ms, last_at_ms=ms, first_model=model,
                                          last_model=model)  # fmt: skip
            state.first_at_ms, state.first_model = min((state.first_at_ms, state.first_model), (ms, model))
            state.last_at_ms, state.last_model = max((state.last_at_ms, state.last_model), (ms, model))
            row_day = day_int(calendar.day_of(ms))
            if row_day not in state.days:
                state.days.append(row_day)
            if row.kind != KIND_CHAT:
                error_events.add(row.event_id)
                continue
            chat_events.add(row.event_id)
            state.prompt_tokens += row.prompt_tokens
            state.completion_tokens += row.completion_tokens
            state.total_tokens += row.total_tokens
    if state is None:
        return None
    state.event_count, state.error_count = len(chat_events), len(error_events)
    messages.sort(key=lambda m: (m[0], m[1]))
    state.title = conversation_title([{"role": role, "content": content} for _, _, role, content in messages])
    return state


def rewrite_conversations(
    conn: Connection,
    catalog: Catalog,
    calendar: DayCalendar,
    olds: Mapping[ConversationKey, ConversationState | None],
    *,
    extra_day: int | None,
    now_s: int,
) -> None:
    """Recount each conversation of ``olds`` (its index row, or None: none yet) from the
    days it lists (and ``extra_day``), rewrite its index row, and move its "conversations"
    count to its first day. The rollups of the rows themselves are the caller's."""
    c, stats = catalog.conversations, catalog.daily_stats
    known = catalog.refresh()
    for key in sorted(olds):
        old = olds[key]
        days = set(old.days) if old is not None else set()
        if extra_day is not None:
            days.add(extra_day)
        new = recount_conversation(conn, catalog, calendar, key, days, known)
        if old is not None:  # (a decrease first: the row may be gone with its day, the increase not)
            leaves = Rollup()
            leaves.conversation(key[1], day_int(calendar.day_of(old.first_at_ms)), old.first_model, -1)
            apply_rollup(conn, stats, leaves)
            conn.execute(delete(c).where(c.c.conversation_id == key[0], c.c.user_id == key[1]))
        if new is None:
            continue
        starts = Rollup()
        starts.conversation(key[1], day_int(calendar.day_of(new.first_at_ms)), new.first_model)
        apply_rollup(conn, stats, starts)
        new.created_at, new.updated_at = (old.created_at if old is not None else now_s), now_s
        if old is not None:
            new.title = old.title or new.title
            # Ordinals and positions are never reused; the tail stays valid for what is left
            # (a request re-sending a dropped row does not store it again: retention dropped it).
            new.last_ordinal = max(new.last_ordinal, old.last_ordinal)
            new.max_position = max(new.max_position, old.max_position)
            new.tail_digest, new.tail_len, new.tail_context = old.tail_digest, old.tail_len, old.tail_context
        conn.execute(insert(c).values(new.to_row()._asdict()))
