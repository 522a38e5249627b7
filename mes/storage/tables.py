"""Table definitions: the seed's history tables plus MES's index, rollup, ledger and dead letters.

History tables keep the Go version's names and columns so an operator can point MES at
the same names (MES writes to tables it created itself: the columns below are MES's own):

* ``conversation_histories[_YYYY_MM_DD]``: one row per stored message. MES adds
  ``event_id`` (the event that stored it), ``seq`` (its place in that request),
  ``created_at_ms`` (the event's time in ms), ``is_response`` (the row that carries a
  request's answer and its tokens), and the transcript's ``ordinal``, ``position``,
  ``digest`` and ``context`` (see ``storage.transcript``).
* ``error_conversation_histories[_YYYY_MM_DD]``: the messages of a failed request, with
  the error on each row (as the seed does), plus the same three columns.
* ``mes_event_ledger[_YYYY_MM_DD]``: one row per applied event id: exactly-once. It is
  partitioned like the history, so an event's ledger row is dropped with its day.
* ``mes_uncaptured[_YYYY_MM_DD]``: one row per event stored under ``MES_CAPTURE=none``: no
  message, only what it counts (a request, its tokens) and where (user, conversation,
  model, time), which the index and rollups are recounted from. Made for a day when such an event
  first lands on it.

And, not partitioned:

* ``mes_conversations``: one row per (conversation, user): listing without scanning.
* ``mes_daily_stats``: (user, day, model) → messages, conversations, tokens, errors.
* ``mes_dead_letters``: events that cannot be stored, with the reason and raw payload.
* ``mes_content_expired``: the daily tables whose content has been erased (content retention).
* ``mes_erasures``: the users erased (``mes erase``), and since when: a worker stores nothing
  of an event of theirs that happened before (see ``storage.erase``).
* ``mes_write_gate``: one row every writer's transaction reads under a shared lock, and an
  erasure updates, so that no batch begun before an erasure writes after it.
* ``mes_audit``: who read or deleted another user's history, what, when and from where
  (``storage.audit``); kept when that user is erased.

Names of daily tables come only from :func:`day_suffix` of a ``datetime.date``, never
from text a user sent.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.schema import SchemaItem

from mes.storage.backends.types import AutoId, LongBlob, LongText, exact_string

__all__ = [
    "CHAT_BASE",
    "ERROR_BASE",
    "LEDGER_BASE",
    "UNCAPTURED_BASE",
    "STAT_COUNTERS",
    "DayTables",
    "day_suffix",
    "parse_day_suffix",
]

CHAT_BASE = "conversation_histories"
ERROR_BASE = "error_conversation_histories"
LEDGER_BASE = "mes_event_ledger"
UNCAPTURED_BASE = "mes_uncaptured"

# 191 characters of utf8mb4 fit the classic 767-byte index prefix, so the keys work on
# old MySQL row formats too.
ID_LEN = 191


def mes_table(name: str, metadata: MetaData, *items: SchemaItem) -> Table:
    """A table with MES's MySQL options (utf8mb4, InnoDB); other dialects ignore them."""
    return Table(
        name,
        metadata,
        *items,
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_unicode_ci",
        mysql_engine="InnoDB",
    )


_DAY_RE = re.compile(r"^(\d{4})_(\d{2})_(\d{2})$")


def day_suffix(day: dt.date) -> str:
    """``2026_01_15`` for a date: the only way a daily table name is made."""
    return day.strftime("%Y_%m_%d")


def parse_day_suffix(name: str, base: str) -> dt.date | None:
    """The date of a daily table called ``{base}_YYYY_MM_DD``, or None if it is not one."""
    if not name.startswith(base + "_"):
        return None
    match = _DAY_RE.match(name[len(base) + 1 :])
    if not match:
        return None
    try:
        return dt.date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None


def _history_columns() -> list[Column[Any]]:
    return [
        Column("id", AutoId, primary_key=True, autoincrement=True),
        Column("user_id", Integer, nullable=False),
        Column("created_at", BigInteger, nullable=False),
    ]


def chat_table(name: str, metadata: MetaData, ids: str | None = None) -> Table:
    return mes_table(
        name,
        metadata,
        *_history_columns(),
        Column("updated_at", BigInteger, nullable=False),
        Column("conversation_id", exact_string(ID_LEN, ids), nullable=False),
        Column("message_id", exact_string(64, ids), nullable=False),
        Column("role", String(32), nullable=False),
        Column("content", LongText),
        Column("model_name", exact_string(ID_LEN, ids), nullable=False, default=""),
        Column("token_id", Integer, nullable=False, default=0),
        Column("channel_id", Integer, nullable=False, default=0),
        Column("prompt_tokens", Integer, nullable=False, default=0),
        Column("completion_tokens", Integer, nullable=False, default=0),
        Column("total_tokens", Integer, nullable=False, default=0),
        Column("is_stream", Boolean, nullable=False, default=False),
        Column("finish_reason", String(64)),
        Column("usage", LongText),
        Column("other", LongText),
        Column("ip", String(64)),
        Column("event_id", exact_string(64, ids), nullable=False),
        Column("seq", Integer, nullable=False),
        Column("created_at_ms", BigInteger, nullable=False),
        # True on the row that carries a request's answer (and its tokens); False on a
        # message stored from a request's history.
        Column("is_response", Boolean, nullable=False, default=False),
        # The transcript (see storage.transcript): the row's number in its conversation, its
        # place in the conversation's order, its turn digest, and on an answer row the
        # ordinals of the messages its request sent. Nullable only so that a migration can
        # add them to a table of an older MES before it fills them.
        Column("ordinal", Integer),
        Column("position", BigInteger),
        Column("digest", String(32)),
        Column("context", LongText),
        # The one secondary index: it is the dedup key and the read path of a conversation.
        UniqueConstraint("conversation_id", "message_id", name=f"uq_{name}_msg"),
    )


def error_table(name: str, metadata: MetaData, ids: str | None = None) -> Table:
    return mes_table(
        name,
        metadata,
        *_history_columns(),
        Column("conversation_id", exact_string(ID_LEN, ids), nullable=False),
        Column("message_id", exact_string(64, ids), nullable=False),
        Column("role", String(32), nullable=False),
        Column("content", LongText),
        Column("model_name", exact_string(ID_LEN, ids), nullable=False, default=""),
        Column("token_id", Integer, nullable=False, default=0),
        Column("channel_id", Integer, nullable=False, default=0),
        Column("error_code", Integer, nullable=False, default=0),
        Column("error_message", LongText),
        Column("prompt_tokens", Integer, nullable=False, default=0),
        Column("completion_tokens", Integer, nullable=False, default=0),
        Column("total_tokens", Integer, nullable=False, default=0),
        Column("other", LongText),
        Column("ip", String(64)),
        Column("event_id", exact_string(64, ids), nullable=False),
        Column("seq", Integer, nullable=False),
        Column("created_at_ms", BigInteger, nullable=False),
        UniqueConstraint("conversation_id", "message_id", name=f"uq_{name}_msg"),
        # A user's failed requests, newest first. Errors are a small share of traffic, so
        # this second index costs little, unlike one on the chat tables.
        Index(f"ix_{name}_user", "user_id", "created_at_ms"),
    )


def ledger_table(name: str, metadata: MetaData, ids: str | None = None) -> Table:
    return mes_table(
        name,
        metadata,
        Column("event_id", exact_string(64, ids), primary_key=True),
        Column("kind", SmallInteger, nullable=False),
        Column("applied_at", BigInteger, nullable=False),
    )


def uncaptured_table(name: str, metadata: MetaData, ids: str | None = None) -> Table:
    """An event the capture policy keeps nothing of (``none``) but what it counts: a request
    (``kind`` 1) and its tokens, or a failed request (``kind`` 2). No message."""
    return mes_table(
        name,
        metadata,
        Column("event_id", exact_string(64, ids), primary_key=True),
        Column("kind", SmallInteger, nullable=False),
        Column("user_id", Integer, nullable=False),
        Column("conversation_id", exact_string(ID_LEN, ids), nullable=False),
        Column("model_name", exact_string(ID_LEN, ids), nullable=False, default=""),
        Column("created_at_ms", BigInteger, nullable=False),
        Column("prompt_tokens", Integer, nullable=False, default=0),
        Column("completion_tokens", Integer, nullable=False, default=0),
        Column("total_tokens", Integer, nullable=False, default=0),
        Index(f"ix_{name}_conv", "conversation_id", "user_id"),
    )


def conversations_table(metadata: MetaData, ids: str | None = None) -> Table:
    return mes_table(
        "mes_conversations",
        metadata,
        Column("conversation_id", exact_string(ID_LEN, ids), primary_key=True),
        Column("user_id", Integer, primary_key=True, autoincrement=False),
        Column("title", String(255), nullable=False, default=""),
        Column("first_at_ms", BigInteger, nullable=False),
        Column("last_at_ms", BigInteger, nullable=False),
        Column("first_model", exact_string(ID_LEN, ids), nullable=False, default=""),
        Column("last_model", exact_string(ID_LEN, ids), nullable=False, default=""),
        Column("message_count", Integer, nullable=False, default=0),
        Column("event_count", Integer, nullable=False, default=0),
        Column("error_count", Integer, nullable=False, default=0),
        Column("prompt_tokens", BigInteger, nullable=False, default=0),
        Column("completion_tokens", BigInteger, nullable=False, default=0),
        Column("total_tokens", BigInteger, nullable=False, default=0),
        Column("models", Text, nullable=False, default="{}"),  # JSON {model: messages}
        Column("days", Text, nullable=False, default=""),  # "20260115,20260116": the tables it spans
        Column("created_at", BigInteger, nullable=False),
        Column("updated_at", BigInteger, nullable=False),
        # The transcript's counters and tail (see storage.rollup.ConversationState).
        Column("last_ordinal", Integer, nullable=False, default=0, server_default="0"),
        Column("max_position", BigInteger, nullable=False, default=0, server_default="0"),
        Column("tail_digest", String(32), nullable=False, default="", server_default=""),
        Column("tail_len", Integer, nullable=False, default=0, server_default="0"),
        Column("tail_context", LongText),
        # Listing a user's conversations newest first, and seeking past a cursor.
        Index("ix_mes_conversations_user_last", "user_id", "last_at_ms", "conversation_id"),
    )


# The counters of a mes_daily_stats row, in column order.
STAT_COUNTERS = (
    "messages",
    "conversations",
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
)


def daily_stats_table(metadata: MetaData, ids: str | None = None) -> Table:
    return mes_table(
        "mes_daily_stats",
        metadata,
        Column("user_id", Integer, primary_key=True, autoincrement=False),
        Column("day", Integer, primary_key=True, autoincrement=False),  # 20260115, in TZ
        Column("model_name", exact_string(ID_LEN, ids), primary_key=True),
        Column("messages", BigInteger, nullable=False, default=0),
        Column("conversations", BigInteger, nullable=False, default=0),
        Column("requests", BigInteger, nullable=False, default=0),
        Column("errors", BigInteger, nullable=False, default=0),
        Column("prompt_tokens", BigInteger, nullable=False, default=0),
        Column("completion_tokens", BigInteger, nullable=False, default=0),
        Column("total_tokens", BigInteger, nullable=False, default=0),
    )


def dead_letters_table(metadata: MetaData, ids: str | None = None) -> Table:
    return mes_table(
        "mes_dead_letters",
        metadata,
        Column("id", AutoId, primary_key=True, autoincrement=True),
        Column("created_at", BigInteger, nullable=False),
        # blake2b of the payload: the same bad event dead-lettered twice (a retried job, a
        # re-sent spool) is kept once. Replay deletes the row, so a new failure is recorded anew.
        Column("fingerprint", String(32), nullable=False, unique=True),
        Column("event_id", exact_string(64, ids)),
        Column("batch_id", String(64)),
        Column("source", String(32), nullable=False, default="worker"),
        Column("reason", Text, nullable=False),
        Column("payload", LongBlob, nullable=False),  # raw bytes: whatever arrived, even invalid UTF-8
        Column("replayed_at", BigInteger),
        Index("ix_mes_dead_letters_created", "created_at"),
    )


def content_expired_table(metadata: MetaData) -> Table:
    """The history tables whose content ``MES_CONTENT_RETENTION_DAYS`` has erased, and how far
    (``storage.expiry``): a later pass reads only the rows added since (a late event)."""
    return mes_table(
        "mes_content_expired",
        metadata,
        Column("table_name", String(ID_LEN), primary_key=True),
        Column("last_id", BigInteger, nullable=False, default=0),  # rows up to this id are erased
        Column("rows", BigInteger, nullable=False, default=0),
        Column("expired_at", BigInteger, nullable=False),
    )


def audit_table(metadata: MetaData, ids: str | None = None) -> Table:
    """Each read or deletion of one user's history by someone else (``storage.audit``):
    who (``actor``: ``user:7``, ``operator``, ``cli``), what, when and from where. Never
    content; kept when the user is erased (what was done to their history stays known)."""
    return mes_table(
        "mes_audit",
        metadata,
        Column("id", AutoId, primary_key=True, autoincrement=True),
        Column("at_ms", BigInteger, nullable=False),
        Column("actor", String(64), nullable=False),
        Column("actor_user_id", Integer),
        Column("action", String(32), nullable=False),  # read, delete, erase
        Column("target_user_id", Integer, nullable=False),
        # conversations, conversation:<id>, errors, stats, user
        Column("resource", exact_string(ID_LEN, ids), nullable=False),
        Column("client", String(64)),  # the caller's address; "cli" from the shell
        Column("detail", Text),  # short JSON: {"rows": 12}; never content
        Index("ix_mes_audit_target", "target_user_id", "at_ms"),
        Index("ix_mes_audit_at", "at_ms"),
    )


def erasures_table(metadata: MetaData) -> Table:
    """The users ``mes erase`` erased (``storage.erase``): a writer stores nothing of an event
    of ``user_id`` that happened before ``before_ms``, whenever it arrives (the queue, a
    spool, a replayed dead letter). ``report``: what the last run removed (JSON)."""
    return mes_table(
        "mes_erasures",
        metadata,
        Column("user_id", Integer, primary_key=True, autoincrement=False),
        Column("before_ms", BigInteger, nullable=False),
        Column("started_at", BigInteger, nullable=False),
        Column("finished_at", BigInteger),  # NULL: begun, not finished (run it again to resume)
        Column("report", Text),
    )


def write_gate_table(metadata: MetaData) -> Table:
    """One row (``id`` 1): ``erasures`` counts the erasures begun. Every batch's transaction
    reads it under a shared lock first; an erasure's update waits for the batches under
    way and holds back new ones until its marker is committed (``storage.erase``)."""
    return mes_table(
        "mes_write_gate",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("erasures", BigInteger, nullable=False, default=0),
    )


class DayTables:
    """The three tables of one day (or the plain ones when partitioning is off)."""

    __slots__ = ("chat", "day", "error", "ledger", "suffix", "uncaptured")

    def __init__(self, day: dt.date | None, metadata: MetaData, ids: str | None = None) -> None:
        self.day = day
        self.suffix = "" if day is None else "_" + day_suffix(day)
        self.chat = chat_table(CHAT_BASE + self.suffix, metadata, ids)
        self.error = error_table(ERROR_BASE + self.suffix, metadata, ids)
        self.ledger = ledger_table(LEDGER_BASE + self.suffix, metadata, ids)
        self.uncaptured = uncaptured_table(UNCAPTURED_BASE + self.suffix, metadata, ids)

    def chat_error_ledger(self) -> tuple[Table, Table, Table]:
        """The tables every day has (``uncaptured`` is made on demand)."""
        return (self.chat, self.error, self.ledger)

    def every(self) -> tuple[Table, Table, Table, Table]:
        return (self.chat, self.error, self.ledger, self.uncaptured)
