"""Upgrading: a database written by the MES before transcripts, with rows in several daily
tables, is migrated by this one (at start-up, under a lock) and reads back the same."""

from __future__ import annotations

import threading
from typing import Any

import orjson
from sqlalchemy import inspect

from mes.reader import HistoryReader
from mes.schemas import decode_event
from mes.storage import Storage
from mes.storage.migrate import CURRENT, migrate

from . import legacy
from .factories import BASE_MS, assert_consistent, chat, conversation, error

DAY = 86_400_000


def _old_database(backend: Any, tmp_path: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Three conversations over three days written and read back by the older MES."""
    site = legacy.checkout(legacy.BEFORE_TRANSCRIPTS, tmp_path / "old")
    long_chat = conversation("long", 4, ms=BASE_MS) + conversation("long", 6, ms=BASE_MS + DAY)[4:]
    tools = [
        chat("tools", [{"role": "user", "content": "weather?"}], None, ms=BASE_MS + 2 * DAY,
             tool_calls=None),
    ]  # fmt: skip
    other_user = conversation("long", 2, user_id=2, ms=BASE_MS + DAY)
    failed = [error("long", [{"role": "user", "content": "too fast"}], ms=BASE_MS + 2 * DAY)]
    batches = [long_chat[:4], long_chat[4:] + other_user, tools + failed]
    env = backend.env(MES_DAILY_PARTITION="true", TZ="UTC")
    read = legacy.run_old(site, env, batches, [("long", 1), ("long", 2), ("tools", 1)])
    return [ev for b in batches for ev in b], read


def _plain(messages: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(m["id"], m["role"], orjson.dumps(m["content"]), m.get("usage")) for m in messages]


def test_a_database_of_the_older_mes_is_migrated_and_reads_back_the_same(backend, tmp_path):
    """Every message the older MES stored reads back, same ids, same order; then the
    conversation goes on without storing a re-sent turn again, and counts stay exact."""
    _, old_read = _old_database(backend, tmp_path)
    storage = backend.storage(daily=True)
    assert len([n for n in storage.catalog.refresh() if n.startswith("conversation_histories_")]) >= 3
    reader = HistoryReader(storage)
    for cid, uid in (("long", 1), ("long", 2), ("tools", 1)):
        assert _plain(reader.get_conversation_messages(cid, limit=10000, user_id=uid)) == _plain(
            old_read[f"{cid}|{uid}"]
        )
    assert_consistent(storage)
    history = [{"role": m["role"], "content": m["content"]} for m in old_read["long|1"]]
    nxt = chat("long", [*history, {"role": "user", "content": "one more"}], "sure", ms=BASE_MS + 3 * DAY)
    added = chat("long", [{"role": "system", "content": "be kind"}, *history, {"role": "user", "content": "one more"},
                          {"role": "assistant", "content": "sure"}, {"role": "user", "content": "and?"}], "done",
                 ms=BASE_MS + 3 * DAY + 1000)  # fmt: skip
    result = storage.writer.write([decode_event(orjson.dumps(nxt))])
    assert result.rows == 2  # the new question and its answer: nothing re-sent is stored again
    result = storage.writer.write([decode_event(orjson.dumps(added))])
    assert result.rows == 3  # the system prompt, the question and the answer
    after = reader.get_conversation_messages("long", limit=10000, user_id=1)
    assert [m["content"] for m in after] == [
        "be kind",
        *(m["content"] for m in history),
        "one more",
        "sure",
        "and?",
        "done",
    ]
    context = reader.get_request_context("long", added["event_id"], user_id=1)
    assert [m["content"] for m in context] == [m["content"] for m in added["messages"]] + ["done"]
    assert_consistent(storage)


def test_migrating_twice_and_from_many_processes_at_once_changes_nothing(backend, tmp_path):
    """Idempotent and safe with many workers starting together: one migrates, the rest wait."""
    _, old_read = _old_database(backend, tmp_path)
    settings = backend.settings(daily=True)
    opened: list[Storage] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            opened.append(Storage.open(settings))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    storage = opened[0]
    assert migrate(storage) == []  # already current
    columns = {c["name"] for c in inspect(storage.engine).get_columns("mes_conversations")}
    assert {"last_ordinal", "tail_digest"} <= columns
    reader = HistoryReader(storage)
    assert _plain(reader.get_conversation_messages("long", limit=10000, user_id=1)) == _plain(
        old_read["long|1"]
    )
    assert_consistent(storage)
    for s in opened:
        s.close()
    assert CURRENT == 2


def test_mes_migrate_says_what_it_did_then_that_nothing_is_left(backend, tmp_path):
    """``mes migrate`` on the older database lists each table it changed; run again: current."""
    from .test_cli import mes

    _old_database(backend, tmp_path)
    env = backend.env(MES_DAILY_PARTITION="true", TZ="UTC")
    first = mes(env, "migrate")
    assert first.returncode == 0, first.stderr
    assert "conversation_histories_2026_01_16: added ordinal" in first.stdout
    assert "schema version 2: migrated" in first.stdout
    again = mes(env, "migrate")
    assert again.returncode == 0 and "already current" in again.stdout, again.stderr


def test_a_day_archived_by_the_older_mes_restores_into_the_migrated_database(backend, tmp_path):
    """An archive written before transcripts has no ordinals: restored rows get them, after
    the conversation's rows, and the whole conversation reads back with nothing lost."""
    from mes.storage.partitions import restore_archive

    site = legacy.checkout(legacy.BEFORE_TRANSCRIPTS, tmp_path / "old")
    first = conversation("arch", 2, ms=BASE_MS)
    later = conversation("arch", 4, ms=BASE_MS + DAY)[2:]
    path = str(tmp_path / "day.jsonl.gz")
    env = backend.env(MES_DAILY_PARTITION="true", TZ="UTC")
    read = legacy.run_old(site, env, [first, later], [("arch", 1)], archive=("2026-01-15", path))
    assert len(read["arch|1"]) < len(read["arch|1|before"])  # the archived day is gone
    storage = backend.storage(daily=True)
    restore_archive(storage, path)
    messages = HistoryReader(storage).get_conversation_messages("arch", limit=1000, user_id=1)
    assert sorted(m["id"] for m in messages) == sorted(m["id"] for m in read["arch|1|before"])
    assert len({m["id"] for m in messages}) == len(messages)
    assert_consistent(storage)
