"""Deleting a conversation so that the counters still add up.

In one transaction: lock the conversation's index row (so a batch writing to it waits),
recount what its rows contributed to each (day, model) rollup, subtract exactly that,
delete its rows from the history and error tables of every day it spans, then its index
row. The event ledger is kept: replaying an old job cannot bring the conversation back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import delete, select

from mes.days import day_int
from mes.storage.backends import backend_for
from mes.storage.rollup import Tally, apply_rollup
from mes.storage.rows import KIND_CHAT

if TYPE_CHECKING:
    from mes.storage import Storage

__all__ = ["delete_conversation", "delete_conversation_rows"]


def delete_conversation(storage: Storage, user_id: int, conversation_id: str) -> bool:
    """Delete a conversation from the history and error tables of every day it spans,
    the index and the rollups, in one transaction. False if ``user_id`` has no such
    conversation (another user's looks exactly like none). Repeating it is harmless."""
    return delete_conversation_rows(storage, user_id, conversation_id) is not None


def delete_conversation_rows(
    storage: Storage, user_id: int, conversation_id: str
) -> tuple[int, int, int] | None:
    """``delete_conversation``, returning the rows it deleted: chat, error, and events kept
    as counts only (``mes_uncaptured``); None for no such conversation."""
    catalog, calendar = storage.catalog, storage.calendar
    conv_t = catalog.conversations
    lock = conv_t.c.conversation_id == conversation_id, conv_t.c.user_id == user_id
    engine = storage.engine.execution_options(mes_write=True)  # SQLite: BEGIN IMMEDIATE
    with engine.begin() as conn:
        query = select(conv_t.c.days, conv_t.c.first_at_ms, conv_t.c.first_model).where(*lock)
        if backend_for(storage.engine).locks_rows:
            query = query.with_for_update()
        conv = conn.execute(query).first()
        if conv is None:
            return None
        days = [int(d) for d in conv.days.split(",") if d]
        gone = Tally(calendar)  # what the rows contributed
        gone.rollup.conversation(user_id, day_int(calendar.day_of(conv.first_at_ms)), conv.first_model)
        chat_rows = error_rows = counted = 0
        for table in catalog.history_tables(days, "chat"):
            c = table.c
            mine = (c.conversation_id == conversation_id, c.user_id == user_id)
            cols = (
                c.model_name,
                c.created_at_ms,
                c.event_id,
                c.prompt_tokens,
                c.completion_tokens,
                c.total_tokens,
            )
            for model, ms, eid, p, comp, t in conn.execute(select(*cols).where(*mine)):
                gone.chat(user_id, model, ms, eid, (p, comp, t))
                chat_rows += 1
            conn.execute(delete(table).where(*mine))
        for table in catalog.history_tables(days, "error"):
            c = table.c
            mine = (c.conversation_id == conversation_id, c.user_id == user_id)
            for model, ms, eid in conn.execute(
                select(c.model_name, c.created_at_ms, c.event_id).where(*mine)
            ):
                gone.error(user_id, model, ms, eid)
                error_rows += 1
            conn.execute(delete(table).where(*mine))
        for table in catalog.history_tables(days, "uncaptured"):  # events kept as counts only
            c = table.c
            mine = (c.conversation_id == conversation_id, c.user_id == user_id)
            for row in conn.execute(select(table).where(*mine)):
                tokens = (row.prompt_tokens, row.completion_tokens, row.total_tokens)
                gone.counted(
                    user_id, row.model_name, row.created_at_ms, row.kind == KIND_CHAT, row.messages, tokens
                )
                counted += 1
            conn.execute(delete(table).where(*mine))
        apply_rollup(conn, catalog.daily_stats, gone.rollup.negated())
        conn.execute(delete(conv_t).where(*lock))
    return chat_rows, error_rows, counted
