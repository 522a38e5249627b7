"""Erasing a user (``mes erase``, ``DELETE /api/v1/users/{id}/history``) on every backend:
no table, queue list or spool file keeps a row or a byte of theirs; others' history and
stats are untouched; the rollups still equal a recount; what arrives later from before
the erasure is not stored; it resumes; it is audited."""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from redis import Redis
from sqlalchemy import select, text

from mes.api import Services, create_app
from mes.api.auth import Authenticator
from mes.cli import main as cli
from mes.config.settings import Settings
from mes.producer.spool import Spool
from mes.queue import Keys
from mes.reader import HistoryReader
from mes.storage import DeadLetter, Storage
from mes.storage.erase import erase_user, erasure_of
from mes.worker.erasure import erase

from . import newapi
from .factories import BASE_MS, assert_consistent, chat, conversation, error
from .test_privacy import found

SECRET = "erase-me 紫罗兰 4471"
KEPT = "keep-me 向日葵"


def _history(storage: Storage) -> None:
    """User 5: two conversations over two days, a failed request, a dead letter; user 6: one chat."""
    first = [{"role": "user", "content": f"{SECRET} first"}]
    storage.writer.write(
        [
            chat("c5a", first, f"{SECRET} reply", user_id=5),
            chat(
                "c5a",
                [
                    *first,
                    {"role": "assistant", "content": f"{SECRET} reply"},
                    {"role": "user", "content": f"{SECRET} again"},
                ],
                "ok",
                user_id=5,
                ms=BASE_MS + 86_400_000,
            ),
            chat("c5b", [{"role": "user", "content": f"{SECRET} other"}], "fine", user_id=5, model="m2"),
            error("c5a", [{"role": "user", "content": f"{SECRET} failed"}], user_id=5, ms=BASE_MS + 5_000),
            chat("c6", [{"role": "user", "content": KEPT}], f"{KEPT} reply", user_id=6),
            chat("c5c", [{"role": "user", "content": "not kept"}], "x", user_id=5, capture="none"),
        ],
        [
            DeadLetter(
                orjson.dumps({"user_id": 5, "occurred_at": BASE_MS, "messages": SECRET}), "bad", "dl5"
            ),
            DeadLetter(b'{"user_id": 5, "messages": "' + SECRET.encode() + b'" torn', "invalid JSON", None),
            DeadLetter(orjson.dumps({"user_id": 6, "messages": KEPT}), "bad", "dl6"),
        ],
    )


def _rows_of(storage: Storage, user_id: int) -> dict[str, int]:
    """Rows with this user id, per table that has the column."""
    q = storage.engine.dialect.identifier_preparer.quote
    out = {}
    with storage.engine.connect() as conn:
        for name in sorted(storage.catalog.refresh()):
            if name.startswith(("conversation_histories", "error_conversation_histories", "mes_conversations",
                                "mes_daily_stats", "mes_uncaptured")):  # fmt: skip
                n = conn.execute(text(f"SELECT count(*) FROM {q(name)} WHERE user_id = :u"), {"u": user_id})
                out[name] = int(n.scalar_one())
    return {k: v for k, v in out.items() if v}


def _stats(storage: Storage, user_id: int) -> list[tuple[Any, ...]]:
    t = storage.catalog.daily_stats
    with storage.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(t).where(t.c.user_id == user_id).order_by(t.c.day))]


def test_erase_leaves_no_row_or_byte_of_the_user_and_others_untouched(backend, redis_server, tmp_path):
    storage = backend.storage()
    _history(storage)
    redis = Redis.from_url(redis_server.url)
    keys = Keys("erase-test")
    waiting = [orjson.dumps(chat("c5q", [{"role": "user", "content": SECRET}], "q", user_id=5)),
               orjson.dumps(chat("c6q", [{"role": "user", "content": KEPT}], "q", user_id=6))]  # fmt: skip
    redis.rpush(keys.batch("b1"), *waiting)
    redis.rpush(keys.staging, waiting[0])
    spool = Spool(str(tmp_path / "spool"), fsync=False)
    spool.write_batch(waiting)
    others_before = _stats(storage, 6)
    assert found(storage, "erase-me") and _rows_of(storage, 5)

    dry = erase(storage, 5, dry_run=True, redis=redis, queue_name="erase-test", spool_dir=spool.directory)
    assert (dry.conversations, dry.chat_rows, dry.error_rows, dry.dead_letters) == (3, 6, 1, 2)
    assert dry.counted_events == 1
    assert (dry.queued_events, dry.spool_events) == (2, 1)
    assert found(storage, "erase-me") and redis.llen(keys.batch("b1")) == 2  # nothing changed

    report = erase(storage, 5, redis=redis, queue_name="erase-test", spool_dir=spool.directory)
    assert (report.conversations, report.chat_rows, report.error_rows, report.dead_letters) == (3, 6, 1, 2)
    assert report.counted_events == 1
    assert report.stats_rows == dry.stats_rows > 0 and report.stray_rows == 0
    assert (report.queued_events, report.spool_events) == (2, 1)
    assert _rows_of(storage, 5) == {}
    assert found(storage, "erase-me") == [] and found(storage, "紫罗兰") == []
    assert found(storage, KEPT) and _stats(storage, 6) == others_before
    assert_consistent(storage)
    # the queue and the spool keep user 6's event only
    assert [orjson.loads(x)["user_id"] for x in redis.lrange(keys.batch("b1"), 0, -1)] == [6]
    assert redis.llen(keys.staging) == 0
    lines = []
    for f in spool.ready_files():
        with open(f.path, "rb") as fh:
            lines += fh.read().splitlines()
    assert [orjson.loads(x)["user_id"] for x in lines] == [6]
    marker = erasure_of(storage, 5)
    assert marker is not None and marker["finished_at"] is not None and marker["report"]["chat_rows"] == 6


def test_events_from_before_the_erasure_arriving_later_are_not_stored(backend):
    """A queued event (or a re-sent spool, a replayed job) of the erased user that happened
    before the erasure stores nothing; one that happened after is stored as usual."""
    storage = backend.storage()
    _history(storage)
    erase_user(storage, 5)
    late = chat("c5late", [{"role": "user", "content": SECRET}], "late", user_id=5, ms=BASE_MS + 10_000)
    after_ms = int(time.time() * 1000) + 60_000
    new = chat("c5new", [{"role": "user", "content": "hello again"}], "hi", user_id=5, ms=after_ms)
    result = storage.writer.write(
        [late, new],
        [DeadLetter(orjson.dumps({"user_id": 5, "occurred_at": BASE_MS, "x": SECRET}), "bad", "d")],
    )
    assert result.erased == 1 and result.applied == 1 and result.dead_lettered == 0
    assert found(storage, "erase-me") == [] and found(storage, "hello again")
    assert HistoryReader(storage).get_conversation("c5new", user_id=5) is not None
    assert_consistent(storage)


def test_a_batch_under_way_when_the_erasure_starts_is_erased_too(backend):
    """The write gate: a batch that read it before the erasure holds the erasure back until
    it commits, so the erasure sees (and removes) what it wrote. Without the gate the
    erasure would list the conversations before the batch committed, and miss its rows."""
    storage = backend.storage()
    writer = storage.writer
    paused, release = threading.Event(), threading.Event()
    insert = writer.bulk.insert

    def slow_insert(cur: Any, table: Any, columns: Any, rows: Any) -> None:
        if table.name.startswith("conversation_histories") and not release.is_set():
            paused.set()
            release.wait(30)
        insert(cur, table, columns, rows)

    writer.bulk.insert = slow_insert  # type: ignore[method-assign]
    event = chat("c5race", [{"role": "user", "content": SECRET}], "r", user_id=5)
    batch = threading.Thread(target=writer.write, args=([event],))
    batch.start()
    assert paused.wait(30)
    done: list[Any] = []
    eraser = threading.Thread(target=lambda: done.append(erase_user(storage, 5)))
    eraser.start()
    time.sleep(1.0)
    release.set()
    batch.join(60)
    eraser.join(60)
    writer.bulk.insert = insert  # type: ignore[method-assign]
    assert done and done[0].conversations == 1
    assert _rows_of(storage, 5) == {} and found(storage, "erase-me") == []
    assert_consistent(storage)


def test_an_interrupted_erasure_resumes(backend, monkeypatch):
    """Cut short after its first conversation, the erasure is marked unfinished; run
    again, it removes the rest and says it resumed; the rollups add up at every step."""
    storage = backend.storage()
    _history(storage)
    import mes.storage.erase as erase_module

    real = erase_module._erase_conversation
    calls = []

    def dies_second_time(*args: Any) -> Any:
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(erase_module, "_erase_conversation", dies_second_time)
    with pytest.raises(KeyboardInterrupt):
        erase(storage, 5)
    assert_consistent(storage)
    marker = erasure_of(storage, 5)
    assert marker is not None and marker["finished_at"] is None
    monkeypatch.setattr(erase_module, "_erase_conversation", real)
    report = erase(storage, 5)
    assert report.resumed and report.conversations == 2
    assert _rows_of(storage, 5) == {} and found(storage, "erase-me") == []
    assert_consistent(storage)


def test_a_restored_archive_does_not_bring_an_erased_user_back(backend, tmp_path):
    from mes.storage.partitions import archive_day, restore_archive

    storage = backend.storage()
    _history(storage)
    day = storage.calendar.day_of(BASE_MS)
    path = str(tmp_path / "day.jsonl.gz")
    archive_day(storage, day, path)
    erase_user(storage, 5)
    counts = restore_archive(storage, path)
    assert counts["erased"] > 0 and counts["chat"] > 0
    assert _rows_of(storage, 5) == {} and found(storage, "erase-me") == []
    assert found(storage, KEPT)
    assert_consistent(storage)


def test_mes_erase_command_dry_run_then_erase(backend, tmp_path):
    storage = backend.storage()
    _history(storage)
    env = backend.env(
        MES_DAILY_PARTITION="true", TZ="UTC", MES_SPOOL_DIR=str(tmp_path / "spool"), REDIS_CONN_STRING=""
    )
    runner = CliRunner()
    dry = runner.invoke(cli, ["erase", "--user", "5", "--dry-run"], env=env)
    assert dry.exit_code == 0, dry.output
    assert "would remove" in dry.output and "6  messages" in dry.output
    assert found(storage, "erase-me")
    done = runner.invoke(cli, ["erase", "--user", "5"], env=env)
    assert done.exit_code == 0, done.output
    assert "removed" in done.output and "3  conversations" in done.output
    assert _rows_of(storage, 5) == {} and found(storage, "erase-me") == []
    with storage.engine.connect() as conn:
        entries = conn.execute(select(storage.catalog.audit)).all()
    assert [(e.actor, e.action, e.target_user_id) for e in entries] == [("cli", "erase", 5)]
    verified = runner.invoke(cli, ["verify"], env=env)
    assert verified.exit_code == 0, verified.output
    assert_consistent(storage)


@pytest.fixture
def api(backend, tmp_path) -> Any:
    storage = backend.storage()
    cast = newapi.install(storage.engine)
    storage.writer.write(conversation("convA", 2, user_id=1) + conversation("convB", 2, user_id=2))
    _history(storage)
    settings = Settings.from_env({**backend.env(), "MES_SPOOL_DIR": str(tmp_path / "spool")})
    auth = Authenticator(storage.engine, api_key=newapi.OPERATOR_KEY, cache_seconds=0)
    services = Services(HistoryReader(storage), auth, settings)
    with TestClient(create_app(services=services), raise_server_exceptions=False) as client:
        yield client, cast, storage


def test_the_route_erases_own_history_or_an_admins_choice_and_audits_the_admin(api):
    client, cast, storage = api
    # a user may not erase another's history
    refused = client.delete("/api/v1/users/2/history", headers=cast.a)
    assert refused.status_code == 403
    assert HistoryReader(storage).get_conversation("convB", user_id=2) is not None
    # a user erases their own (no audit entry: nobody else's history was touched)
    own = client.delete("/api/v1/users/1/history", headers=cast.a)
    assert own.status_code == 200, own.text
    body = own.json()
    assert body["object"] == "erasure" and body["user_id"] == 1 and body["conversations"] == 1
    assert HistoryReader(storage).get_conversation("convA", user_id=1) is None
    # an admin's dry run changes nothing; the erasure is audited
    dry = client.delete("/api/v1/users/5/history", params={"dry_run": "true"}, headers=cast.admin)
    assert dry.status_code == 200 and dry.json()["chat_rows"] == 6 and found(storage, "erase-me")
    done = client.delete("/api/v1/users/5/history", headers=cast.admin)
    assert done.status_code == 200 and done.json()["chat_rows"] == 6
    assert found(storage, "erase-me") == [] and _rows_of(storage, 5) == {}
    assert HistoryReader(storage).get_conversation("convB", user_id=2) is not None
    with storage.engine.connect() as conn:
        entries = conn.execute(select(storage.catalog.audit)).all()
    erasures = [(e.actor, e.action, e.target_user_id) for e in entries if e.action == "erase"]
    assert erasures == [("user:10", "erase", 5)]
    assert_consistent(storage)


def test_what_the_user_does_after_the_erasure_stays(backend):
    """Erasure is not a ban: a conversation begun after the marker is left whole, one the
    user went on with loses only what came before (its title and tail too), and the
    rollups, theirs included, equal a recount."""
    storage = backend.storage()
    _history(storage)
    later = int(time.time() * 1000) + 60_000  # after the marker the erasure is about to set
    storage.writer.write([
        chat("c5a", [{"role": "user", "content": "went on with it"}], "still here", user_id=5, ms=later),
        chat("c5new", [{"role": "user", "content": "a new start"}], "hello", user_id=5, ms=later),
    ])  # fmt: skip
    report = erase_user(storage, 5)
    assert report.chat_rows == 6 and report.counted_events == 1
    reader = HistoryReader(storage)
    kept = reader.get_conversation_messages("c5a", user_id=5)
    assert kept is not None and [m["content"] for m in kept] == ["went on with it", "still here"]
    assert reader.get_conversation("c5a", user_id=5)["title"] == "went on with it"
    assert reader.get_conversation("c5new", user_id=5)["message_count"] == 2
    assert found(storage, "erase-me") == [] and found(storage, "紫罗兰") == []
    assert_consistent(storage)


def test_after_an_erasure_a_torn_dead_letter_of_the_user_is_not_kept(backend):
    """Bytes that are not JSON but name the erased user are dropped by the writer too."""
    storage = backend.storage()
    _history(storage)
    erase_user(storage, 5)
    torn = b'{"user_id": 5, "messages": "' + SECRET.encode() + b" torn"
    result = storage.writer.write([], [DeadLetter(torn, "not valid JSON")])
    assert result.dead_lettered == 0 and found(storage, "erase-me") == []
    other = b'{"user_id": 51, "messages": "' + SECRET.encode() + b" torn"
    assert storage.writer.write([], [DeadLetter(other, "not valid JSON")]).dead_lettered == 1


def test_the_queue_is_cleaned_of_the_user_whatever_time_their_gateway_gave(backend, redis_server):
    """An event of the user waiting in Redis is removed even when its gateway's clock runs
    ahead of the erasure's (the marker alone would let it through)."""
    storage = backend.storage()
    redis = Redis.from_url(redis_server.url)
    keys = Keys("erase-clock")
    ahead = chat(
        "c5f", [{"role": "user", "content": SECRET}], "x", user_id=5, ms=int(time.time() * 1000) + 3_600_000
    )
    redis.rpush(keys.batch("b9"), orjson.dumps(ahead))
    report = erase(storage, 5, redis=redis, queue_name="erase-clock")
    assert report.queued_events == 1 and redis.llen(keys.batch("b9")) == 0
