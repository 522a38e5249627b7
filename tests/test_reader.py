"""The read module on every backend: listing, messages, stats, errors and delete."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Any

import pytest
from sqlalchemy import event

from mes.reader import AmbiguousConversation, BadCursor, HistoryReader
from mes.storage import Storage
from mes.storage.delete import delete_conversation

from .factories import BASE_MS, assert_consistent, chat, conversation, error

DAY_MS = 86_400_000


def reader_on(storage: Storage) -> HistoryReader:
    return HistoryReader(storage)


def statements(storage: Storage) -> list[str]:
    """Every SQL statement the engine runs from now on (to see which tables a read touches)."""
    seen: list[str] = []
    event.listen(storage.engine, "before_cursor_execute", lambda c, cur, sql, *a: seen.append(sql))
    return seen


def test_listing_is_newest_first_with_offset_cursor_and_filters(backend):
    storage = backend.storage()
    events = []
    for n in range(7):
        model = "gpt-4o" if n % 2 else "claude-3-5-sonnet"
        events += conversation(f"c{n}", 2, ms=BASE_MS + n * 3_600_000, model=model)
    events += conversation("other-user", 1, user_id=2, ms=BASE_MS + 99 * 3_600_000)
    storage.writer.write(events)
    reader = reader_on(storage)

    page = reader.get_user_conversations(1, limit=3)
    assert [c["id"] for c in page.items] == ["c6", "c5", "c4"]
    assert page.has_more and page.first_id == "c6" and page.last_id == "c4"
    assert page.items[0]["message_count"] == 5 and page.items[0]["request_count"] == 2

    nxt = reader.get_user_conversations(1, limit=3, after=page.last_id)
    assert [c["id"] for c in nxt.items] == ["c3", "c2", "c1"] and nxt.has_more
    last = reader.get_user_conversations(1, limit=3, after="c1")
    assert [c["id"] for c in last.items] == ["c0"] and not last.has_more

    assert [c["id"] for c in reader.get_user_conversations(1, limit=2, offset=5).items] == ["c1", "c0"]
    asc = reader.get_user_conversations(1, limit=2, order="asc")
    assert [c["id"] for c in asc.items] == ["c0", "c1"]
    assert [c["id"] for c in reader.get_user_conversations(1, limit=2, order="asc", after="c1").items] == [
        "c2",
        "c3",
    ]

    by_model = reader.get_user_conversations(1, limit=10, model="gpt-4o")
    assert [c["id"] for c in by_model.items] == ["c5", "c3", "c1"]
    assert reader.get_user_conversations(1, limit=10, model="gpt-4%").items == []  # wildcards are literal
    window = reader.get_user_conversations(
        1, limit=10, since_ms=BASE_MS + 2 * 3_600_000, until_ms=BASE_MS + 4 * 3_600_000
    )
    assert [c["id"] for c in window.items] == ["c3", "c2"]

    with pytest.raises(BadCursor):
        reader.get_user_conversations(1, after="other-user")  # another user's id is no cursor
    assert [c["id"] for c in reader.get_user_conversations(2).items] == ["other-user"]


def test_messages_come_back_in_openai_format_oldest_first(backend):
    storage = backend.storage()
    parts = [
        {"type": "text", "text": "what is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    tool_call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q":"x"}'}}
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": parts, "name": "alice"},
        {"role": "assistant", "content": None, "tool_calls": [tool_call]},
        {"role": "tool", "content": "42", "tool_call_id": "call_1"},
    ]
    storage.writer.write([chat("conv-fmt", messages, "It is a cat.", usage=(30, 5))])
    got = reader_on(storage).get_conversation_messages("conv-fmt", 50, user_id=1)
    assert got is not None
    assert [m["role"] for m in got] == ["system", "user", "assistant", "tool", "assistant"]
    assert got[1]["content"] == parts and got[1]["name"] == "alice"  # JSON, not a string of JSON
    assert got[2]["tool_calls"] == [tool_call] and got[2]["content"] is None
    assert got[3]["tool_call_id"] == "call_1"
    answer = got[4]
    assert answer["content"] == "It is a cat." and answer["finish_reason"] == "stop"
    assert answer["usage"] == {"prompt_tokens": 30, "completion_tokens": 5, "total_tokens": 35}
    assert len({m["id"] for m in got}) == 5
    again = reader_on(storage).get_conversation_messages("conv-fmt", 50, user_id=1)
    assert [m["id"] for m in again or []] == [m["id"] for m in got]  # ids are stable


def test_messages_limit_keeps_the_latest_and_reads_only_the_days_spanned(backend):
    storage = backend.storage()
    # 30 other days of traffic, and one conversation spanning two days
    storage.writer.write([chat(f"noise-{d}", [{"role": "user", "content": "x"}], "y", ms=BASE_MS - d * DAY_MS)
                          for d in range(2, 32)])  # fmt: skip
    events = conversation("span", 4, ms=BASE_MS - 60_000, step_ms=40_000)  # crosses midnight UTC
    storage.writer.write(events)
    reader = reader_on(storage)
    seen = statements(storage)
    got = reader.get_conversation_messages("span", 3, user_id=1)
    assert [m["content"] for m in got or []] == ["answer 2", "question 3 你好 😀", "answer 3"]
    touched = {name for sql in seen for name in _history_names(sql)}
    assert touched <= {"conversation_histories_2026_01_15", "conversation_histories_2026_01_16"}, touched
    full = reader.get_conversation_messages("span", 100, user_id=1)
    assert [m["role"] for m in full or []] == ["system"] + ["user", "assistant"] * 4


def _history_names(sql: str) -> set[str]:
    import re

    return set(re.findall(r"conversation_histories_\d{4}_\d{2}_\d{2}", sql))


def test_stats_equal_a_recount_and_honour_the_date_range(backend):
    storage = backend.storage()
    storage.writer.write(
        conversation("a", 3, model="gpt-4o")
        + conversation("b", 2, model="claude", ms=BASE_MS + DAY_MS)
        + [error("a", [{"role": "user", "content": "again"}], ms=BASE_MS + 500)]
    )
    stats = reader_on(storage).get_conversation_stats(1)
    assert stats["total_conversations"] == 2
    assert stats["total_messages"] == 7 + 5
    assert stats["total_tokens"] == 5 * 30
    assert stats["models_used"] == {"claude": 5, "gpt-4o": 7}
    assert stats["daily_message_count"] == {"2026-01-15": 7, "2026-01-16": 5}
    assert stats["total_errors"] == 1 and stats["daily_error_count"] == {"2026-01-15": 1}
    assert stats["tokens_by_model"] == {"claude": 60, "gpt-4o": 90}
    import datetime as dt

    one_day = reader_on(storage).get_conversation_stats(1, since=dt.date(2026, 1, 16))
    assert one_day["total_messages"] == 5 and one_day["models_used"] == {"claude": 5}
    assert reader_on(storage).get_conversation_stats(99)["total_messages"] == 0


def test_error_history_for_a_user_and_a_conversation(backend):
    storage = backend.storage()
    storage.writer.write(
        conversation("ok", 1)
        + [
            error("ok", [{"role": "user", "content": "one"}], code=429, ms=BASE_MS + 1_000),
            error("bad", [{"role": "user", "content": [{"type": "text", "text": "two"}]}], code=500,
                  message="upstream", ms=BASE_MS + DAY_MS),
            error("theirs", [{"role": "user", "content": "x"}], user_id=2, ms=BASE_MS),
        ]
    )  # fmt: skip
    reader = reader_on(storage)
    page = reader.get_user_errors(1, limit=10)
    assert [(e["conversation_id"], e["error_code"]) for e in page.items] == [("bad", 500), ("ok", 429)]
    assert page.items[0]["messages"] == [{"role": "user", "content": [{"type": "text", "text": "two"}]}]
    assert page.items[0]["error_message"] == "upstream" and not page.has_more
    first = reader.get_user_errors(1, limit=1)
    assert first.has_more
    assert [e["conversation_id"] for e in reader.get_user_errors(1, limit=5, after=first.last_id).items] == [
        "ok"
    ]
    assert reader.get_user_errors(1, model="nope").items == []
    with pytest.raises(BadCursor):
        reader.get_user_errors(1, after="no-such-event")
    conv_errors = reader.get_conversation_errors("ok", user_id=1)
    assert [e["error_code"] for e in conv_errors or []] == [429]
    assert reader.get_conversation_errors("theirs", user_id=1) is None


def test_delete_removes_every_day_index_and_rollup_and_is_idempotent(backend):
    storage = backend.storage()
    storage.writer.write(
        conversation("gone", 3, ms=BASE_MS - 30_000, step_ms=DAY_MS // 2)  # spans two days
        + [error("gone", [{"role": "user", "content": "boom"}], ms=BASE_MS + DAY_MS)]
        + conversation("kept", 2, ms=BASE_MS)
        + conversation("gone", 1, user_id=2)  # the same id, another user
    )
    reader = reader_on(storage)
    before_other = reader.get_conversation_messages("gone", 50, user_id=2)
    assert delete_conversation(reader.storage, 2, "kept") is False  # not theirs: looks like nothing
    assert reader.get_conversation("kept", 1) is not None
    assert delete_conversation(reader.storage, 1, "gone") is True
    assert reader.get_conversation_messages("gone", 50, user_id=1) is None
    assert reader.get_conversation_errors("gone", user_id=1) is None
    assert reader.get_user_errors(1).items == []
    assert [c["id"] for c in reader.get_user_conversations(1).items] == ["kept"]
    stats = reader.get_conversation_stats(1)
    assert stats["total_conversations"] == 1 and stats["total_messages"] == 5 and stats["total_errors"] == 0
    assert delete_conversation(reader.storage, 1, "gone") is False  # repeating is harmless
    assert reader.get_conversation_messages("gone", 50, user_id=2) == before_other
    assert_consistent(storage)
    with pytest.raises(AmbiguousConversation):
        storage.writer.write(conversation("dup", 1, user_id=1) + conversation("dup", 1, user_id=3))
        reader.get_conversation_messages("dup", 10)  # an admin without user_id: which one?


def test_replaying_a_deleted_conversation_does_not_bring_it_back(backend):
    storage = backend.storage()
    events = conversation("c", 2)
    storage.writer.write(events)
    reader = reader_on(storage)
    assert delete_conversation(reader.storage, 1, "c")
    storage.writer.write(events)  # an old job replayed: the ledger knows these events
    assert reader.get_conversation("c", 1) is None
    assert_consistent(storage)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_ingest_and_delete_keep_stats_and_listing_equal_to_a_recount(backend, seed):
    """A random sequence of writes (chats, errors, several days, users, models) and deletes;
    then every user's stats and listing equal a brute-force count of what the test sent."""
    rng = random.Random(seed)
    storage = backend.storage()
    reader = reader_on(storage)
    alive: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
    histories: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
    for step in range(40):
        if alive and rng.random() < 0.15:
            key = rng.choice(sorted(alive))
            assert delete_conversation(reader.storage, key[0], key[1])
            del alive[key]
            histories.pop(key, None)
            continue
        batch = []
        for _ in range(rng.randint(1, 4)):
            user, conv = rng.randint(1, 3), f"conv-{rng.randint(0, 7)}"
            model = rng.choice(["gpt-4o", "claude", "qwen"])
            ms = BASE_MS + rng.randint(0, 3) * DAY_MS + step * 1000 + rng.randint(0, 999)
            history = histories[(user, conv)]
            history.append({"role": "user", "content": f"q{step}-{rng.random()}"})
            if rng.random() < 0.2:
                ev = error(conv, list(history), user_id=user, model=model, ms=ms)
                history.pop()
            else:
                ev = chat(conv, list(history), f"a{step}", user_id=user, model=model, ms=ms, usage=(3, 4))
                history.append({"role": "assistant", "content": f"a{step}"})
            alive[(user, conv)].append(ev)
            batch.append(ev)
        storage.writer.write(batch)
    assert_consistent(storage)
    for user in (1, 2, 3):
        mine = {conv: evs for (u, conv), evs in alive.items() if u == user}
        chats = [e for evs in mine.values() for e in evs if e["kind"] == "chat"]
        errors = [e for evs in mine.values() for e in evs if e["kind"] == "error"]
        stats = reader.get_conversation_stats(user)
        assert stats["total_conversations"] == len(mine)
        assert stats["total_requests"] == len(chats)
        assert stats["total_errors"] == len(errors)
        assert stats["total_tokens"] == 7 * len(chats)
        listed = reader.get_user_conversations(user, limit=100).items
        assert {c["id"] for c in listed} == set(mine)
        last_ms = {conv: max(e["occurred_at"] for e in evs) for conv, evs in mine.items()}
        assert [c["last_at_ms"] for c in listed] == sorted((last_ms[c["id"]] for c in listed), reverse=True)
        per_model = Counter(e["model_name"] for e in chats)
        assert {m: n for m, n in stats["tokens_by_model"].items()} == {m: 7 * n for m, n in per_model.items()}


def test_tables_of_the_go_version_are_refused_with_one_clear_line(backend):
    """MES does not write into a Go-era table that lacks its columns: it says so at start."""
    from sqlalchemy import text

    from mes.errors import ConfigError

    storage = backend.storage(daily=False)
    with storage.engine.begin() as conn:
        conn.execute(text("DROP TABLE conversation_histories"))
        conn.execute(
            text("CREATE TABLE conversation_histories (id INTEGER PRIMARY KEY, conversation_id VARCHAR(191))")
        )
    with pytest.raises(ConfigError, match="without MES's columns"):
        Storage.open(backend.settings(daily=False))
