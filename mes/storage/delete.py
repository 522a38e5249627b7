"""Deleting a conversation so that the counters still add up.

In one transaction: lock the conversation's index row (so a batch writing to it waits),
recount what its rows contributed to each (day, model) rollup, subtract exactly that,
delete its rows from the history and error tables of every day it spans, then its index
row. The event ledger is kept: replaying an old job cannot bring the conversation back.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, delete, select, update

from mes.days import day_int
from mes.storage.backends import backend_for

if TYPE_CHECKING:
    from mes.storage import Storage

__all__ = ["delete_conversation"]


def delete_conversation(storage: Storage, user_id: int, conversation_id: str) -> bool:
    """Delete a conversation from the history and error tables of every day it spans,
    the index and the rollups, in one transaction. False if ``user_id`` has no such
    conversation (another user's looks exactly like none). Repeating it is harmless."""
    catalog, calendar = storage.catalog, storage.calendar
    conv_t, stats_t = catalog.conversations, catalog.daily_stats
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
        deltas: dict[tuple[int, str], dict[str, Any]] = defaultdict(
            lambda: {"messages": 0, "requests": set(), "errors": set(), "p": 0, "c": 0, "t": 0}
        )
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
                d = deltas[(day_int(calendar.day_of(ms)), model)]
                d["messages"] += 1
                d["requests"].add(eid)
                d["p"] += p
                d["c"] += comp
                d["t"] += t
            conn.execute(delete(table).where(*mine))
        for table in catalog.history_tables(days, "error"):
            c = table.c
            mine = (c.conversation_id == conversation_id, c.user_id == user_id)
            for model, ms, eid in conn.execute(
                select(c.model_name, c.created_at_ms, c.event_id).where(*mine)
            ):
                deltas[(day_int(calendar.day_of(ms)), model)]["errors"].add(eid)
            conn.execute(delete(table).where(*mine))
        first_key = (day_int(calendar.day_of(conv.first_at_ms)), conv.first_model)
        for key in sorted(set(deltas) | {first_key}):
            d = deltas[key]
            s = stats_t.c
            conn.execute(
                update(stats_t)
                .where(s.user_id == user_id, s.day == key[0], s.model_name == key[1])
                .values(
                    messages=s.messages - d["messages"],
                    requests=s.requests - len(d["requests"]),
                    errors=s.errors - len(d["errors"]),
                    conversations=s.conversations - (1 if key == first_key else 0),
                    prompt_tokens=s.prompt_tokens - d["p"],
                    completion_tokens=s.completion_tokens - d["c"],
                    total_tokens=s.total_tokens - d["t"],
                )
            )
        s = stats_t.c
        empty = and_(
            *(s[n] == 0 for n in ("messages", "conversations", "requests", "errors", "total_tokens"))
        )
        conn.execute(delete(stats_t).where(s.user_id == user_id, empty))
        conn.execute(delete(conv_t).where(*lock))
    return True
