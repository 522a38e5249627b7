"""Reading history back: the seed's four operations, plus error history.

Nothing here scans the daily tables to list or count:

* listing reads ``mes_conversations`` (index ``user_id, last_at_ms, conversation_id``);
* stats read ``mes_daily_stats`` (a user's rows: days x models);
* a conversation is read from the days it spans only (``mes_conversations.days``), in
  transcript order (``storage.transcript``), the last ``limit`` rows of each day;
* a user's errors come from the days ``mes_daily_stats`` says had errors.

So a year of daily tables reads as fast as a week.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import Table, and_, desc, func, or_, select

from mes.days import date_of_int, day_int
from mes.errors import AmbiguousConversation, BadCursor
from mes.reader.messages import error_record, message_from_row
from mes.storage import Storage
from mes.storage.tables import STAT_COUNTERS
from mes.storage.transcript import decode_context

__all__ = ["AmbiguousConversation", "BadCursor", "HistoryReader", "Page"]

_MESSAGE_COLS = (
    "message_id", "role", "content", "other", "created_at", "created_at_ms", "seq", "id", "model_name",
    "is_response", "finish_reason", "usage", "event_id", "ordinal", "position", "context",
)  # fmt: skip
_ERROR_COLS = (
    "event_id", "conversation_id", "user_id", "model_name", "error_code", "error_message", "created_at",
    "created_at_ms", "seq", "role", "content", "other",
)  # fmt: skip


@dataclasses.dataclass
class Page:
    """One page of a list, with OpenAI-style cursor fields."""

    items: list[dict[str, Any]]
    has_more: bool

    @property
    def first_id(self) -> str | None:
        return self.items[0]["id"] if self.items else None

    @property
    def last_id(self) -> str | None:
        return self.items[-1]["id"] if self.items else None


def _conversation(row: Any) -> dict[str, Any]:
    return {
        "id": row.conversation_id,
        "object": "conversation",
        "conversation_id": row.conversation_id,
        "user_id": row.user_id,
        "title": row.title,
        "model": row.last_model,
        "models": {k: v for k, v in orjson.loads(row.models or "{}").items() if v},
        "message_count": row.message_count,
        "request_count": row.event_count,
        "error_count": row.error_count,
        "prompt_tokens": int(row.prompt_tokens),
        "completion_tokens": int(row.completion_tokens),
        "total_tokens": int(row.total_tokens),
        "created_at": row.first_at_ms // 1000,
        "updated_at": row.last_at_ms // 1000,
        "first_at_ms": row.first_at_ms,
        "last_at_ms": row.last_at_ms,
    }


def _like_key(model: str) -> str:
    """A LIKE pattern matching ``"model":`` in the models JSON, wildcards escaped."""
    key = orjson.dumps(model).decode() + ":"
    return "%" + key.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class HistoryReader:
    """Reads one MES database. Thread-safe; share one per process."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.engine = storage.engine
        self.catalog = storage.catalog
        self.calendar = storage.calendar
        self.catalog.refresh()
        if self.catalog.daily:  # build the days' table objects now, not on a reader's first visit
            for day in self.catalog.partition_days():
                self.catalog.day_tables(day)

    # -- conversations -----------------------------------------------------------------
    def get_user_conversations(
        self,
        user_id: int,
        limit: int = 20,
        offset: int = 0,
        *,
        after: str | None = None,
        order: str = "desc",
        model: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> Page:
        """A user's conversations by last activity (``desc``: newest first).

        Raises:
            BadCursor: ``after`` is not one of this user's conversations.
        """
        t = self.catalog.conversations
        newest_first = order != "asc"
        q = select(t).where(t.c.user_id == user_id)
        if since_ms is not None:
            q = q.where(t.c.last_at_ms >= since_ms)
        if until_ms is not None:
            q = q.where(t.c.last_at_ms < until_ms)
        if model:
            q = q.where(t.c.models.like(_like_key(model), escape="\\"))
        with self.engine.connect() as conn:
            if after is not None:
                at = conn.execute(
                    select(t.c.last_at_ms).where(t.c.user_id == user_id, t.c.conversation_id == after)
                ).scalar()
                if at is None:
                    raise BadCursor(f"after={after!r} is not one of your conversations")
                if newest_first:
                    q = q.where(
                        or_(t.c.last_at_ms < at, and_(t.c.last_at_ms == at, t.c.conversation_id < after))
                    )
                else:
                    q = q.where(
                        or_(t.c.last_at_ms > at, and_(t.c.last_at_ms == at, t.c.conversation_id > after))
                    )
            keys = (
                (desc(t.c.last_at_ms), desc(t.c.conversation_id))
                if newest_first
                else (t.c.last_at_ms, t.c.conversation_id)
            )
            rows = conn.execute(q.order_by(*keys).offset(offset).limit(limit + 1)).fetchall()
        return Page([_conversation(r) for r in rows[:limit]], has_more=len(rows) > limit)

    def find_conversations(self, conversation_id: str, user_id: int | None, conn: Any = None) -> list[Any]:
        """Index rows for ``conversation_id`` (of ``user_id``, or of anyone when None)."""
        t = self.catalog.conversations
        q = select(t).where(t.c.conversation_id == conversation_id)
        if user_id is not None:
            q = q.where(t.c.user_id == user_id)
        if conn is not None:
            return list(conn.execute(q).fetchall())
        with self.engine.connect() as own:
            return list(own.execute(q).fetchall())

    def _one(self, conversation_id: str, user_id: int | None, conn: Any = None) -> Any | None:
        rows = self.find_conversations(conversation_id, user_id, conn)
        if len(rows) > 1:
            raise AmbiguousConversation(
                f"{len(rows)} users have a conversation {conversation_id!r}: pass user_id to choose"
            )
        return rows[0] if rows else None

    def get_conversation(self, conversation_id: str, user_id: int | None = None) -> dict[str, Any] | None:
        row = self._one(conversation_id, user_id)
        return _conversation(row) if row is not None else None

    def get_conversation_messages(
        self, conversation_id: str, limit: int = 50, *, user_id: int | None = None
    ) -> list[dict[str, Any]] | None:
        """The latest ``limit`` messages of a conversation, oldest first; None if it is not
        (one of ``user_id``'s). Reads only the days the conversation spans."""
        conv = self._one(conversation_id, user_id)
        return None if conv is None else self._messages(conv, limit)

    def read_conversation(
        self, conversation_id: str, limit: int = 50, *, user_id: int | None = None
    ) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """The conversation's index entry and its latest ``limit`` messages, with one
        lookup of the index; None if it is not (one of ``user_id``'s)."""
        with self.engine.connect() as conn:  # one connection (one pool check-out) per read
            conv = self._one(conversation_id, user_id, conn)
            return None if conv is None else (_conversation(conv), self._messages(conv, limit, conn))

    def _messages(self, conv: Any, limit: int, conn: Any = None) -> list[dict[str, Any]]:
        if conn is None:
            with self.engine.connect() as own:
                return self._messages(conv, limit, own)
        conversation_id = conv.conversation_id
        days = [int(d) for d in conv.days.split(",") if d]
        found: list[dict[str, Any]] = []
        for table in self.catalog.history_tables(days, "chat"):
            c = table.c
            q = (
                select(*(c[name] for name in _MESSAGE_COLS))
                .where(c.conversation_id == conversation_id, c.user_id == conv.user_id)
                .order_by(desc(c.position), desc(c.ordinal))
                .limit(limit)
            )
            # A message inserted before older ones (a system prompt added later) lives in a
            # later day's table: every day of the conversation is read, ``limit`` rows each.
            found.extend(dict(r._mapping) for r in conn.execute(q))
        found.sort(key=lambda r: (r["position"] or 0, r["ordinal"] or 0))
        return [message_from_row(r) for r in found[-limit:]] if limit > 0 else []

    def get_request_context(
        self, conversation_id: str, request_id: str, *, user_id: int | None = None
    ) -> list[dict[str, Any]] | None:
        """The exact messages one request sent, in its order, then its answer(s): ``request_id``
        is the ``event_id`` of the request (on each answer of a conversation's messages).
        None if the conversation is not (``user_id``'s) or holds no such request."""
        with self.engine.connect() as conn:
            conv = self._one(conversation_id, user_id, conn)
            if conv is None:
                return None
            days = [int(d) for d in conv.days.split(",") if d]
            tables = self.catalog.history_tables(days, "chat")
            answers: list[dict[str, Any]] = []
            for table in tables:
                c = table.c
                q = select(*(c[name] for name in _MESSAGE_COLS)).where(
                    c.conversation_id == conversation_id, c.user_id == conv.user_id,
                    c.event_id == request_id, c.is_response.is_(True),
                )  # fmt: skip
                answers.extend(dict(r._mapping) for r in conn.execute(q))
            if not answers:
                return None
            answers.sort(key=lambda r: r["seq"])
            wanted = decode_context(answers[0]["context"])
            by_ordinal: dict[int, dict[str, Any]] = {}
            for table in tables:
                c = table.c
                for i in range(0, len(wanted), 1000):
                    q = select(*(c[name] for name in _MESSAGE_COLS)).where(
                        c.conversation_id == conversation_id, c.user_id == conv.user_id,
                        c.ordinal.in_(sorted(set(wanted[i : i + 1000]))),
                    )  # fmt: skip
                    by_ordinal.update((r.ordinal, dict(r._mapping)) for r in conn.execute(q))
        rows = [by_ordinal[o] for o in wanted if o in by_ordinal]  # a day dropped by retention: gone
        return [message_from_row(r) for r in [*rows, *answers]]

    # -- stats -------------------------------------------------------------------------
    def get_conversation_stats(
        self, user_id: int, *, since: dt.date | None = None, until: dt.date | None = None
    ) -> dict[str, Any]:
        """Totals from the daily rollups (``since``/``until``: inclusive days in ``TZ``).

        Two grouped queries (by model, by day) in one check-out: the database adds up, and
        few narrow rows come back however many days the user has."""
        s = self.catalog.daily_stats
        where = [s.c.user_id == user_id]
        if since is not None:
            where.append(s.c.day >= day_int(since))
        if until is not None:
            where.append(s.c.day <= day_int(until))
        by_model = (
            select(s.c.model_name, *(func.sum(s.c[n]) for n in STAT_COUNTERS))
            .where(*where)
            .group_by(s.c.model_name)
        )
        by_day = select(s.c.day, func.sum(s.c.messages), func.sum(s.c.errors)).where(*where).group_by(s.c.day)
        totals = dict.fromkeys(STAT_COUNTERS, 0)
        models: dict[str, int] = {}
        tokens_by_model: dict[str, int] = {}
        daily: dict[str, int] = {}
        daily_errors: dict[str, int] = {}
        messages_at, tokens_at = STAT_COUNTERS.index("messages") + 1, STAT_COUNTERS.index("total_tokens") + 1
        with self.engine.connect() as conn:
            for row in conn.execute(by_model):
                for i, name in enumerate(STAT_COUNTERS, start=1):
                    totals[name] += int(row[i] or 0)
                if row[messages_at]:
                    models[row[0]] = int(row[messages_at])
                if row[tokens_at]:
                    tokens_by_model[row[0]] = int(row[tokens_at])
            for day, messages, errors in conn.execute(by_day):
                iso = date_of_int(day).isoformat()
                if messages:
                    daily[iso] = int(messages)
                if errors:
                    daily_errors[iso] = int(errors)
        return {
            "total_conversations": totals["conversations"],
            "total_messages": totals["messages"],
            "total_tokens": totals["total_tokens"],
            "models_used": dict(sorted(models.items())),
            "daily_message_count": dict(sorted(daily.items())),
            "total_requests": totals["requests"],
            "total_errors": totals["errors"],
            "total_prompt_tokens": totals["prompt_tokens"],
            "total_completion_tokens": totals["completion_tokens"],
            "tokens_by_model": dict(sorted(tokens_by_model.items())),
            "daily_error_count": dict(sorted(daily_errors.items())),
        }

    # -- errors ------------------------------------------------------------------------
    def get_user_errors(
        self,
        user_id: int,
        limit: int = 20,
        offset: int = 0,
        *,
        after: str | None = None,
        model: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> Page:
        """A user's failed requests, newest first, from the days the rollups say had errors.

        Raises:
            BadCursor: ``after`` is not one of this user's failed requests.
        """
        s = self.catalog.daily_stats
        q = select(s.c.day).where(s.c.user_id == user_id, s.c.errors > 0)
        if model:
            q = q.where(s.c.model_name == model)
        if since_ms is not None:
            q = q.where(s.c.day >= day_int(self.calendar.day_of(since_ms)))
        if until_ms is not None:
            q = q.where(s.c.day <= day_int(self.calendar.day_of(until_ms)))
        with self.engine.connect() as conn:
            days = sorted({r.day for r in conn.execute(q.distinct())}, reverse=True)
        records: list[dict[str, Any]] = []
        want = offset + limit + 1
        cursor_seen = after is None
        for table in self.catalog.history_tables(days, "error"):
            rows = self._error_rows(table, user_id, model, since_ms, until_ms)
            for record in rows:
                if not cursor_seen:
                    cursor_seen = record["id"] == after
                    continue
                records.append(record)
            if cursor_seen and len(records) >= want:
                break
        if not cursor_seen:
            raise BadCursor(f"after={after!r} is not one of your failed requests")
        page = records[offset : offset + limit]
        return Page(page, has_more=len(records) > offset + limit)

    def _error_rows(
        self, table: Table, user_id: int, model: str | None, since_ms: int | None, until_ms: int | None
    ) -> list[dict[str, Any]]:
        c = table.c
        q = select(*(c[n] for n in _ERROR_COLS)).where(c.user_id == user_id)
        if model:
            q = q.where(c.model_name == model)
        if since_ms is not None:
            q = q.where(c.created_at_ms >= since_ms)
        if until_ms is not None:
            q = q.where(c.created_at_ms < until_ms)
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(q)]
        return _group_errors(rows)

    def get_conversation_errors(
        self, conversation_id: str, *, user_id: int | None = None, limit: int = 100
    ) -> list[dict[str, Any]] | None:
        """A conversation's failed requests, newest first; None if it is not (``user_id``'s)."""
        conv = self._one(conversation_id, user_id)
        if conv is None:
            return None
        days = [int(d) for d in conv.days.split(",") if d]
        rows: list[dict[str, Any]] = []
        with self.engine.connect() as conn:
            for table in self.catalog.history_tables(days, "error"):
                c = table.c
                q = select(*(c[n] for n in _ERROR_COLS)).where(
                    c.conversation_id == conversation_id, c.user_id == conv.user_id
                )
                rows.extend(dict(r._mapping) for r in conn.execute(q))
        return _group_errors(rows)[:limit]


def _group_errors(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    by_event: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_event.setdefault(row["event_id"], []).append(row)
    records = [error_record(eid, group) for eid, group in by_event.items()]
    records.sort(key=lambda r: (r["created_at_ms"], r["id"]), reverse=True)
    return records
