"""The batch writer on every backend: right table, exactly once, multi-turn dedup, rollups."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import pytest
from sqlalchemy import inspect, text

from mes.schemas import decode_event
from mes.storage import Storage
from mes.storage.transcript import GAP

from .factories import BASE_MS, assert_consistent, chat, conversation, error, event_from_call, sample_calls


def rows(storage: Storage, table: str, where: str = "", **params: Any) -> list[dict[str, Any]]:
    q = storage.engine.dialect.identifier_preparer.quote
    sql = (
        f"SELECT * FROM {q(table)}"
        + (f" WHERE {where}" if where else "")
        + " ORDER BY created_at_ms, seq, id"
    )
    with storage.engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(sql), params).mappings()]


def count(storage: Storage, table: str) -> int:
    q = storage.engine.dialect.identifier_preparer.quote
    with storage.engine.connect() as conn:
        return int(conn.execute(text(f"SELECT COUNT(*) FROM {q(table)}")).scalar_one())


def day_table(base: str, day: dt.date) -> str:
    return f"{base}_{day:%Y_%m_%d}"


def test_samples_write_and_rollups_match_recount(backend):
    """Every sample call is accepted, stored, and the index equals a recount."""
    storage = backend.storage()
    events = [decode_event(__import__("orjson").dumps(event_from_call(c))) for c in sample_calls()]
    result = storage.writer.write(events)
    assert result.applied == len(events)
    assert result.rows > 0 and result.error_rows > 0
    assert_consistent(storage)


def test_large_message_with_emoji_and_cjk_round_trips_byte_exact(backend):
    """A 200 KB message of emoji and CJK comes back byte for byte (MySQL TEXT would stop at 64 KB)."""
    storage = backend.storage()
    unit = "中文😀🧑‍💻 mixed ascii\n"
    content = unit * (200_000 // len(unit.encode()) + 1)
    assert 200_000 < len(content.encode()) < 210_000
    ev = chat("conv-big", [{"role": "user", "content": content}], content[::-1])
    storage.writer.write([ev])
    stored = rows(storage, day_table("conversation_histories", dt.date(2026, 1, 15)))
    assert [r["content"] for r in stored] == [content, content[::-1]]
    assert stored[0]["content"].encode() == content.encode()


def test_event_before_midnight_written_after_midnight_lands_in_its_own_day(backend):
    """23:59:59.999 in Asia/Shanghai, written when the worker's clock says the next day."""
    tz = "Asia/Shanghai"
    late_ms = int(
        dt.datetime(2026, 3, 1, 23, 59, 59, 999000, tzinfo=__import__("zoneinfo").ZoneInfo(tz)).timestamp()
        * 1000
    )
    clock = [late_ms + 5_000]  # the worker runs five seconds after midnight
    storage = backend.storage(tz=tz, clock_ms=lambda: clock[0])
    storage.writer.write([chat("conv-midnight", [{"role": "user", "content": "late"}], "ok", ms=late_ms)])
    assert count(storage, "conversation_histories_2026_03_01") == 2
    names = set(inspect(storage.engine).get_table_names())
    assert "conversation_histories_2026_03_02" in names  # created ahead (today), and empty
    assert count(storage, "conversation_histories_2026_03_02") == 0
    assert_consistent(storage)


def test_eight_concurrent_writers_creating_the_same_new_day_all_commit(backend):
    """Eight processes' worth of writers (own engine, own catalog cache) race to make a new day."""
    storages = [backend.storage() for _ in range(8)]
    new_day_ms = BASE_MS + 40 * 86_400_000  # a day nobody created ahead
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            batch = [
                chat(f"race-{i}-{j}", [{"role": "user", "content": f"q{j}"}], "a", ms=new_day_ms + j)
                for j in range(25)
            ]
            storages[i].writer.write(batch)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    day = storages[0].calendar.day_of(new_day_ms)
    assert count(storages[0], day_table("conversation_histories", day)) == 8 * 25 * 2
    assert_consistent(storages[0])


def test_same_batch_twice_changes_nothing(backend):
    """Exactly once: a replayed batch adds no row and counts nothing twice."""
    storage = backend.storage()
    batch = conversation("conv-replay", 3) + [error("conv-replay", [{"role": "user", "content": "boom"}])]
    first = storage.writer.write(batch)
    with storage.engine.connect() as conn:
        before = sorted(map(tuple, conn.execute(text("SELECT * FROM mes_daily_stats")).fetchall()))
        conv_before = conn.execute(
            text("SELECT message_count, event_count, error_count, total_tokens FROM mes_conversations")
        ).fetchall()
    second = storage.writer.write(batch)
    assert first.applied == 4 and second.applied == 0 and second.duplicates == 4
    with storage.engine.connect() as conn:
        after = sorted(map(tuple, conn.execute(text("SELECT * FROM mes_daily_stats")).fetchall()))
        conv_after = conn.execute(
            text("SELECT message_count, event_count, error_count, total_tokens FROM mes_conversations")
        ).fetchall()
    assert before == after and conv_before == conv_after
    # One event again inside a different batch, and twice within one batch: still once.
    third = storage.writer.write(
        [batch[1], chat("conv-other", [{"role": "user", "content": "x"}], "y")] + [batch[2]] * 2
    )
    assert third.applied == 1
    assert_consistent(storage)


def test_three_turn_conversation_reads_back_each_turn_once(backend):
    """Three requests, each re-sending the history: 1 system + 3 user + 3 assistant rows, in order."""
    storage = backend.storage()
    for ev in conversation("conv-3", 3):
        storage.writer.write([ev])  # one batch per request, as they would arrive
    stored = rows(storage, day_table("conversation_histories", dt.date(2026, 1, 15)))
    assert [(r["role"], r["content"]) for r in stored] == [
        ("system", "You are terse."),
        ("user", "question 0 你好 😀"), ("assistant", "answer 0"),
        ("user", "question 1 你好 😀"), ("assistant", "answer 1"),
        ("user", "question 2 你好 😀"), ("assistant", "answer 2"),
    ]  # fmt: skip
    assert sum(r["total_tokens"] for r in stored) == 90
    assert_consistent(storage)


def test_three_turns_in_one_batch_and_out_of_order_store_each_turn_once(backend):
    """The same chat arriving in one batch, and in reverse order, still stores every turn once."""
    storage = backend.storage()
    events = conversation("conv-batch", 3)
    storage.writer.write(events)
    storage2 = storage
    reversed_events = conversation("conv-rev", 3)
    for ev in reversed(reversed_events):
        storage2.writer.write([ev])
    for cid in ("conv-batch", "conv-rev"):
        stored = rows(
            storage, day_table("conversation_histories", dt.date(2026, 1, 15)), "conversation_id = :c", c=cid
        )
        roles = [r["role"] for r in stored]
        assert roles.count("user") == 3 and roles.count("assistant") == 3, (cid, roles)
        assert [r["content"] for r in stored if r["role"] == "assistant"] == [
            "answer 0",
            "answer 1",
            "answer 2",
        ]
    assert_consistent(storage)


def test_regenerated_answer_is_a_new_row_but_the_question_is_not(backend):
    """Regenerate: same history, a new answer (even an identical one) is its own request."""
    storage = backend.storage()
    ask = [{"role": "user", "content": "pick a number"}]
    storage.writer.write([chat("conv-regen", ask, "7", ms=BASE_MS)])
    storage.writer.write([chat("conv-regen", ask, "7", ms=BASE_MS + 1000)])
    storage.writer.write([chat("conv-regen", ask, "42", ms=BASE_MS + 2000)])
    stored = rows(storage, day_table("conversation_histories", dt.date(2026, 1, 15)))
    assert [(r["role"], r["content"]) for r in stored] == [
        ("user", "pick a number"),
        ("assistant", "7"),
        ("assistant", "7"),
        ("assistant", "42"),
    ]
    assert len({r["message_id"] for r in stored}) == 4
    assert_consistent(storage)


def test_partitioning_off_uses_the_two_plain_tables(backend):
    storage = backend.storage(daily=False)
    storage.writer.write(
        conversation("conv-plain", 2) + [error("conv-plain", [{"role": "user", "content": "x"}])]
    )
    names = set(inspect(storage.engine).get_table_names())
    assert {"conversation_histories", "error_conversation_histories"} <= names
    assert not any(n.startswith("conversation_histories_") for n in names)
    assert count(storage, "conversation_histories") == 5
    assert count(storage, "error_conversation_histories") == 1
    assert_consistent(storage)


def test_conversation_ids_differing_in_case_or_trailing_space_stay_apart(backend):
    """MySQL's default collations would merge 'Conv', 'conv' and 'conv ' into one key."""
    storage = backend.storage()
    storage.writer.write(
        [chat(cid, [{"role": "user", "content": "hi"}], "yo") for cid in ("Conv", "conv", "conv ")]
    )
    with storage.engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM mes_conversations")).scalar_one() == 3
    assert_consistent(storage)


def test_error_event_keeps_its_request_and_counts_once(backend):
    storage = backend.storage()
    events = conversation("conv-e", 1)
    history = events[0]["messages"] + [
        {"role": "assistant", "content": "answer 0"},
        {"role": "user", "content": "and then?"},
    ]
    storage.writer.write(events + [error("conv-e", history, ms=BASE_MS + 60_000)])
    stored = rows(storage, day_table("error_conversation_histories", dt.date(2026, 1, 15)))
    assert [(r["role"], r["content"], r["error_code"]) for r in stored] == [("user", "and then?", 429)]
    assert_consistent(storage)


def test_same_user_and_conversation_id_of_two_users_are_two_conversations(backend):
    storage = backend.storage()
    storage.writer.write(
        [chat("shared-id", [{"role": "user", "content": "hi"}], "a", user_id=u) for u in (1, 2)]
    )
    with storage.engine.connect() as conn:
        assert (
            conn.execute(
                text("SELECT COUNT(*) FROM mes_conversations WHERE conversation_id = 'shared-id'")
            ).scalar_one()
            == 2
        )
    assert count(storage, day_table("conversation_histories", dt.date(2026, 1, 15))) == 4
    assert_consistent(storage)


def test_value_the_database_refuses_dead_letters_that_event_only(server_backend):
    """A batch whose transaction fails on one event's value is split: the rest commit."""
    storage = server_backend.storage()
    batch = [chat(f"c{i}", [{"role": "user", "content": "q"}], "a") for i in range(9)]
    bad = chat("c-bad", [{"role": "user", "content": "q"}], "a")
    bad["response"]["choices"][0]["finish_reason"] = (
        "x" * 100
    )  # over the column's 64 (validation says so too)
    result = storage.writer.write_isolating(batch[:4] + [bad] + batch[4:], batch_id="b1")
    assert result.applied == 9 and result.dead_lettered == 1
    with storage.engine.connect() as conn:
        reason, event_id = conn.execute(text("SELECT reason, event_id FROM mes_dead_letters")).one()
    assert event_id == bad["event_id"] and "refused" in reason
    assert_consistent(storage)


@pytest.mark.parametrize("daily", [True, False])
def test_tools_and_content_parts_are_stored_losslessly(backend, daily):
    storage = backend.storage(daily=daily)
    calls = {c["name"]: c for c in sample_calls()}
    vision = event_from_call(calls["vision: content parts"])
    tools = event_from_call(calls["tool call round trip"])
    storage.writer.write([vision, tools])
    table = "conversation_histories" + ("_2026_01_15" if daily else "")
    by_conv = {r["conversation_id"]: r for r in rows(storage, table) if r["role"] == "user"}
    import orjson

    assert orjson.loads(by_conv["conv_vision_1"]["content"]) == vision["messages"][0]["content"]
    assert orjson.loads(by_conv["conv_vision_1"]["other"]) == {"content_json": True}
    tool_rows = [r for r in rows(storage, table) if r["conversation_id"] == "conv_tools_1"]
    assert [r["role"] for r in tool_rows] == ["user", "assistant", "tool", "assistant"]
    assert orjson.loads(tool_rows[1]["other"])["tool_calls"][0]["id"] == "call_abc"
    assert orjson.loads(tool_rows[2]["other"]) == {"tool_call_id": "call_abc"}


def test_a_conversation_another_batch_is_writing_waits_but_the_rest_commit(server_backend):
    """Worker B is in the middle of a transaction on chat X (turn 1). Worker A's batch has
    turns 2 and 3 of X and events of other chats: the others commit at once, without waiting
    for B; X's turns are written after B commits, each message once, and the index still
    equals a recount."""
    storage, other = server_backend.storage(), server_backend.storage()
    x = conversation("conv-x", 3)
    free = [chat(f"conv-free-{i}", [{"role": "user", "content": "q"}], "a") for i in range(5)]
    holding, release = threading.Event(), threading.Event()
    real = other.writer._load_states

    def pause_after_claiming(*args: Any, **kwargs: Any) -> Any:
        states = real(*args, **kwargs)  # B has claimed X (new: no row to lock): now it dawdles
        holding.set()
        release.wait(30)
        return states

    other.writer._load_states = pause_after_claiming  # type: ignore[method-assign]

    def worker_b() -> None:
        other.writer.write([x[0]])

    b = threading.Thread(target=worker_b)
    b.start()
    assert holding.wait(10)
    results: list[Any] = []
    a = threading.Thread(target=lambda: results.append(storage.writer.write([x[1], *free, x[2]])))
    a.start()
    deadline = __import__("time").monotonic() + 10
    while count(storage, "mes_conversations") < len(free) and __import__("time").monotonic() < deadline:
        __import__("time").sleep(0.02)
    assert count(storage, "mes_conversations") == len(free)  # the others committed while B holds X
    assert results == []  # ...and A has not returned: X is left for after B
    release.set()
    a.join(30)
    b.join(30)
    (result,) = results
    assert (result.applied, result.deferred, result.duplicates) == (7, 2, 0)
    stored = rows(
        storage, day_table("conversation_histories", dt.date(2026, 1, 15)), "conversation_id = :c", c="conv-x"
    )
    assert [(r["role"], r["content"]) for r in stored][1:] == [
        ("user", "question 0 你好 😀"), ("assistant", "answer 0"),
        ("user", "question 1 你好 😀"), ("assistant", "answer 1"),
        ("user", "question 2 你好 😀"), ("assistant", "answer 2"),
    ]  # fmt: skip
    assert_consistent(storage)


def test_a_writer_alone_defers_nothing_and_releases_its_claims(server_backend):
    """No one else writes: nothing is deferred, and the claims are gone after each batch
    (another session can claim the same chats at once)."""
    storage, other = server_backend.storage(), server_backend.storage()
    first, second = conversation("conv-calm", 2)
    assert storage.writer.write([first]).deferred == 0
    assert storage.writer.write([second]).deferred == 0
    conn = other.engine.raw_connection()
    try:
        other.writer.bulk.begin(conn.driver_connection)
        assert other.writer.bulk.claim(conn.cursor(), [("conv-calm", 1)]) == set()
        conn.rollback()
        other.writer.bulk.release_claims(conn.driver_connection)
    finally:
        conn.close()
    assert_consistent(storage)


@pytest.mark.parametrize("a_writes", ["the next turn", "an error"])
def test_two_writers_both_seeing_a_new_conversation_store_each_turn_once(server_backend, a_writes):
    """Claims are a courtesy, not the guard: with them switched off, writer B plans new chat
    X and dawdles while writer A creates X and commits (with the next turn, whose history
    rows collide with B's, or with a failed request, which shares only the conversation's
    key). B's inserts then fail a unique key, B runs again on what A committed, and every
    turn is stored and counted once."""
    storage, other = server_backend.storage(), server_backend.storage()
    for s in (storage, other):
        s.writer.bulk.claim = lambda cur, keys, wait=False: set()  # type: ignore[method-assign]
    x = conversation("conv-race", 2)
    a_event = (
        x[1] if a_writes == "the next turn" else error("conv-race", x[1]["messages"], ms=BASE_MS + 60_000)
    )
    holding, release = threading.Event(), threading.Event()
    real = other.writer._load_states

    def pause_once(*args: Any, **kwargs: Any) -> Any:
        states = real(*args, **kwargs)
        if not holding.is_set():
            holding.set()
            release.wait(30)
        return states

    other.writer._load_states = pause_once  # type: ignore[method-assign]
    results: list[Any] = []
    b = threading.Thread(target=lambda: results.append(other.writer.write([x[0]])))
    b.start()
    assert holding.wait(10)
    assert storage.writer.write([a_event]).applied == 1  # A: X is new to it too
    release.set()
    b.join(30)
    (result,) = results
    assert (result.applied, result.attempts) == (1, 2)
    stored = rows(
        storage,
        day_table("conversation_histories", dt.date(2026, 1, 15)),
        "conversation_id = :c",
        c="conv-race",
    )
    expected = [("system", "You are terse."), ("user", "question 0 你好 😀"), ("assistant", "answer 0")]
    if a_writes == "the next turn":
        expected += [("user", "question 1 你好 😀"), ("assistant", "answer 1")]
    assert sorted((r["role"], r["content"]) for r in stored) == sorted(expected)
    assert_consistent(storage)


def test_many_conversations_and_rollups_written_twice_over_stay_exact(backend):
    """Batches wide enough for PostgreSQL's staged upserts (COPY into a session table,
    then one INSERT ... ON CONFLICT): 40 chats of 20 users, then each chat's next turn."""
    storage = backend.storage()
    chats = [
        conversation(f"conv-wide-{i}", 2, user_id=i % 20 + 1, model=("gpt-4o", "o3")[i % 2])
        for i in range(40)
    ]
    first = storage.writer.write([c[0] for c in chats])
    second = storage.writer.write([c[1] for c in chats])
    assert (first.applied, second.applied) == (40, 40)
    assert count(storage, "mes_conversations") == 40
    assert_consistent(storage)


def test_an_upsert_in_a_rolled_back_transaction_leaves_the_next_one_working(backend):
    """A staging table made in a transaction that rolls back is gone with it: the writer
    must not count on it afterwards."""
    storage = backend.storage()
    bulk, stats = storage.writer.bulk, storage.catalog.daily_stats
    from mes.storage.rows import STATS_COLUMNS

    rows = [(user, 20260115, "gpt-4o", 1, 0, 1, 0, 1, 1, 2) for user in range(1, 41)]
    conn = storage.engine.raw_connection()
    try:
        for outcome in ("rollback", "commit", "commit"):
            bulk.begin(conn.driver_connection)
            cur = conn.cursor()
            bulk.upsert(
                cur, stats, STATS_COLUMNS, ("user_id", "day", "model_name"), rows, add=STATS_COLUMNS[3:]
            )
            cur.close()
            getattr(conn, outcome)()
            bulk.after_transaction(conn.driver_connection, committed=outcome == "commit")
    finally:
        conn.close()
    with storage.engine.connect() as c:
        got = c.execute(text("SELECT COUNT(*), SUM(messages), SUM(total_tokens) FROM mes_daily_stats")).one()
    assert tuple(got) == (40, 80, 160)


def test_locking_the_batch_conversations_waits_for_no_other_conversation(server_backend):
    """Writer B holds chat 0's row mid-transaction. Writer A's batch has the next turns of
    the 29 other chats: its locking read of their rows must not wait for B (a locking
    table scan would, and two workers would take turns instead of writing together)."""
    storage, other = server_backend.storage(), server_backend.storage()
    chats = [conversation(f"conv-lock-{i:02d}", 2) for i in range(30)]
    storage.writer.write([c[0] for c in chats])
    holding, release = threading.Event(), threading.Event()
    real = other.writer._load_states

    def pause(*args: Any, **kwargs: Any) -> Any:
        states = real(*args, **kwargs)  # B now holds chat 0's row lock
        holding.set()
        release.wait(30)
        return states

    other.writer._load_states = pause  # type: ignore[method-assign]
    b = threading.Thread(target=lambda: other.writer.write([chats[0][1]]))
    b.start()
    try:
        assert holding.wait(10)
        done: list[Any] = []
        a = threading.Thread(target=lambda: done.append(storage.writer.write([c[1] for c in chats[1:]])))
        a.start()
        a.join(8)
        assert done and done[0].applied == 29  # A committed while B still holds chat 0
    finally:
        release.set()
        b.join(30)
    assert_consistent(storage)


def test_cyclic_gc_is_paused_during_a_write_and_back_after_it_even_on_failure(tmp_path, monkeypatch):
    """The writer pauses the cyclic collector for a batch (a speed measure, see
    ``_cyclic_gc_paused``): it must be on again after every write, failed ones too."""
    import gc

    from .conftest import Backend

    b = Backend("sqlite", tmp_path)
    storage = b.storage()
    try:
        seen = []
        real = storage.writer._write

        def spy(*args: Any) -> Any:
            seen.append(gc.isenabled())
            return real(*args)

        monkeypatch.setattr(storage.writer, "_write", spy)
        assert gc.isenabled()
        storage.writer.write([chat("gc-1", [{"role": "user", "content": "hi"}], "hello")])
        assert seen == [False] and gc.isenabled()

        def boom(*args: Any) -> Any:
            raise RuntimeError("the database went away")

        monkeypatch.setattr(storage.writer, "_write", boom)
        with pytest.raises(RuntimeError):
            storage.writer.write([chat("gc-2", [{"role": "user", "content": "hi"}], "hello")])
        assert gc.isenabled()
    finally:
        b.close()


def test_a_row_class_that_differs_from_its_table_stops_mes(monkeypatch):
    """rows.check_rows (run at import) compares each row class with its table: a field
    missing from ChatRow (a column added to the table alone) is an error, not a shifted row."""
    from typing import NamedTuple

    from mes.storage import rows

    rows.check_rows()  # today's classes match
    short = NamedTuple("ChatRow", [(name, object) for name in rows.CHAT_COLUMNS[:-1]])
    monkeypatch.setattr(rows, "ChatRow", short)
    with pytest.raises(TypeError, match="ChatRow has fields"):
        rows.check_rows()


def test_every_column_of_a_stored_row_holds_its_own_value(backend):
    """The row builders fill ChatRow by position (the hot path): each column, read back by
    name, holds the value meant for it, for a history row and for an answer row."""
    storage = backend.storage()
    ev = chat("conv-cols", [{"role": "system", "content": "s"}, {"role": "user", "content": "q", "name": "bob"}],
              "a", usage=(11, 22), ip="10.0.0.9", is_stream=True, channel_id=5, token_id=6)  # fmt: skip
    storage.writer.write([decode_event(__import__("orjson").dumps(ev))])
    got = {r["seq"]: r for r in rows(storage, day_table("conversation_histories", dt.date(2026, 1, 15)))}
    history, answer = got[1], got[2]
    for row in (history, answer):
        assert (row["user_id"], row["conversation_id"], row["model_name"]) == (1, "conv-cols", "gpt-4o")
        assert (row["token_id"], row["channel_id"], row["ip"], bool(row["is_stream"])) == (
            6,
            5,
            "10.0.0.9",
            True,
        )
        assert (row["event_id"], row["created_at_ms"], row["created_at"]) == (
            ev["event_id"],
            BASE_MS,
            BASE_MS // 1000,
        )
    assert (history["role"], history["content"], history["message_id"]) == (
        "user",
        "q",
        f"{ev['event_id']}.1",
    )
    assert __import__("orjson").loads(history["other"]) == {"name": "bob"}
    assert (history["ordinal"], history["position"], bool(history["is_response"])) == (2, 2 * GAP, False)
    assert (history["prompt_tokens"], history["total_tokens"], history["usage"], history["context"]) == (
        0,
        0,
        None,
        None,
    )
    assert (answer["role"], answer["content"], answer["finish_reason"], bool(answer["is_response"])) == (
        "assistant", "a", "stop", True)  # fmt: skip
    assert (answer["prompt_tokens"], answer["completion_tokens"], answer["total_tokens"]) == (11, 22, 33)
    assert (answer["ordinal"], answer["position"], answer["context"]) == (3, 3 * GAP, "1-2")
    assert __import__("orjson").loads(answer["usage"])["total_tokens"] == 33
    assert len(history["digest"]) == 32 and history["digest"] != answer["digest"]
