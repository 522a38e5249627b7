"""Recount everything from the history rows and compare it with the index and rollups.

The writer keeps ``mes_conversations`` and ``mes_daily_stats`` in the same transaction as
the rows; this module is the independent check that they agree: ``mes verify`` runs it,
and so do the tests after every scenario. It scans every history table, so it costs
what a full table scan costs: an operator tool, not a read path.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

from sqlalchemy import text

from mes.days import day_int
from mes.storage.catalog import Catalog
from mes.storage.rows import KIND_CHAT
from mes.storage.tables import CHAT_BASE, ERROR_BASE, STAT_COUNTERS, UNCAPTURED_BASE

__all__ = ["Recount", "compare", "read_index", "recount"]


@dataclasses.dataclass
class Recount:
    """Counters derived from rows: ``stats[(user, day, model)]`` and ``conversations[(cid, user)]``."""

    stats: dict[tuple[int, int, str], dict[str, int]]
    conversations: dict[tuple[str, int], dict[str, Any]]


def _history_tables(catalog: Catalog) -> list[tuple[str, str]]:
    names = catalog.refresh()
    found = []
    for base, kind in ((CHAT_BASE, "chat"), (ERROR_BASE, "error")):
        for name in sorted(names):
            if name == base or (name.startswith(base + "_") and name[len(base) + 1 :][:4].isdigit()):
                found.append((name, kind))
    return found


def _uncaptured_tables(catalog: Catalog) -> list[str]:
    names = catalog.refresh()
    base = UNCAPTURED_BASE
    return sorted(
        n for n in names if n == base or (n.startswith(base + "_") and n[len(base) + 1 :][:4].isdigit())
    )


def _seen(convs: dict[tuple[str, int], dict[str, Any]], key: tuple[str, int], day: int, ms: int,
          model: str) -> dict[str, Any]:  # fmt: skip
    """The conversation's recount so far, with a row at ``ms`` of ``model`` on ``day`` seen."""
    conv = convs.get(key)
    if conv is None:
        conv = convs[key] = {
            "first": (ms, model), "last": (ms, model), "message_count": 0, "models": defaultdict(int),
            "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "days": set(),
        }  # fmt: skip
    conv["first"] = min(conv["first"], (ms, model))
    conv["last"] = max(conv["last"], (ms, model))
    conv["days"].add(day)
    return conv


def recount(catalog: Catalog, calendar: Any) -> Recount:
    """Recount from every history table (whatever the partitioning setting says)."""
    q = catalog.engine.dialect.identifier_preparer.quote
    stats: dict[tuple[int, int, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    convs: dict[tuple[str, int], dict[str, Any]] = {}
    chat_events: dict[tuple[str, int], set[str]] = defaultdict(set)
    error_events: dict[tuple[str, int], set[str]] = defaultdict(set)
    stat_events: dict[tuple[int, int, str], set[str]] = defaultdict(set)
    stat_errors: dict[tuple[int, int, str], set[str]] = defaultdict(set)
    with catalog.engine.connect() as conn:
        for table, kind in _history_tables(catalog):
            tokens = "prompt_tokens, completion_tokens, total_tokens"
            rows = conn.execute(
                text(
                    f"SELECT conversation_id, user_id, model_name, event_id, created_at_ms, {tokens} FROM {q(table)}"
                )
            )
            for cid, uid, model, eid, ms, p, c, t in rows:
                key, day = (cid, uid), day_int(calendar.day_of(ms))
                conv = _seen(convs, key, day, ms, model)
                if kind == "chat":
                    s = stats[(uid, day, model)]
                    s["messages"] += 1
                    s["prompt_tokens"] += p
                    s["completion_tokens"] += c
                    s["total_tokens"] += t
                    stat_events[(uid, day, model)].add(eid)
                    chat_events[key].add(eid)
                    conv["message_count"] += 1
                    conv["models"][model] += 1
                    conv["prompt_tokens"] += p
                    conv["completion_tokens"] += c
                    conv["total_tokens"] += t
                else:
                    stat_errors[(uid, day, model)].add(eid)
                    error_events[key].add(eid)
        for table in _uncaptured_tables(catalog):
            cols = "conversation_id, user_id, model_name, event_id, created_at_ms, kind, prompt_tokens, "
            cols += "completion_tokens, total_tokens"
            for cid, uid, model, eid, ms, kind, p, c, t in conn.execute(
                text(f"SELECT {cols} FROM {q(table)}")
            ):
                key, day = (cid, uid), day_int(calendar.day_of(ms))
                conv = _seen(convs, key, day, ms, model)
                if kind != KIND_CHAT:
                    stat_errors[(uid, day, model)].add(eid)
                    error_events[key].add(eid)
                    continue
                s = stats[(uid, day, model)]  # a request and its tokens: no message
                s["prompt_tokens"] += p
                s["completion_tokens"] += c
                s["total_tokens"] += t
                stat_events[(uid, day, model)].add(eid)
                chat_events[key].add(eid)
                conv["prompt_tokens"] += p
                conv["completion_tokens"] += c
                conv["total_tokens"] += t
    for skey, ids in stat_events.items():
        stats[skey]["requests"] = len(ids)
    for skey, ids in stat_errors.items():
        stats[skey]["errors"] = len(ids)
    for key, conv in convs.items():
        conv["event_count"] = len(chat_events.get(key, ()))
        conv["error_count"] = len(error_events.get(key, ()))
        first_ms, first_model = conv.pop("first")
        conv["first_at_ms"], conv["first_model"] = first_ms, first_model
        conv["last_at_ms"], conv["last_model"] = conv.pop("last")
        conv["models"] = dict(conv["models"])
        stats[(key[1], day_int(calendar.day_of(first_ms)), first_model)]["conversations"] += 1
    clean = {k: {n: v for n, v in d.items() if v} for k, d in stats.items()}
    return Recount(stats={k: v for k, v in clean.items() if v}, conversations=convs)


def read_index(catalog: Catalog) -> Recount:
    """The same shape, read from ``mes_daily_stats`` and ``mes_conversations``."""
    import orjson

    stats: dict[tuple[int, int, str], dict[str, int]] = {}
    convs: dict[tuple[str, int], dict[str, Any]] = {}
    names = STAT_COUNTERS
    with catalog.engine.connect() as conn:
        for row in conn.execute(
            text("SELECT user_id, day, model_name, " + ", ".join(names) + " FROM mes_daily_stats")
        ):
            counts = {n: int(v) for n, v in zip(names, row[3:], strict=True) if v}
            if counts:
                stats[(row[0], row[1], row[2])] = counts
        cols = (
            "conversation_id, user_id, first_at_ms, last_at_ms, first_model, last_model, message_count, "
            "event_count, error_count, prompt_tokens, completion_tokens, total_tokens, models, days"
        )
        for r in conn.execute(text(f"SELECT {cols} FROM mes_conversations")).mappings():
            convs[(r["conversation_id"], r["user_id"])] = {
                "first_at_ms": r["first_at_ms"], "last_at_ms": r["last_at_ms"], "first_model": r["first_model"],
                "last_model": r["last_model"], "message_count": r["message_count"], "event_count": r["event_count"],
                "error_count": r["error_count"], "prompt_tokens": int(r["prompt_tokens"]),
                "completion_tokens": int(r["completion_tokens"]), "total_tokens": int(r["total_tokens"]),
                "models": {k: v for k, v in orjson.loads(r["models"]).items() if v},
                "days": {int(d) for d in r["days"].split(",") if d},
            }  # fmt: skip
    return Recount(stats=stats, conversations=convs)


def compare(expected: Recount, actual: Recount) -> list[str]:
    """Differences between a recount and the index, as readable lines (empty: they agree)."""
    problems = []
    for stat_key in sorted(set(expected.stats) | set(actual.stats)):
        a, b = expected.stats.get(stat_key, {}), actual.stats.get(stat_key, {})
        if a != b:
            problems.append(f"mes_daily_stats{stat_key}: recount {a} != stored {b}")
    for conv_key in sorted(set(expected.conversations) | set(actual.conversations)):
        ca, cb = expected.conversations.get(conv_key), actual.conversations.get(conv_key)
        if ca is None or cb is None:
            problems.append(f"mes_conversations{conv_key}: recount {ca} != stored {cb}")
            continue
        for field in sorted(set(ca) | set(cb)):
            if field == "days" and ca["days"] <= cb["days"]:
                continue  # a day can empty when an answer takes over its history copy: listed, harmless
            if ca.get(field) != cb.get(field):
                problems.append(
                    f"mes_conversations{conv_key}.{field}: recount {ca.get(field)!r} != stored {cb.get(field)!r}"
                )
    return problems
