"""Planning a batch: from validated events and the current state of their conversations
to the exact rows to insert and the exact index and rollup changes. No I/O of its own:
the one read it may need (a conversation's stored rows, for a request that does not start
with the conversation's tail) goes through the loader the writer passes in.

The writer runs it inside its transaction, after locking the conversations the batch
touches, so the plan is exact: every row it lists is new (a message the request re-sends
is matched to its stored row, see ``storage.transcript``), and the counters it adds equal
the rows it inserts.
That is what keeps the rollups equal to a recount of the rows at all times.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from hashlib import blake2b
from typing import Any

import orjson

from mes.days import DayCalendar, day_int
from mes.storage.transcript import GAP, Entry, Transcript, align, encode_context, join_context
from mes.storage.turns import content_column, message_digest, message_digests, sequence_digest

__all__ = [
    "CHAT_COLUMNS",
    "CONVERSATION_COLUMNS",
    "ERROR_COLUMNS",
    "LEDGER_COLUMNS",
    "STATS_COLUMNS",
    "ConversationState",
    "Loader",
    "Plan",
    "Prepared",
    "build_plan",
    "conversation_title",
    "prepare",
]

KIND_CHAT = 1
KIND_ERROR = 2
TITLE_LEN = 100

CHAT_COLUMNS = (
    "user_id", "created_at", "updated_at", "conversation_id", "message_id", "role", "content",
    "model_name", "token_id", "channel_id", "prompt_tokens", "completion_tokens", "total_tokens",
    "is_stream", "finish_reason", "usage", "other", "ip", "event_id", "seq", "created_at_ms", "is_response",
    "ordinal", "position", "digest", "context",
)  # fmt: skip
ERROR_COLUMNS = (
    "user_id", "created_at", "conversation_id", "message_id", "role", "content", "model_name",
    "token_id", "channel_id", "error_code", "error_message", "prompt_tokens", "completion_tokens",
    "total_tokens", "other", "ip", "event_id", "seq", "created_at_ms",
)  # fmt: skip
LEDGER_COLUMNS = ("event_id", "kind", "applied_at")
CONVERSATION_COLUMNS = (
    "conversation_id", "user_id", "title", "first_at_ms", "last_at_ms", "first_model", "last_model",
    "message_count", "event_count", "error_count", "prompt_tokens", "completion_tokens",
    "total_tokens", "models", "days", "created_at", "updated_at",
    "last_ordinal", "max_position", "tail_digest", "tail_len", "tail_context",
)  # fmt: skip
STATS_COLUMNS = (
    "user_id", "day", "model_name", "messages", "conversations", "requests", "errors",
    "prompt_tokens", "completion_tokens", "total_tokens",
)  # fmt: skip
STATS_COUNTERS = STATS_COLUMNS[3:]
_MESSAGES, _CONVERSATIONS, _REQUESTS, _ERRORS, _PROMPT, _COMPLETION, _TOTAL = (
    STATS_COUNTERS.index(name) for name in (
        "messages", "conversations", "requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens",
    )
)  # fmt: skip

_MESSAGE_CORE = ("role", "content")
_RESPONSE_SKIP = ("choices", "usage")


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _int(value: Any) -> int:
    return value if type(value) is int else 0


@dataclasses.dataclass(slots=True)
class Prepared:
    """One validated event, with what the plan needs computed once."""

    raw: Mapping[str, Any]
    event_id: str
    kind: int
    ms: int
    day: dt.date
    conversation_id: str
    user_id: int
    model: str
    messages: Sequence[Mapping[str, Any]]
    digests: list[bytes] | None = None  # turn digest of each message, once computed
    answers: list[bytes] = dataclasses.field(default_factory=list)  # ... and of each choice's answer
    choices: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # a chat's, with the answers

    @property
    def key(self) -> tuple[str, int]:
        return (self.conversation_id, self.user_id)


def prepare(raw: Mapping[str, Any], calendar: DayCalendar) -> Prepared:
    """Read the fields the writer needs from a validated event dict."""
    ms = raw["occurred_at"]
    messages = raw.get("messages") or ()
    return Prepared(
        raw=raw,
        event_id=raw["event_id"],
        kind=KIND_ERROR if raw["kind"] == "error" else KIND_CHAT,
        ms=ms,
        day=calendar.day_of(ms),
        conversation_id=raw["conversation_id"],
        user_id=raw["user_id"],
        model=raw.get("model_name") or "",
        messages=messages,
    )


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
    def is_empty(self) -> bool:
        """No event has been applied yet (absent, or a placeholder of this transaction)."""
        return self.event_count == 0 and self.error_count == 0

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> ConversationState:
        values = dict(zip(CONVERSATION_COLUMNS, row, strict=True))
        values["models"] = orjson.loads(values["models"] or "{}")
        days = values["days"]
        values["days"] = [int(d) for d in days.split(",")] if days else []
        for name in ("last_ordinal", "max_position", "tail_len"):
            values[name] = int(values[name] or 0)
        values["tail_digest"] = values["tail_digest"] or ""
        values["tail_context"] = values["tail_context"] or ""
        return cls(**values)

    def to_row(self) -> tuple[Any, ...]:
        return (
            self.conversation_id, self.user_id, self.title, self.first_at_ms, self.last_at_ms,
            self.first_model, self.last_model, self.message_count, self.event_count, self.error_count,
            self.prompt_tokens, self.completion_tokens, self.total_tokens, _dumps(self.models),
            ",".join(map(str, sorted(self.days))), self.created_at, self.updated_at,
            self.last_ordinal, self.max_position, self.tail_digest, self.tail_len, self.tail_context,
        )  # fmt: skip


@dataclasses.dataclass
class Plan:
    """Everything a batch will write, grouped by table."""

    chat_rows: dict[dt.date, list[tuple[Any, ...]]] = dataclasses.field(default_factory=dict)
    # History copies of an answer that the answer's own event now takes over (see _claim).
    chat_deletes: dict[dt.date | None, list[tuple[str, str]]] = dataclasses.field(default_factory=dict)
    error_rows: dict[dt.date, list[tuple[Any, ...]]] = dataclasses.field(default_factory=dict)
    ledger_rows: dict[dt.date, list[tuple[Any, ...]]] = dataclasses.field(default_factory=dict)
    conversations: list[ConversationState] = dataclasses.field(default_factory=list)
    stats: dict[tuple[int, int, str], list[int]] = dataclasses.field(default_factory=dict)
    applied: int = 0

    @property
    def chat_row_count(self) -> int:
        return sum(map(len, self.chat_rows.values()))

    @property
    def error_row_count(self) -> int:
        return sum(map(len, self.error_rows.values()))

    def stats_rows(self) -> list[tuple[Any, ...]]:
        """Rollup increments in key order (a fixed lock order: no deadlocks between writers)."""
        return [(*key, *counts) for key, counts in sorted(self.stats.items()) if any(counts)]


# Events reach the plan validated, as the dicts JSON decodes to: ``isinstance(x, dict)``
# is a type check where ``Mapping`` would be an ABC lookup, on every message and choice.


def _choices(raw: Mapping[str, Any]) -> list[dict[str, Any]]:
    response = raw.get("response") or {}
    choices = response.get("choices") or []
    return [c for c in choices if isinstance(c, dict)] or [{}]


def _choice_message(choice: Mapping[str, Any]) -> Mapping[str, Any]:
    message = choice.get("message") or choice.get("delta") or {}
    return message if isinstance(message, dict) else {}


def _with_digests(ev: Prepared) -> list[bytes]:
    if ev.digests is not None:
        return ev.digests
    digests = ev.digests = message_digests(ev.messages)
    if ev.kind == KIND_CHAT:
        ev.choices = _choices(ev.raw)
        ev.answers = [message_digest(_answer(choice)) for choice in ev.choices]
    return digests


def _row_id(event_id: str, seq: int) -> str:
    """The message id of the row an event stores for its message (or answer) ``seq``:
    ``<event_id>.<seq>``, unique because event ids are, hashed when that would not fit
    the column (event ids are at most 64 characters; a hash has no dot)."""
    mid = f"{event_id}.{seq}"
    if len(mid) <= 64:
        return mid
    return blake2b(mid.encode(), digest_size=16).hexdigest()


Loader = Callable[[ConversationState], list[Entry]]
"""Reads a conversation's stored rows (the writer's, inside its transaction)."""


def _answer(choice: Mapping[str, Any]) -> Mapping[str, Any]:
    """A choice's message as the next request will send it back (the role may be left out)."""
    message = _choice_message(choice)
    if message.get("role"):
        return message
    return {**message, "role": "assistant"}


def _extras(message: Mapping[str, Any], is_json: bool) -> dict[str, Any] | None:
    extra = {k: v for k, v in message.items() if k not in _MESSAGE_CORE}
    if is_json:
        extra["content_json"] = True
    return extra or None


def conversation_title(messages: Sequence[Mapping[str, Any]]) -> str:
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


class _Stats:
    """The plan's rollup increments: one list of counters (``STATS_COUNTERS``) per key."""

    __slots__ = ("rows",)

    def __init__(self, plan: Plan) -> None:
        self.rows = plan.stats

    def _row(self, user_id: int, day: int, model: str) -> list[int]:
        key = (user_id, day, model)
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = [0] * len(STATS_COUNTERS)
        return row

    def add(self, user_id: int, day: int, model: str, counter: int, value: int) -> None:
        self._row(user_id, day, model)[counter] += value

    def request(
        self, user_id: int, day: int, model: str, messages: int, tokens: tuple[int, int, int]
    ) -> None:
        row = self._row(user_id, day, model)
        row[_MESSAGES] += messages
        row[_REQUESTS] += 1
        row[_PROMPT] += tokens[0]
        row[_COMPLETION] += tokens[1]
        row[_TOTAL] += tokens[2]


def build_plan(
    events: Sequence[Prepared],
    states: dict[tuple[str, int], ConversationState],
    load: Loader,
    *,
    now_s: int,
    calendar: DayCalendar,
) -> Plan:
    """The rows and counter changes for ``events`` (already free of applied event ids).

    ``states`` holds the locked conversation rows (missing keys are new conversations),
    updated in place as events of the same conversation are planned in time order.
    ``load`` reads a conversation's stored rows; it is called only for a request that
    does not start with its conversation's tail (see ``storage.transcript``).
    """
    plan = Plan()
    stats = _Stats(plan)
    matcher = _Matcher(load)
    claim = _Claimer(plan, stats, calendar)
    touched: dict[tuple[str, int], ConversationState] = {}
    for ev in sorted(events, key=lambda e: (e.conversation_id, e.user_id, e.ms, e.event_id)):
        state = states.get(ev.key)
        if state is None:
            state = states[ev.key] = ConversationState(ev.conversation_id, ev.user_id, created_at=now_s)
        if ev.key not in touched and state.event_count == 0:
            matcher.fresh.add(ev.key)
        touched[ev.key] = state
        day = day_int(ev.day)
        if ev.kind == KIND_CHAT:
            rows, tokens = _chat_rows(ev, state, matcher, now_s, claim)
            plan.chat_rows.setdefault(ev.day, []).extend(rows)
            stats.request(ev.user_id, day, ev.model, len(rows), tokens)
        else:
            rows = _error_rows(ev, state, matcher)
            tokens = (0, 0, 0)
            plan.error_rows.setdefault(ev.day, []).extend(rows)
            stats.add(ev.user_id, day, ev.model, _ERRORS, 1)
        plan.ledger_rows.setdefault(ev.day, []).append((ev.event_id, ev.kind, now_s))
        _advance(state, ev, len(rows) if ev.kind == KIND_CHAT else 0, tokens, day, stats, calendar)
        state.updated_at = now_s
        plan.applied += 1
    plan.conversations = [touched[k] for k in sorted(touched)]
    return plan


class _Matcher:
    """Which of a request's messages are re-sends, and where the new ones go.

    The common case costs one hash of the request's first turns: a request that starts
    with its conversation's tail (the latest request and its answer) re-sends exactly
    those rows, and its other messages go at the end. Any other request (a system prompt
    added, a compaction, a window, an edit, a regenerate) is aligned with the stored
    transcript, read once per conversation and batch, and kept up to date with the rows
    the batch adds.
    """

    __slots__ = ("fresh", "load", "planned", "transcripts")

    def __init__(self, load: Loader) -> None:
        self.load = load
        self.fresh: set[tuple[str, int]] = set()  # no chat row stored before this batch
        self.transcripts: dict[tuple[str, int], Transcript] = {}
        # the rows planned for conversations whose transcript is not read (yet)
        self.planned: dict[tuple[str, int], list[tuple[dt.date, list[tuple[Any, ...]]]]] = {}

    def resolve(
        self, ev: Prepared, state: ConversationState, digests: list[bytes]
    ) -> tuple[int, str, list[int | None] | None, list[int], Entry | None]:
        """Which messages are re-sends: the first ``size`` are the conversation's tail
        (their context is the tail's, ``head``); after them, the stored ordinal each one
        re-sends (None: new), or ``None`` for the list when every one of them is new and
        goes at the end (no transcript was read: the common case); the positions of the
        new ones when they are placed among stored rows; and the stored row right after
        the request's last message when that one is a re-send (the answer may be that
        row: see ``_Claimer``)."""
        if state.event_count == 0:  # no chat row anywhere yet: everything is new
            return 0, "", None, [], None
        size = state.tail_len
        if size and len(digests) >= size and sequence_digest(digests[:size]).hex() == state.tail_digest:
            return size, state.tail_context, None, [], None
        transcript = self._transcript(ev.key, state)
        matches = align(transcript.digests(), digests)
        positions = transcript.place(matches, state.max_position)
        entries = transcript.entries
        ordinals = [None if m is None else entries[m].ordinal for m in matches]
        last = matches[-1] if matches else None
        follow = entries[last + 1] if last is not None and last + 1 < len(entries) else None
        return 0, "", ordinals, positions, follow

    def _transcript(self, key: tuple[str, int], state: ConversationState) -> Transcript:
        transcript = self.transcripts.get(key)
        if transcript is None:
            stored = [] if key in self.fresh else self.load(state)
            planned = [_entry(row, day) for day, rows in self.planned.pop(key, []) for row in rows]
            transcript = self.transcripts[key] = Transcript([*stored, *planned])
        return transcript

    def record(
        self, key: tuple[str, int], day: dt.date, rows: list[tuple[Any, ...]], claimed: str | None
    ) -> None:
        """An event's rows, kept as they are until a request of the conversation needs them
        (``claimed``: the message id of a stored row its answer took over, already there)."""
        transcript = self.transcripts.get(key)
        if transcript is None:
            self.planned.setdefault(key, []).append((day, rows))  # (no claim without a transcript)
            return
        for row in rows:
            if row[_MESSAGE_ID] != claimed:
                transcript.add(_entry(row, day))


_ORDINAL, _POSITION, _DIGEST, _MESSAGE_ID, _IS_RESPONSE, _MODEL, _MS = (
    CHAT_COLUMNS.index(name)
    for name in ("ordinal", "position", "digest", "message_id", "is_response", "model_name", "created_at_ms")
)


def _entry(row: tuple[Any, ...], day: dt.date) -> Entry:
    """A planned chat row as the transcript holds it."""
    return Entry(
        row[_POSITION], row[_ORDINAL], bytes.fromhex(row[_DIGEST]), row[_IS_RESPONSE], row[_MESSAGE_ID],
        row[_MODEL], row[_MS], day, planned=True,
    )  # fmt: skip


def _advance(
    state: ConversationState,
    ev: Prepared,
    rows: int,
    tokens: tuple[int, int, int],
    day: int,
    stats: _Stats,
    calendar: DayCalendar,
) -> None:
    if state.is_empty:
        state.first_at_ms = state.last_at_ms = ev.ms
        state.first_model = state.last_model = ev.model
        state.title = conversation_title(ev.messages)
        stats.add(ev.user_id, day, ev.model, _CONVERSATIONS, 1)
    elif (ev.ms, ev.model) < (state.first_at_ms, state.first_model):
        # An earlier event arrived late: the conversation now starts on its day. Move the
        # "conversations started" count with it so per-day counts stay exact.
        old_day = day_int(calendar.day_of(state.first_at_ms))
        stats.add(ev.user_id, old_day, state.first_model, _CONVERSATIONS, -1)
        stats.add(ev.user_id, day, ev.model, _CONVERSATIONS, 1)
        state.first_at_ms, state.first_model = ev.ms, ev.model
        state.title = conversation_title(ev.messages) or state.title
    # Ties on the millisecond are broken by model name, so the result does not depend on
    # the order events arrive in (and a recount can reproduce it).
    if (ev.ms, ev.model) > (state.last_at_ms, state.last_model):
        state.last_at_ms, state.last_model = ev.ms, ev.model
    if ev.kind == KIND_CHAT:
        state.event_count += 1
        state.message_count += rows
        state.models[ev.model] = state.models.get(ev.model, 0) + rows
        state.prompt_tokens += tokens[0]
        state.completion_tokens += tokens[1]
        state.total_tokens += tokens[2]
    else:
        state.error_count += 1
    if day not in state.days:
        state.days.append(day)


def _usage_tokens(usage: Any) -> tuple[int, int, int]:
    if not isinstance(usage, dict):
        return (0, 0, 0)
    prompt = _int(usage.get("prompt_tokens"))
    completion = _int(usage.get("completion_tokens"))
    total = _int(usage.get("total_tokens")) or prompt + completion
    return (prompt, completion, total)


class _Claimer:
    """Takes over a history copy of an answer for the answer's own event.

    When MES first meets a conversation through a later request, that request's history
    holds earlier answers, stored as history rows. When the earlier request's own event
    arrives (a retried batch, a replay), its answer is the stored row right after its
    last message: it replaces the history copy (same message id, ordinal and position,
    now with its tokens and ``is_response``) instead of adding the turn a second time.
    Counters move with the row.
    """

    __slots__ = ("calendar", "plan", "stats")

    def __init__(self, plan: Plan, stats: _Stats, calendar: DayCalendar) -> None:
        self.plan, self.stats, self.calendar = plan, stats, calendar

    def __call__(self, ev: Prepared, state: ConversationState, row: Entry) -> None:
        self.plan.chat_deletes.setdefault(row.table_day, []).append((ev.conversation_id, row.message_id))
        day = day_int(self.calendar.day_of(row.created_at_ms))
        self.stats.add(ev.user_id, day, row.model, _MESSAGES, -1)
        state.message_count -= 1
        state.models[row.model] = state.models.get(row.model, 0) - 1
        if not state.models[row.model]:
            del state.models[row.model]
        row.is_response = True


def _chat_rows(
    ev: Prepared,
    state: ConversationState,
    matcher: _Matcher,
    now_s: int,
    claim: _Claimer,
) -> tuple[list[tuple[Any, ...]], tuple[int, int, int]]:
    raw = ev.raw
    digests = _with_digests(ev)
    cid, uid, ms, key = ev.conversation_id, ev.user_id, ev.ms, ev.key
    created = ms // 1000
    token_id, channel_id = raw.get("token_id") or 0, raw.get("channel_id") or 0
    is_stream, ip, eid = bool(raw.get("is_stream")), raw.get("ip"), ev.event_id
    messages, model = ev.messages, ev.model
    size, head, ordinals, positions, follow = matcher.resolve(ev, state, digests)
    rows: list[tuple[Any, ...]] = []
    if ordinals is None:  # all new, at the end: consecutive ordinals, positions GAP apart
        first, end = state.last_ordinal + 1, state.max_position
        context: Sequence[int] = range(first, first + len(messages) - size)
        for n, seq in enumerate(range(size, len(messages))):
            rows.append(_history_row(ev, seq, first + n, end + GAP * (n + 1), digests[seq], now_s))
        if context:
            state.last_ordinal = context[-1]
            state.max_position = end + GAP * len(context)
    else:
        context = _placed_rows(ev, state, ordinals, positions, digests, rows, now_s)
    new_context = encode_context(context)
    context_text = join_context(head, new_context)
    response = raw.get("response") or {}
    usage = response.get("usage")
    tokens = _usage_tokens(usage)
    response_head = {k: v for k, v in response.items() if k not in _RESPONSE_SKIP}
    seq = len(messages)
    answered: list[int] = []
    claimed: str | None = None
    for n, (choice, digest) in enumerate(zip(ev.choices, ev.answers, strict=True)):
        if (
            n == 0
            and follow is not None
            and follow.digest == digest
            and not follow.is_response
            and not follow.planned
        ):
            claim(ev, state, follow)
            claimed = mid = follow.message_id
            ordinal, position = follow.ordinal, follow.position
        else:
            mid = _row_id(eid, seq + n)
            state.last_ordinal = ordinal = state.last_ordinal + 1
            state.max_position = position = state.max_position + GAP
        answered.append(ordinal)
        message = _choice_message(choice)
        content, is_json = content_column(message.get("content"))
        extra = _extras(message, is_json) or {}
        choice_extra = {k: v for k, v in choice.items() if k not in ("message", "delta", "finish_reason")}
        if choice_extra:
            extra["choice"] = choice_extra
        if n == 0:
            if response_head:
                extra["response"] = response_head
            for name in ("request_id", "metadata"):
                if raw.get(name) is not None:
                    extra[name] = raw[name]
        first = n == 0
        rows.append((
            uid, created, now_s, cid, mid, message.get("role") or "assistant", content, model,
            token_id, channel_id, tokens[0] if first else 0, tokens[1] if first else 0,
            tokens[2] if first else 0, is_stream, choice.get("finish_reason"),
            _dumps(usage) if first and usage is not None else None, _dumps(extra) if extra else None,
            ip, eid, seq + n, ms, True, ordinal, position, digest.hex(), context_text,
        ))  # fmt: skip
    matcher.record(key, ev.day, rows, claimed)
    if ms >= state.last_at_ms:  # the latest request so far: its turns and answer are the tail
        state.tail_digest = sequence_digest([*digests, ev.answers[0]]).hex()
        state.tail_len = len(digests) + 1
        state.tail_context = join_context(context_text, str(answered[0]))
    return rows, tokens


def _history_row(
    ev: Prepared, seq: int, ordinal: int, position: int, digest: bytes, now_s: int
) -> tuple[Any, ...]:
    """The chat row of the request's message ``seq`` (a new one: not a re-send)."""
    raw, message = ev.raw, ev.messages[seq]
    content = message.get("content")
    if len(message) == 2 and type(content) is str:  # role and text: nothing else to keep
        other = None
    else:
        content, is_json = content_column(content)
        extra = _extras(message, is_json)
        other = _dumps(extra) if extra else None
    return (
        ev.user_id, ev.ms // 1000, now_s, ev.conversation_id, _row_id(ev.event_id, seq), message.get("role") or "",
        content, ev.model, raw.get("token_id") or 0, raw.get("channel_id") or 0, 0, 0, 0,
        bool(raw.get("is_stream")), None, None, other, raw.get("ip"), ev.event_id, seq, ev.ms, False,
        ordinal, position, digest.hex(), None,
    )  # fmt: skip


def _placed_rows(
    ev: Prepared,
    state: ConversationState,
    ordinals: list[int | None],
    positions: list[int],
    digests: list[bytes],
    rows: list[tuple[Any, ...]],
    now_s: int,
) -> list[int]:
    """The history rows of a request matched against its transcript (re-sends skipped, new
    messages where ``positions`` put them), appended to ``rows``; returns its context."""
    new_positions = iter(positions)
    context: list[int] = []
    for seq, ordinal in enumerate(ordinals):
        if ordinal is None:  # new: the next ordinal, where the transcript placed it
            position = next(new_positions)
            state.last_ordinal = ordinal = state.last_ordinal + 1
            state.max_position = max(state.max_position, position)
            rows.append(_history_row(ev, seq, ordinal, position, digests[seq], now_s))
        context.append(ordinal)
    return context


def _error_rows(ev: Prepared, state: ConversationState, matcher: _Matcher) -> list[tuple[Any, ...]]:
    """The messages of a failed request that the conversation does not hold; at least one row."""
    raw = ev.raw
    digests = _with_digests(ev)
    messages = ev.messages
    size, _, ordinals, _, _ = matcher.resolve(ev, state, digests)
    if ordinals is None:
        picked = list(range(size, len(messages)))
    else:
        picked = [i for i, ordinal in enumerate(ordinals) if ordinal is None]
    if not picked and messages:  # all re-sent: the last one says what the request was
        picked = [len(messages) - 1]
    eid = ev.event_id
    created = ev.ms // 1000
    code, text = raw.get("error_code") or 0, raw.get("error_message")
    base = (raw.get("token_id") or 0, raw.get("channel_id") or 0, code, text)
    meta = {k: raw[k] for k in ("request_id", "metadata") if raw.get(k) is not None}
    rows = []
    if not picked:  # a failed request with no messages still leaves its error on record
        return [(ev.user_id, created, ev.conversation_id, _row_id(eid, 0), "", None, ev.model, *base, 0, 0, 0,
                 _dumps(meta) if meta else None, raw.get("ip"), eid, 0, ev.ms)]  # fmt: skip
    for n, seq in enumerate(picked):
        message = messages[seq]
        content, is_json = content_column(message.get("content"))
        extra = _extras(message, is_json) or {}
        if n == 0 and meta:
            extra.update(meta)
        rows.append((
            ev.user_id, created, ev.conversation_id, _row_id(eid, seq), message.get("role") or "", content,
            ev.model, *base, 0, 0, 0, _dumps(extra) if extra else None, raw.get("ip"), eid, seq, ev.ms,
        ))  # fmt: skip
    return rows
