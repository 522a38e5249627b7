"""The rows MES writes, one named tuple per table, in the tables' column order.

The writer's bulk path sends plain tuples in column order (the fastest way through every
driver); these classes are those tuples with names. They are built by keyword, so a row
cannot put a value in the wrong column, and :func:`check_rows` (run at import) compares
each class with its table definition in ``storage.tables``: a column added to a table
without its field here (or the other way round) stops MES at start-up, not at the first
insert. Adding an event field is then: the column in ``tables``, the field here, the
value where ``storage.plan`` builds the row.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import MetaData, Table

from mes.storage.tables import (
    STAT_COUNTERS,
    chat_table,
    conversations_table,
    daily_stats_table,
    dead_letters_table,
    error_table,
    ledger_table,
    uncaptured_table,
)

__all__ = [
    "CHAT_COLUMNS",
    "KIND_CHAT",
    "KIND_ERROR",
    "CONVERSATION_COLUMNS",
    "DEAD_LETTER_COLUMNS",
    "ERROR_COLUMNS",
    "LEDGER_COLUMNS",
    "STATS_COLUMNS",
    "STATS_KEY",
    "UNCAPTURED_COLUMNS",
    "ChatRow",
    "ConversationRow",
    "DeadLetterRow",
    "ErrorRow",
    "LedgerRow",
    "StatsRow",
    "UncapturedRow",
    "check_rows",
]


# An event's kind in the ledger and in mes_uncaptured
KIND_CHAT = 1
KIND_ERROR = 2


class ChatRow(NamedTuple):
    """A row of ``conversation_histories[_YYYY_MM_DD]``: one stored message."""

    user_id: int
    created_at: int
    updated_at: int
    conversation_id: str
    message_id: str
    role: str
    content: str | None
    model_name: str
    token_id: int
    channel_id: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    is_stream: bool
    finish_reason: str | None
    usage: str | None
    other: str | None
    ip: str | None
    event_id: str
    seq: int
    created_at_ms: int
    is_response: bool
    ordinal: int
    position: int
    digest: str
    context: str | None


class ErrorRow(NamedTuple):
    """A row of ``error_conversation_histories[_YYYY_MM_DD]``: a message of a failed request."""

    user_id: int
    created_at: int
    conversation_id: str
    message_id: str
    role: str
    content: str | None
    model_name: str
    token_id: int
    channel_id: int
    error_code: int
    error_message: str | None
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    other: str | None
    ip: str | None
    event_id: str
    seq: int
    created_at_ms: int


class LedgerRow(NamedTuple):
    """A row of ``mes_event_ledger[_YYYY_MM_DD]``: an applied event."""

    event_id: str
    kind: int
    applied_at: int


class UncapturedRow(NamedTuple):
    """A row of ``mes_uncaptured[_YYYY_MM_DD]``: an event kept as its counts only."""

    event_id: str
    kind: int
    user_id: int
    conversation_id: str
    model_name: str
    created_at_ms: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ConversationRow(NamedTuple):
    """A row of ``mes_conversations`` (``storage.rollup.ConversationState`` reads and writes it)."""

    conversation_id: str
    user_id: int
    title: str
    first_at_ms: int
    last_at_ms: int
    first_model: str
    last_model: str
    message_count: int
    event_count: int
    error_count: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    models: str
    days: str
    created_at: int
    updated_at: int
    last_ordinal: int
    max_position: int
    tail_digest: str
    tail_len: int
    tail_context: str | None


class StatsRow(NamedTuple):
    """A row of ``mes_daily_stats``: the key, then ``STAT_COUNTERS``."""

    user_id: int
    day: int
    model_name: str
    messages: int
    conversations: int
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class DeadLetterRow(NamedTuple):
    """The columns of ``mes_dead_letters`` a new dead letter fills (not ``id``, ``replayed_at``)."""

    created_at: int
    fingerprint: str
    event_id: str | None
    batch_id: str | None
    source: str
    reason: str
    payload: bytes


CHAT_COLUMNS = ChatRow._fields
ERROR_COLUMNS = ErrorRow._fields
LEDGER_COLUMNS = LedgerRow._fields
UNCAPTURED_COLUMNS = UncapturedRow._fields
CONVERSATION_COLUMNS = ConversationRow._fields
STATS_COLUMNS = StatsRow._fields
DEAD_LETTER_COLUMNS = DeadLetterRow._fields
STATS_KEY = STATS_COLUMNS[: len(STATS_COLUMNS) - len(STAT_COUNTERS)]


def _written(table: Table, left_out: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The columns an insert fills: all but an autoincrement id and ``left_out``."""
    return tuple(
        c.name
        for c in table.columns
        if not (c.primary_key and c.autoincrement is True) and c.name not in left_out
    )


def check_rows() -> None:
    """Each row class names its table's columns, in order.

    Raises:
        TypeError: a class and its table disagree (a programming error: MES does not start).
    """
    metadata = MetaData()
    pairs: list[tuple[type[Any], tuple[str, ...]]] = [
        (ChatRow, _written(chat_table("chat", metadata))),
        (ErrorRow, _written(error_table("error", metadata))),
        (LedgerRow, _written(ledger_table("ledger", metadata))),
        (UncapturedRow, _written(uncaptured_table("uncaptured", metadata))),
        (ConversationRow, _written(conversations_table(metadata))),
        (StatsRow, _written(daily_stats_table(metadata))),
        (DeadLetterRow, _written(dead_letters_table(metadata), ("replayed_at",))),
    ]
    for row, columns in pairs:
        if row._fields != columns:
            raise TypeError(f"{row.__name__} has fields {row._fields}, its table the columns {columns}")
    if STATS_COLUMNS[len(STATS_KEY) :] != STAT_COUNTERS:
        raise TypeError(f"StatsRow's counters {STATS_COLUMNS[len(STATS_KEY) :]} are not {STAT_COUNTERS}")


check_rows()
