"""Deleting a conversation so that the counters still add up.

In one transaction: lock the conversation's index row (so a batch writing to it waits),
recount what its rows contributed to each (day, model) rollup, subtract exactly that,
delete its rows from the history and error tables of every day it spans, then its index
row. The event ledger is kept: replaying an old job cannot bring the conversation back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Table, delete, select

from mes.days import day_int
from mes.storage.backends import backend_for
from mes.storage.rollup import Tally, apply_rollup
from mes.storage.rows import KIND_CHAT

if TYPE_CHECKING:
    from mes.storage import Storage

__all__ = ["KINDS", "delete_conversation", "delete_counted"]

KINDS = ("chat", "error", "uncaptured")  # the history tables that count toward the rollups


def delete_conversation(storage: Storage, user_id: int, conversation_id: str) -> bool:
    """Delete a conversation from the history and error tables of every day it spans,
    the index and the rollups, in one transaction. False if ``user_id`` has no such
    conversation (another user's looks exactly like none). Repeating it is harmless."""
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
            return False
        days = [int(d) for d in conv.days.split(",") if d]
        gone = Tally(calendar)  # what the rows contributed
        gone.rollup.conversation(user_id, day_int(calendar.day_of(conv.first_at_ms)), conv.first_model)
        for kind in KINDS:
            for table in catalog.history_tables(days, kind):
                c = table.c
                delete_counted(
                    conn, table, kind, gone, (c.conversation_id == conversation_id, c.user_id == user_id)
                )
        apply_rollup(conn, catalog.daily_stats, gone.rollup.negated())
        conn.execute(delete(conv_t).where(*lock))
    return True


def delete_counted(conn: Connection, table: Table, kind: str, gone: Tally, where: Sequence[Any]) -> int:
    """Delete the rows of ``table`` (a history table of ``kind``: chat, error or uncaptured)
    that ``where`` picks, adding what they counted to ``gone``; returns how many. The user
    is each row's own."""
    c = table.c
    n = 0
    if kind == "chat":
        cols = (c.user_id, c.model_name, c.created_at_ms, c.event_id, c.prompt_tokens, c.completion_tokens,
                c.total_tokens)  # fmt: skip
        for uid, model, ms, eid, p, comp, t in conn.execute(select(*cols).where(*where)):
            gone.chat(uid, model, ms, eid, (p, comp, t))
            n += 1
    elif kind == "error":
        for uid, model, ms, eid in conn.execute(
            select(c.user_id, c.model_name, c.created_at_ms, c.event_id).where(*where)
        ):
            gone.error(uid, model, ms, eid)
            n += 1
    else:  # events kept as counts only (MES_CAPTURE=none)
        cols = (c.user_id, c.model_name, c.created_at_ms, c.kind, c.prompt_tokens, c.completion_tokens,
                c.total_tokens)  # fmt: skip
        for uid, model, ms, event_kind, p, comp, t in conn.execute(select(*cols).where(*where)):
            gone.counted(uid, model, ms, event_kind == KIND_CHAT, (p, comp, t))
            n += 1
    if n:
        conn.execute(delete(table).where(*where))
    return n
