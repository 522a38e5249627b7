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

from mes.days import DayCalendar
from mes.privacy.capture import Capture, CapturePolicy
from mes.storage.rollup import ConversationState, Rollup, advance, take_over
from mes.storage.rows import KIND_CHAT, KIND_ERROR, ChatRow, ErrorRow, LedgerRow, StatsRow, UncapturedRow
from mes.storage.transcript import GAP, Entry, Transcript, align, encode_context, join_context
from mes.storage.turns import content_column, message_digest, message_digests, sequence_digest

__all__ = ["Loader", "Plan", "Prepared", "build_plan", "prepare"]

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
    # What the operator's policy keeps of it (``mes.privacy``), and what was redacted from it
    content_kept: bool = True  # the capture level is full
    rows_kept: bool = True  # ... is not none (none: counts only, see Plan.uncaptured_rows)
    redacted: Mapping[str, int] | None = None  # per detector; None: nothing found

    @property
    def key(self) -> tuple[str, int]:
        return (self.conversation_id, self.user_id)


_EVENT_ONLY = CapturePolicy()  # full, no rules: what an event asks for alone decides
Mark = tuple[Capture, dict[str, int]]
"""What ``mes.privacy.Privacy.apply`` decided for an event: its level and redactions."""


def prepare(raw: Mapping[str, Any], calendar: DayCalendar, mark: Mark | None = None) -> Prepared:
    """Read the fields the writer needs from a validated event dict (already redacted,
    when ``mark`` says what privacy did to it)."""
    ms = raw["occurred_at"]
    messages = raw.get("messages") or ()
    if mark is None:  # no operator policy (everything kept): the event may still ask for less
        asked = raw.get("capture")
        if asked is not None and asked != "full":
            mark = (_EVENT_ONLY.level(raw), {})
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
        content_kept=mark is None or mark[0] == Capture.FULL,
        rows_kept=mark is None or mark[0] != Capture.NONE,
        redacted=None if mark is None else mark[1] or None,
    )


# ``other`` of a row whose content the capture policy did not keep (``metadata``, ``none``)
_NOT_STORED: dict[str, Any] = {"content_stored": False}
_NOT_STORED_TEXT = orjson.dumps(_NOT_STORED).decode()


@dataclasses.dataclass
class Plan:
    """Everything a batch will write, grouped by table."""

    chat_rows: dict[dt.date, list[ChatRow]] = dataclasses.field(default_factory=dict)
    # History copies of an answer that the answer's own event now takes over (see _claim).
    chat_deletes: dict[dt.date | None, list[tuple[str, str]]] = dataclasses.field(default_factory=dict)
    error_rows: dict[dt.date, list[ErrorRow]] = dataclasses.field(default_factory=dict)
    ledger_rows: dict[dt.date, list[LedgerRow]] = dataclasses.field(default_factory=dict)
    # Events the capture policy keeps as counts only (none): what their rows would have counted
    uncaptured_rows: dict[dt.date, list[UncapturedRow]] = dataclasses.field(default_factory=dict)
    conversations: list[ConversationState] = dataclasses.field(default_factory=list)
    rollup: Rollup = dataclasses.field(default_factory=Rollup)
    applied: int = 0

    @property
    def chat_row_count(self) -> int:
        return sum(map(len, self.chat_rows.values()))

    @property
    def error_row_count(self) -> int:
        return sum(map(len, self.error_rows.values()))

    def stats_rows(self) -> list[StatsRow]:
        """Rollup increments in key order (a fixed lock order: no deadlocks between writers)."""
        return self.rollup.rows()


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
    matcher = _Matcher(load)
    claim = _Claimer(plan, calendar)
    touched: dict[tuple[str, int], ConversationState] = {}
    for ev in sorted(events, key=lambda e: (e.conversation_id, e.user_id, e.ms, e.event_id)):
        state = states.get(ev.key)
        if state is None:
            state = states[ev.key] = ConversationState(ev.conversation_id, ev.user_id, created_at=now_s)
        if ev.key not in touched and state.event_count == 0:
            matcher.fresh.add(ev.key)
        touched[ev.key] = state
        chat_rows: int | None = None
        tokens = (0, 0, 0)
        if not ev.rows_kept:
            # Kept as what it counts only: a request (or a failed one) and its tokens. None
            # of its messages is stored, or counted as stored, or taken into the
            # conversation's tail: a later request that sends them again stores them at
            # its own level, once, whichever way it is matched.
            if ev.kind == KIND_CHAT:
                chat_rows, tokens = 0, _usage_tokens((ev.raw.get("response") or {}).get("usage"))
            plan.uncaptured_rows.setdefault(ev.day, []).append(
                UncapturedRow(ev.event_id, ev.kind, ev.user_id, ev.conversation_id, ev.model, ev.ms, *tokens)
            )
        elif ev.kind == KIND_CHAT:
            rows, tokens = _chat_rows(ev, state, matcher, now_s, claim)
            chat_rows = len(rows)
            plan.chat_rows.setdefault(ev.day, []).extend(rows)
        else:
            plan.error_rows.setdefault(ev.day, []).extend(_error_rows(ev, state, matcher))
        plan.ledger_rows.setdefault(ev.day, []).append(LedgerRow(ev.event_id, ev.kind, now_s))
        advance(state, plan.rollup, calendar, ms=ev.ms, model=ev.model,
                messages=ev.messages if ev.content_kept else (), chat_rows=chat_rows, tokens=tokens)  # fmt: skip
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
        self.planned: dict[tuple[str, int], list[tuple[dt.date, list[ChatRow]]]] = {}

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

    def record(self, key: tuple[str, int], day: dt.date, rows: list[ChatRow], claimed: str | None) -> None:
        """An event's rows, kept as they are until a request of the conversation needs them
        (``claimed``: the message id of a stored row its answer took over, already there)."""
        transcript = self.transcripts.get(key)
        if transcript is None:
            self.planned.setdefault(key, []).append((day, rows))  # (no claim without a transcript)
            return
        for row in rows:
            if row.message_id != claimed:
                transcript.add(_entry(row, day))


def _entry(row: ChatRow, day: dt.date) -> Entry:
    """A planned chat row as the transcript holds it."""
    return Entry(
        row.position, row.ordinal, bytes.fromhex(row.digest), row.is_response, row.message_id, row.model_name,
        row.created_at_ms, day, planned=True,
    )  # fmt: skip


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

    __slots__ = ("calendar", "plan")

    def __init__(self, plan: Plan, calendar: DayCalendar) -> None:
        self.plan, self.calendar = plan, calendar

    def __call__(self, ev: Prepared, state: ConversationState, row: Entry) -> None:
        self.plan.chat_deletes.setdefault(row.table_day, []).append((ev.conversation_id, row.message_id))
        take_over(state, self.plan.rollup, self.calendar, model=row.model, ms=row.created_at_ms)
        row.is_response = True


def _chat_rows(
    ev: Prepared,
    state: ConversationState,
    matcher: _Matcher,
    now_s: int,
    claim: _Claimer,
) -> tuple[list[ChatRow], tuple[int, int, int]]:
    raw = ev.raw
    digests = _with_digests(ev)
    cid, uid, ms, key = ev.conversation_id, ev.user_id, ev.ms, ev.key
    created = ms // 1000
    token_id, channel_id = raw.get("token_id") or 0, raw.get("channel_id") or 0
    is_stream, ip, eid = bool(raw.get("is_stream")), raw.get("ip"), ev.event_id
    messages, model = ev.messages, ev.model
    size, head, ordinals, positions, follow = matcher.resolve(ev, state, digests)
    rows: list[ChatRow] = []
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
        if ev.content_kept:
            content, is_json = content_column(message.get("content"))
            extra = _extras(message, is_json) or {}
            choice_extra = {k: v for k, v in choice.items() if k not in ("message", "delta", "finish_reason")}
            if choice_extra:
                extra["choice"] = choice_extra
        else:
            content, extra = None, dict(_NOT_STORED)
        if n == 0:
            if response_head:
                extra["response"] = response_head
            for name in ("request_id", "metadata"):
                if raw.get(name) is not None:
                    extra[name] = raw[name]
            if ev.redacted:
                extra["redacted"] = dict(ev.redacted)
        first = n == 0
        # ChatRow's fields in order (by position: this runs for every answer; see _history_row)
        rows.append(ChatRow(
            uid, created, now_s, cid, mid, message.get("role") or "assistant", content, model, token_id,
            channel_id, tokens[0] if first else 0, tokens[1] if first else 0, tokens[2] if first else 0,
            is_stream, choice.get("finish_reason"), _dumps(usage) if first and usage is not None else None,
            _dumps(extra) if extra else None, ip, eid, seq + n, ms, True, ordinal, position, digest.hex(),
            context_text,
        ))  # fmt: skip
    matcher.record(key, ev.day, rows, claimed)
    if ms >= state.last_at_ms:  # the latest request so far: its turns and answer are the tail
        state.tail_digest = sequence_digest([*digests, ev.answers[0]]).hex()
        state.tail_len = len(digests) + 1
        state.tail_context = join_context(context_text, str(answered[0]))
    return rows, tokens


def _history_row(ev: Prepared, seq: int, ordinal: int, position: int, digest: bytes, now_s: int) -> ChatRow:
    """The chat row of the request's message ``seq`` (a new one: not a re-send)."""
    raw, message = ev.raw, ev.messages[seq]
    content = message.get("content")
    if not ev.content_kept:
        content, other = None, _NOT_STORED_TEXT
    elif len(message) == 2 and type(content) is str:  # role and text: nothing else to keep
        other = None
    else:
        content, is_json = content_column(content)
        extra = _extras(message, is_json)
        other = _dumps(extra) if extra else None
    # ChatRow's fields in order: user_id, created_at, updated_at, conversation_id, message_id, role,
    # content, model_name, token_id, channel_id, prompt/completion/total_tokens, is_stream,
    # finish_reason, usage, other, ip, event_id, seq, created_at_ms, is_response, ordinal,
    # position, digest, context. By position, not keyword: this runs for every message stored,
    # and a keyword call of 26 arguments costs 3-4 times as much (``bench/before_after.py``);
    # mypy checks each value's type against its field, tests/test_writer.py each field's value.
    return ChatRow(
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
    rows: list[ChatRow],
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


def _error_rows(ev: Prepared, state: ConversationState, matcher: _Matcher) -> list[ErrorRow]:
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
    meta = {k: raw[k] for k in ("request_id", "metadata") if raw.get(k) is not None}

    def row(seq: int, role: str, content: str | None, other: dict[str, Any] | None) -> ErrorRow:
        return ErrorRow(
            user_id=ev.user_id, created_at=ev.ms // 1000, conversation_id=ev.conversation_id,
            message_id=_row_id(ev.event_id, seq), role=role, content=content, model_name=ev.model,
            token_id=raw.get("token_id") or 0, channel_id=raw.get("channel_id") or 0,
            error_code=raw.get("error_code") or 0, error_message=raw.get("error_message"), prompt_tokens=0,
            completion_tokens=0, total_tokens=0, other=_dumps(other) if other else None, ip=raw.get("ip"),
            event_id=ev.event_id, seq=seq, created_at_ms=ev.ms,
        )  # fmt: skip

    if ev.redacted:
        meta["redacted"] = dict(ev.redacted)
    if not ev.content_kept:
        meta = {**_NOT_STORED, **meta}
    if not picked:  # a failed request with no messages still leaves its error on record
        return [row(0, "", None, meta)]
    rows = []
    for n, seq in enumerate(picked):
        message = messages[seq]
        if ev.content_kept:
            content, is_json = content_column(message.get("content"))
            extra = _extras(message, is_json) or {}
        else:
            content, extra = None, dict(_NOT_STORED)
        if n == 0 and meta:
            extra.update(meta)
        rows.append(row(seq, message.get("role") or "", content, extra))
    return rows
