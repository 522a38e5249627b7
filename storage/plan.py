"""Planning a batch: from validated events and the current state of their conversations
to the exact rows to insert and the exact index and rollup changes. Pure: no I/O.

The writer runs it inside its transaction, after locking the conversations the batch
touches and reading which of the candidate message ids already exist, so the plan is
exact: every row it lists is new, and the counters it adds equal the rows it inserts.
That is what keeps the rollups equal to a recount of the rows at all times.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from hashlib import blake2b
from typing import Any, NamedTuple

import orjson

from ..core.days import DayCalendar, date_of_int, day_int
from .turns import chain_ids, chain_seed, content_column, owned_start, turn_digest

__all__ = [
    "CHAT_COLUMNS",
    "CONVERSATION_COLUMNS",
    "ERROR_COLUMNS",
    "LEDGER_COLUMNS",
    "STATS_COLUMNS",
    "ConversationState",
    "Existing",
    "Plan",
    "Prepared",
    "build_plan",
    "lookup_targets",
    "prepare",
]

KIND_CHAT = 1
KIND_ERROR = 2
TITLE_LEN = 100

CHAT_COLUMNS = (
    "user_id", "created_at", "updated_at", "conversation_id", "message_id", "role", "content",
    "model_name", "token_id", "channel_id", "prompt_tokens", "completion_tokens", "total_tokens",
    "is_stream", "finish_reason", "usage", "other", "ip", "event_id", "seq", "created_at_ms", "is_response",
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


def _hex(digest: bytes) -> str:
    return digest.hex()


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
    digests: list[bytes] | None = None  # chain id of each message, once computed
    answers: list[bytes] = dataclasses.field(default_factory=list)  # ... and of each choice
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


class Existing(NamedTuple):
    """A chat row that a candidate message id already names (found in a table or planned).

    A named tuple: the plan makes two per chat event, and a frozen dataclass costs several
    times as much to build."""

    table_day: dt.date | None  # the table it is in (None: the plain table)
    is_response: bool
    model: str
    created_at_ms: int
    planned: bool = False


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
        return cls(**values)

    def to_row(self) -> tuple[Any, ...]:
        return (
            self.conversation_id, self.user_id, self.title, self.first_at_ms, self.last_at_ms,
            self.first_model, self.last_model, self.message_count, self.event_count, self.error_count,
            self.prompt_tokens, self.completion_tokens, self.total_tokens, _dumps(self.models),
            ",".join(map(str, sorted(self.days))), self.created_at, self.updated_at,
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
    seed = chain_seed(ev.user_id, ev.conversation_id)
    digests = ev.digests = chain_ids(seed, ev.messages)
    if ev.kind == KIND_CHAT:
        last = digests[-1] if digests else seed
        ev.choices = _choices(ev.raw)
        ev.answers = [turn_digest(last, _answer(choice)) for choice in ev.choices]
    return digests


def lookup_targets(
    events: Iterable[Prepared], states: Mapping[tuple[str, int], ConversationState]
) -> dict[dt.date, tuple[set[str], set[str]]]:
    """Which chat tables to ask for which (conversation ids, message ids) before planning.

    Candidates are the messages each chat event owns and its response ids; they are
    looked up in the event's own day and the conversation's latest day (where a
    regenerated question was first stored), and in every day of the conversation when
    the request has no assistant message to anchor on. A conversation with no chat event
    applied has no history rows anywhere (rows and index change in one transaction, and
    deletion and retention recount the index), so it is not looked up: its events in this
    batch meet each other in the plan, and a writer racing to create it fails a unique key.
    """
    targets: dict[dt.date, tuple[set[str], set[str]]] = {}
    for ev in events:
        if ev.kind != KIND_CHAT:
            continue
        state = states.get(ev.key)
        if state is None or state.event_count == 0:
            continue
        digests = _with_digests(ev)
        start = owned_start(ev.messages)
        ids = [_hex(d) for d in digests[start:]]
        ids.extend(_hex(d) for d in ev.answers)
        days = {ev.day}
        if state.days:
            days.add(date_of_int(max(state.days)))
            if start == 0:
                days.update(date_of_int(d) for d in state.days)
        for day in days:
            cids, mids = targets.setdefault(day, (set(), set()))
            cids.add(ev.conversation_id)
            mids.update(ids)
    return targets


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


def _title(messages: Sequence[Mapping[str, Any]]) -> str:
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
    existing: dict[tuple[str, str], Existing],
    *,
    now_s: int,
    calendar: DayCalendar,
) -> Plan:
    """The rows and counter changes for ``events`` (already free of applied event ids).

    ``states`` holds the locked conversation rows (missing keys are new conversations);
    ``existing`` the (conversation_id, message_id) pairs already stored. Both are updated
    in place as events of the same conversation are planned in time order.
    """
    plan = Plan()
    stats = _Stats(plan)
    taken = existing  # grows with the rows this plan adds
    claim = _Claimer(plan, stats, calendar)
    touched: dict[tuple[str, int], ConversationState] = {}
    for ev in sorted(events, key=lambda e: (e.conversation_id, e.user_id, e.ms, e.event_id)):
        state = states.get(ev.key)
        if state is None:
            state = states[ev.key] = ConversationState(ev.conversation_id, ev.user_id, created_at=now_s)
        touched[ev.key] = state
        day = day_int(ev.day)
        if ev.kind == KIND_CHAT:
            rows, tokens = _chat_rows(ev, state, taken, now_s, claim)
            plan.chat_rows.setdefault(ev.day, []).extend(rows)
            stats.request(ev.user_id, day, ev.model, len(rows), tokens)
        else:
            rows = _error_rows(ev, state)
            tokens = (0, 0, 0)
            plan.error_rows.setdefault(ev.day, []).extend(rows)
            stats.add(ev.user_id, day, ev.model, _ERRORS, 1)
        plan.ledger_rows.setdefault(ev.day, []).append((ev.event_id, ev.kind, now_s))
        _advance(state, ev, len(rows) if ev.kind == KIND_CHAT else 0, tokens, day, stats, calendar)
        state.updated_at = now_s
        plan.applied += 1
    plan.conversations = [touched[k] for k in sorted(touched)]
    return plan


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
        state.title = _title(ev.messages)
        stats.add(ev.user_id, day, ev.model, _CONVERSATIONS, 1)
    elif (ev.ms, ev.model) < (state.first_at_ms, state.first_model):
        # An earlier event arrived late: the conversation now starts on its day. Move the
        # "conversations started" count with it so per-day counts stay exact.
        old_day = day_int(calendar.day_of(state.first_at_ms))
        stats.add(ev.user_id, old_day, state.first_model, _CONVERSATIONS, -1)
        stats.add(ev.user_id, day, ev.model, _CONVERSATIONS, 1)
        state.first_at_ms, state.first_model = ev.ms, ev.model
        state.title = _title(ev.messages) or state.title
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
    arrives (a retried batch, a replay), its answer is the same turn: it replaces the
    history copy (same message id, now with its tokens and ``is_response``) instead of
    adding the turn a second time. Counters move with the row.
    """

    __slots__ = ("calendar", "plan", "stats")

    def __init__(self, plan: Plan, stats: _Stats, calendar: DayCalendar) -> None:
        self.plan, self.stats, self.calendar = plan, stats, calendar

    def __call__(self, ev: Prepared, state: ConversationState, mid: str, row: Existing) -> None:
        self.plan.chat_deletes.setdefault(row.table_day, []).append((ev.conversation_id, mid))
        day = day_int(self.calendar.day_of(row.created_at_ms))
        self.stats.add(ev.user_id, day, row.model, _MESSAGES, -1)
        state.message_count -= 1
        state.models[row.model] = state.models.get(row.model, 0) - 1
        if not state.models[row.model]:
            del state.models[row.model]


def _chat_rows(
    ev: Prepared,
    state: ConversationState,
    taken: dict[tuple[str, str], Existing],
    now_s: int,
    claim: _Claimer,
) -> tuple[list[tuple[Any, ...]], tuple[int, int, int]]:
    raw = ev.raw
    digests = _with_digests(ev)
    cid, uid, ms = ev.conversation_id, ev.user_id, ev.ms
    created = ms // 1000
    token_id, channel_id = raw.get("token_id") or 0, raw.get("channel_id") or 0
    is_stream, ip, eid = bool(raw.get("is_stream")), raw.get("ip"), ev.event_id
    messages, model = ev.messages, ev.model
    start = owned_start(messages) if state.event_count > 0 else 0
    history_row = Existing(ev.day, False, model, ms, planned=True)
    rows: list[tuple[Any, ...]] = []
    for seq in range(start, len(messages)):
        mid = digests[seq].hex()
        key = (cid, mid)
        if key in taken:
            continue
        taken[key] = history_row
        message = messages[seq]
        content = message.get("content")
        if len(message) == 2 and type(content) is str:  # role and text: nothing else to keep
            other = None
        else:
            content, is_json = content_column(content)
            extra = _extras(message, is_json)
            other = _dumps(extra) if extra else None
        rows.append((
            uid, created, now_s, cid, mid, message.get("role") or "", content, model, token_id,
            channel_id, 0, 0, 0, is_stream, None, None, other, ip, eid, seq, ms, False,
        ))  # fmt: skip
    response = raw.get("response") or {}
    usage = response.get("usage")
    tokens = _usage_tokens(usage)
    head = {k: v for k, v in response.items() if k not in _RESPONSE_SKIP}
    seq = len(messages)
    response_row = Existing(ev.day, True, model, ms, planned=True)
    for n, (choice, digest) in enumerate(zip(ev.choices, ev.answers, strict=True)):
        mid = _hex(digest)
        found = taken.get((cid, mid))
        if found is not None:
            if found.is_response or found.planned:
                # The same answer at the same place (a regenerate that came out identical):
                # still its own request, with its own tokens: give it an id of its own.
                mid = _hex(blake2b(digest + eid.encode(), digest_size=16).digest())
            else:
                claim(ev, state, mid, found)
        taken[(cid, mid)] = response_row
        message = _choice_message(choice)
        content, is_json = content_column(message.get("content"))
        extra = _extras(message, is_json) or {}
        choice_extra = {k: v for k, v in choice.items() if k not in ("message", "delta", "finish_reason")}
        if choice_extra:
            extra["choice"] = choice_extra
        if n == 0:
            if head:
                extra["response"] = head
            for key in ("request_id", "metadata"):
                if raw.get(key) is not None:
                    extra[key] = raw[key]
        first = n == 0
        rows.append((
            uid, created, now_s, cid, mid, message.get("role") or "assistant", content, model,
            token_id, channel_id, tokens[0] if first else 0, tokens[1] if first else 0,
            tokens[2] if first else 0, is_stream, choice.get("finish_reason"),
            _dumps(usage) if first and usage is not None else None, _dumps(extra) if extra else None,
            ip, eid, seq, ms, True,
        ))  # fmt: skip
    return rows, tokens


def _error_rows(ev: Prepared, state: ConversationState) -> list[tuple[Any, ...]]:
    """The messages of a failed request that the conversation does not hold yet; at least one row."""
    raw = ev.raw
    digests = _with_digests(ev)
    messages = ev.messages
    start = owned_start(messages) if state.event_count > 0 else 0
    if start >= len(messages):
        start = max(0, len(messages) - 1)
    picked = list(range(start, len(messages)))
    eid = ev.event_id.encode()
    created = ev.ms // 1000
    code, text = raw.get("error_code") or 0, raw.get("error_message")
    base = (raw.get("token_id") or 0, raw.get("channel_id") or 0, code, text)
    meta = {k: raw[k] for k in ("request_id", "metadata") if raw.get(k) is not None}
    rows = []
    if not picked:  # a failed request with no messages still leaves its error on record
        mid = _hex(blake2b(chain_seed(ev.user_id, ev.conversation_id) + eid, digest_size=16).digest())
        return [(ev.user_id, created, ev.conversation_id, mid, "", None, ev.model, *base, 0, 0, 0,
                 _dumps(meta) if meta else None, raw.get("ip"), ev.event_id, 0, ev.ms)]  # fmt: skip
    for n, seq in enumerate(picked):
        message = messages[seq]
        mid = _hex(blake2b(digests[seq] + eid, digest_size=16).digest())
        content, is_json = content_column(message.get("content"))
        extra = _extras(message, is_json) or {}
        if n == 0 and meta:
            extra.update(meta)
        rows.append((
            ev.user_id, created, ev.conversation_id, mid, message.get("role") or "", content, ev.model,
            *base, 0, 0, 0, _dumps(extra) if extra else None, raw.get("ip"), ev.event_id, seq, ev.ms,
        ))  # fmt: skip
    return rows
