"""Events the database cannot take: refused at each door or dead-lettered with a bounded
payload and the reason, and never holding back the other events of their batch."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from rq.registry import FailedJobRegistry
from sqlalchemy import text

from mes.api import Services, create_app
from mes.api.auth import Authenticator
from mes.cli import main as cli
from mes.producer import Producer
from mes.queue import make_queue
from mes.reader import HistoryReader
from mes.schemas.decode import MAX_EVENT_BYTES
from mes.storage import Storage
from mes.worker.safety import MESJob

from . import newapi
from .factories import assert_consistent, chat
from .test_pipeline import applied_events, mes_settings, run_workers, settings_env

KEPT_MAX = 64 << 10  # the most of a payload a dead letter may keep
PROSE = "It's a long story, and the model didn't stop: "  # apostrophes, as real text has


def big_chat(size: int, *, user_id: int = 1, fill: str = "x") -> dict[str, Any]:
    """A chat event whose JSON is ``size`` bytes, give or take a few."""
    ev = chat(f"big-{uuid.uuid4().hex[:8]}", [{"role": "user", "content": ""}], "ok", user_id=user_id)
    overhead = len(orjson.dumps(ev))
    ev["messages"][0]["content"] = fill * ((size - overhead) // len(orjson.dumps(fill)[1:-1]))
    return ev


def small_chat(user_id: int = 2) -> dict[str, Any]:
    return chat(
        f"small-{uuid.uuid4().hex[:8]}", [{"role": "user", "content": "hi"}], "hello", user_id=user_id
    )


def dead_letters(storage: Storage) -> list[dict[str, Any]]:
    with storage.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT event_id, reason, payload, fingerprint FROM mes_dead_letters ORDER BY id")
        )
        return [dict(r._mapping) | {"payload": bytes(r.payload)} for r in rows]


def failed_jobs(redis: Any) -> int:
    return FailedJobRegistry(queue=make_queue(redis, "mes", job_class=MESJob)).count


def test_the_event_limit_is_what_the_database_accepts(backend):
    """MariaDB/MySQL: under max_allowed_packet; PostgreSQL and SQLite: MES's contract limit."""
    from mes.storage.engine import event_limit

    storage = backend.storage()
    limit = event_limit(storage.engine)
    if backend.name == "mysql":
        with storage.engine.connect() as conn:
            packet = int(conn.execute(text("SELECT @@max_allowed_packet")).scalar_one())
        assert limit.max_bytes < min(packet, MAX_EVENT_BYTES + 1) and "max_allowed_packet" in limit.db_source
        assert limit.max_bytes > packet // 2
    else:
        assert limit.max_bytes == MAX_EVENT_BYTES


def test_a_16mib_event_never_holds_back_another_users_small_one(backend, redis_server):
    """Producer -> Redis -> worker: the small event lands at once, the big one is stored
    (where the database takes it) or dead-lettered with its reason and a bounded payload."""
    settings = mes_settings(backend, redis_server)
    storage = Storage.open(settings.database)
    producer = Producer(settings.producer)
    big = big_chat(MAX_EVENT_BYTES - 64, fill=PROSE)  # just under MES's limit
    small = small_chat()
    assert MAX_EVENT_BYTES - 256 < len(orjson.dumps(big)) <= MAX_EVENT_BYTES
    producer.record_serialized(orjson.dumps(big))
    producer.record_serialized(orjson.dumps(small))
    assert producer.flush(30)
    assert producer.stats().dropped == 0  # within MES's contract: the producer sends it on
    started = time.monotonic()
    run_workers(settings, redis_server, storage)  # one burst: no retry rounds
    took = time.monotonic() - started
    applied = set(applied_events(storage))
    assert small["event_id"] in applied, "the small event was held back by the big one"
    assert took < 30, f"{took:.1f}s"
    redis = redis_server.client()
    assert failed_jobs(redis) == 0 and redis.zcard("mes:batches") == 0
    dead = dead_letters(storage)
    if big["event_id"] not in applied:
        ((letter,),) = ([d for d in dead if d["event_id"] == big["event_id"]],)
        assert "bytes" in letter["reason"] and len(letter["payload"]) <= KEPT_MAX
    if backend.name == "mysql":  # the default max_allowed_packet (16 MiB) cannot take it
        assert big["event_id"] not in applied
        assert "max_allowed_packet" in dead[0]["reason"]
    assert_consistent(storage)
    producer.close()
    storage.close()


def test_an_oversize_event_pushed_straight_to_redis_is_dead_lettered_bounded(backend, redis_server):
    """A gateway that RPUSHes itself skips every other door: the worker's keeps the
    database from ever seeing the event, and `mes replay dead-letters` says why it
    cannot be replayed instead of failing."""
    settings = mes_settings(backend, redis_server)
    storage = Storage.open(settings.database)
    raw_big = orjson.dumps(big_chat(MAX_EVENT_BYTES + (1 << 20)))  # over every door's limit
    small, invalid = small_chat(), small_chat() | {"user_id": "alice"}
    redis = redis_server.client()
    redis.rpush("mes:staging", raw_big, orjson.dumps(small), orjson.dumps(invalid))
    run_workers(settings, redis_server, storage)
    applied = set(applied_events(storage))
    assert small["event_id"] in applied and failed_jobs(redis) == 0
    by_size = sorted(dead_letters(storage), key=lambda d: len(d["payload"]))
    assert len(by_size) == 2
    letter = by_size[-1]
    assert len(letter["payload"]) <= KEPT_MAX and raw_big.startswith(letter["payload"])
    assert str(len(raw_big)) in letter["reason"] and "truncated" in letter["reason"]
    env = settings_env(backend, redis_server, {})
    result = CliRunner().invoke(cli, ["replay", "dead-letters"], env=env)
    assert result.exit_code == 0, result.output
    assert "replayed 1 dead letter(s)" in result.output
    assert "1 kept: truncated" in result.output and "cannot be replayed" in result.output
    left = dead_letters(storage)
    assert [d["fingerprint"] for d in left] == [letter["fingerprint"]]
    run_workers(settings, redis_server, storage)  # the replayed invalid one comes back
    assert len(dead_letters(storage)) == 2
    storage.close()


def test_a_value_the_database_refuses_on_a_reset_connection_is_isolated(backend):
    """An event under the limit whose escaped SQL is still too large for the server
    (MariaDB: 1153, then the connection is gone): the writer reconnects, isolates it,
    dead-letters it bounded, and commits the rest of the batch."""
    storage = backend.storage()
    quotes = big_chat(9 << 20, fill="'")  # each ' is sent as \' : twice the size on MySQL
    others = [small_chat(user_id=n) for n in range(3, 7)]
    result = storage.writer.write_isolating([others[0], quotes, *others[1:]], batch_id="b-quotes")
    applied = set(applied_events(storage))
    assert {ev["event_id"] for ev in others} <= applied
    if backend.name == "mysql":
        assert quotes["event_id"] not in applied and result.dead_lettered == 1
        (letter,) = dead_letters(storage)
        assert letter["event_id"] == quotes["event_id"] and len(letter["payload"]) <= KEPT_MAX
        # Whether the server answers 1153 before it hangs up, or only hangs up, depends on
        # when it notices the size: either way the reason says which.
        assert (
            "refused this event" in letter["reason"] or "closed the connection each time" in letter["reason"]
        )
    assert_consistent(storage)


def test_http_ingest_refuses_an_event_the_database_cannot_store_with_413(backend, redis_server):
    settings = mes_settings(backend, redis_server, MES_INGEST_MAX_BYTES=str(64 << 20),
                            MES_SPOOL_DIR=str(backend.tmp_path / "api-spool"))  # fmt: skip
    storage = Storage.open(settings.database)
    producer = Producer(settings.producer)
    services = Services(
        HistoryReader(storage),
        Authenticator(None, api_key=newapi.OPERATOR_KEY, cache_seconds=0),
        settings,
        redis=producer._transport.redis,
        producer=producer,
    )
    client = TestClient(create_app(services=services))
    headers = {"Authorization": f"Bearer {newapi.OPERATOR_KEY}"}
    # MariaDB's default max_allowed_packet refuses this one; the others, anything over MES's contract
    big = big_chat(MAX_EVENT_BYTES - 64 if backend.name == "mysql" else MAX_EVENT_BYTES + 1024, fill=PROSE)
    small = small_chat()
    r = client.post("/api/v1/events", content=json.dumps({"events": [big, small]}), headers=headers)
    assert r.status_code == 207, r.text
    refused, accepted = r.json()["results"]
    assert refused["status"] == "rejected" and refused["code"] == 413 and "bytes" in refused["reason"]
    assert accepted["status"] == "accepted"
    alone = client.post("/api/v1/events", content=json.dumps({"events": [big]}), headers=headers)
    assert alone.status_code == 413 and alone.json()["results"][0]["code"] == 413
    run_workers(settings, redis_server, storage)
    assert set(applied_events(storage)) == {small["event_id"]}
    client.close()
    producer.close()
    storage.close()


def test_the_producer_drops_an_event_over_the_contract_limit_and_never_raises(redis_server, backend, caplog):
    settings = mes_settings(backend, redis_server)
    producer = Producer(settings.producer)
    producer.record_serialized(orjson.dumps(big_chat(MAX_EVENT_BYTES + 1024)))
    producer.save_chat_completion("c", [{"role": "user", "content": "y" * (MAX_EVENT_BYTES + 10)}], {},
                                  "gpt-4o", 1, 1, 1)  # fmt: skip
    producer.record_serialized(orjson.dumps(small_chat()))
    assert producer.flush(10)
    stats = producer.stats()
    assert stats.dropped == 2 and stats.enqueued == 1
    redis = redis_server.client()
    assert redis.llen("mes:staging") == 1
    producer.close()


@pytest.mark.parametrize("size", [1000, 200_000])
def test_a_dead_letter_keeps_a_bounded_prefix_its_size_and_digest(size):
    from hashlib import blake2b

    from mes.storage import DeadLetter

    raw = b"z" * size
    letter = DeadLetter(payload=raw, reason="because\x00 " + "r" * 10_000)
    assert letter.fingerprint == blake2b(raw, digest_size=16).hexdigest() and letter.size == size
    assert "\x00" not in letter.reason and len(letter.reason) <= 2000
    if size > KEPT_MAX:
        assert letter.truncated and raw.startswith(letter.payload) and len(letter.payload) <= KEPT_MAX
        assert str(size) in letter.reason and letter.fingerprint in letter.reason
    else:
        assert not letter.truncated and letter.payload == raw


def test_a_connection_reset_by_one_event_is_isolated_while_the_database_answers(server_backend, monkeypatch):
    """The server drops the connection whenever one event's rows are sent (as MariaDB
    does after an oversize packet, reported as 'gone away'): not 'database unavailable':
    the writer reconnects, dead-letters that event and commits the others."""
    storage = server_backend.storage()
    kill = (
        "KILL CONNECTION_ID()"
        if server_backend.name == "mysql"
        else "SELECT pg_terminate_backend(pg_backend_pid())"
    )
    insert = storage.writer.bulk.insert

    def resetting_insert(cur: Any, table: Any, columns: Any, rows: list[Any]) -> None:
        if any("reset-me" in str(v) for row in rows for v in row):
            cur.execute(kill)
        insert(cur, table, columns, rows)

    monkeypatch.setattr(storage.writer.bulk, "insert", resetting_insert)
    resetter = chat("reset", [{"role": "user", "content": "reset-me"}], "ok", user_id=9)
    others = [small_chat(user_id=n) for n in range(3, 6)]
    result = storage.writer.write_isolating([others[0], resetter, *others[1:]], batch_id="b-reset")
    applied = set(applied_events(storage))
    assert {ev["event_id"] for ev in others} <= applied and resetter["event_id"] not in applied
    (letter,) = dead_letters(storage)
    assert letter["event_id"] == resetter["event_id"] and "closed the connection" in letter["reason"]
    assert result.dead_lettered == 1 and result.applied == 3
    assert_consistent(storage)
