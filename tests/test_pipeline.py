"""Producer → real Redis → RQ worker → each real database: the whole path, and its faults."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from rq.job import Job
from rq.registry import FailedJobRegistry, StartedJobRegistry
from sqlalchemy import text

from mes.cli import main as cli
from mes.config.settings import Settings
from mes.producer import Producer
from mes.queue import Keys, make_queue
from mes.storage import Storage
from mes.worker.context import WorkerContext, install
from mes.worker.runner import MESWorker
from mes.worker.safety import MESJob
from mes.worker.staging import Stager

from .factories import assert_consistent, conversation, event_from_call, sample_calls
from .netproxy import Proxy


def mes_settings(backend: Any, redis_server: Any, **env: str) -> Settings:
    defaults = {
        "MES_DAILY_PARTITION": "true",
        "SQL_MAX_IDLE_CONNS": "4",
        "MES_RETRY_INTERVALS": "1,1",
        "MES_LINGER_MS": "5",
    }
    return Settings.from_env(backend.env(REDIS_CONN_STRING=redis_server.url, **{**defaults, **env}))


def run_workers(
    settings: Settings, redis_server: Any, storage: Storage | None = None, *, rounds: int = 1
) -> None:
    """Burst workers in this process: process everything queued (and due retries)."""
    redis = redis_server.client()
    ctx = WorkerContext.build(settings, redis, storage=storage)
    install(ctx)
    try:
        for n in range(rounds):
            if n:
                time.sleep(1.1)  # let scheduled retries fall due
            MESWorker.for_context(ctx).work(burst=True, with_scheduler=False)
    finally:
        install(None)
        if storage is None:
            ctx.close()


def total_rows(storage: Storage, base: str = "conversation_histories") -> int:
    q = storage.engine.dialect.identifier_preparer.quote
    total = 0
    with storage.engine.connect() as conn:
        for name in storage.catalog.refresh():
            if name.startswith(base + "_2"):
                total += conn.execute(text(f"SELECT COUNT(*) FROM {q(name)}")).scalar_one()
    return total


def applied_events(storage: Storage) -> list[str]:
    q = storage.engine.dialect.identifier_preparer.quote
    ids: list[str] = []
    with storage.engine.connect() as conn:
        for name in storage.catalog.refresh():
            if name.startswith("mes_event_ledger_"):
                ids.extend(r[0] for r in conn.execute(text(f"SELECT event_id FROM {q(name)}")))
    return ids


def record(producer: Producer, event: dict[str, Any]) -> None:
    producer.record_serialized(orjson.dumps(event))


def test_end_to_end_samples_and_multi_turn_chat(backend, redis_server):
    """Samples and a 3-turn chat recorded by the producer land once, index equal to a recount."""
    settings = mes_settings(backend, redis_server)
    storage = Storage.open(settings.database)
    producer = Producer(settings.producer)
    for c in sample_calls():
        getattr(producer, c["call"])(**c["args"], occurred_at=1_768_492_799_000)
    for ev in conversation("conv-e2e", 3):
        record(producer, ev)
    assert producer.flush(10)
    run_workers(settings, redis_server, storage)
    client = redis_server.client()
    assert (
        client.llen("mes:staging") == 0
        and not client.keys("mes:batch:*")
        and client.zcard("mes:batches") == 0
    )
    assert len(applied_events(storage)) == len(sample_calls()) + 3
    assert_consistent(storage)
    producer.close()
    storage.close()


def test_one_malformed_event_among_500_is_dead_lettered_with_its_reason(backend, redis_server):
    settings = mes_settings(backend, redis_server, MES_DIRECT_JOB_MIN_EVENTS="100", MES_LINGER_MS="60000")
    storage = Storage.open(settings.database)
    producer = Producer(settings.producer)
    calls = sample_calls()
    for n in range(500):
        ev = event_from_call(calls[n % len(calls)], ms=1_768_492_799_000 + n)
        ev["conversation_id"] = f"c{n}"
        if n == 250:
            ev["user_id"] = "alice"  # a gateway bug: a string where an integer belongs
        record(producer, ev)
    producer.flush(10)
    assert redis_server.client().llen("rq:queue:mes") == 1  # one job of 500
    run_workers(settings, redis_server, storage)
    assert len(applied_events(storage)) == 499
    with storage.engine.connect() as conn:
        ((reason, payload),) = conn.execute(text("SELECT reason, payload FROM mes_dead_letters")).fetchall()
    assert "user_id" in reason and orjson.loads(bytes(payload))["user_id"] == "alice"
    assert_consistent(storage)
    producer.close()
    storage.close()


def test_forged_jobs_execute_nothing_and_fail_with_a_reason(backend, redis_server, tmp_path):
    """Pickle payloads, foreign functions, callbacks and broken hashes: nothing runs; the worker lives."""
    settings = mes_settings(backend, redis_server)
    storage = Storage.open(settings.database)
    redis = redis_server.client()
    marker = tmp_path / "pwned"
    queue = make_queue(redis, "mes")
    evil = f"touch {marker}"
    # 1. a pickle payload (RQ's default serializer)
    pickled = Job.create("os.system", args=(evil,), connection=redis, id="forged-pickle", origin="mes")
    pickled.save()
    redis.hset("rq:job:forged-pickle", "data", pickle.dumps(("os.system", None, (evil,), {})))
    # 2. a JSON job naming a function outside MES
    queue.enqueue_call("os.system", args=(evil,), job_id="forged-json")
    # 3. MES's own function, with a callback that is not
    queue.enqueue_call("mes.worker.jobs.write_batch", args=("nope",), job_id="forged-callback")
    redis.hset("rq:job:forged-callback", "success_callback_name", "os.system")
    # 4. a truncated JSON body and 5. a hash RQ cannot parse
    queue.enqueue_call("os.system", args=(evil,), job_id="forged-truncated")
    redis.hset("rq:job:forged-truncated", "data", b'["os.sys')
    queue.enqueue_call("os.system", args=(evil,), job_id="forged-hash")
    redis.hset("rq:job:forged-hash", "dependency_ids", b"{not json")
    for job_id in ("forged-pickle",):
        redis.rpush("rq:queue:mes", job_id)
    # and a real batch after them, which must still be written
    producer = Producer(settings.producer)
    record(producer, event_from_call(sample_calls()[0]))
    producer.flush(10)
    run_workers(settings, redis_server, storage)
    assert not marker.exists()
    failed = FailedJobRegistry(queue=make_queue(redis, "mes", job_class=MESJob))
    assert {"forged-pickle", "forged-json", "forged-truncated", "forged-hash"} <= set(failed.get_job_ids())

    def reason(job_id: str) -> str:
        result = MESJob.fetch(job_id, connection=redis, serializer=queue.serializer).latest_result()
        return (result.exc_string if result else None) or ""

    assert "refusing to run 'os.system'" in reason("forged-json")
    assert "unreadable job hash" in reason("forged-hash")
    assert "DeserializationError" in reason("forged-pickle") and "DeserializationError" in reason(
        "forged-truncated"
    )
    assert len(applied_events(storage)) == 1
    producer.close()
    storage.close()


def test_quiet_producers_are_cut_into_large_jobs_by_workers(redis_server, backend):
    """Fifty flushes of one event each make one job, not fifty."""
    settings = mes_settings(backend, redis_server)
    redis = redis_server.client()
    for n in range(50):
        redis.rpush("mes:staging", orjson.dumps(event_from_call(sample_calls()[0], ms=1_768_492_799_000 + n)))
    stager = Stager(
        redis, make_queue(redis, "mes"), Keys("mes"), settings.queue, max_events=1000, linger_ms=200
    )
    assert stager.cut() == 0  # first sight starts the linger clock
    time.sleep(0.25)
    assert stager.cut() == 50
    assert redis.llen("rq:queue:mes") == 1 and redis.llen("mes:staging") == 0


def test_an_orphaned_batch_is_found_and_enqueued(redis_server, backend):
    """A worker that died between cutting staging and enqueuing the job loses nothing."""
    settings = mes_settings(backend, redis_server)
    storage = Storage.open(settings.database)
    redis = redis_server.client()
    redis.rpush("mes:batch:orphan1", orjson.dumps(event_from_call(sample_calls()[0])))
    redis.zadd("mes:batches", {"orphan1": time.time_ns() // 1_000_000 - 120_000})
    stager = Stager(
        redis, make_queue(redis, "mes"), Keys("mes"), settings.queue, max_events=1000, linger_ms=200
    )
    assert stager.reap() == 1
    run_workers(settings, redis_server, storage)
    assert len(applied_events(storage)) == 1 and redis.zcard("mes:batches") == 0
    storage.close()


def test_redis_down_while_10k_events_are_recorded_then_all_land_once(backend, redis_server):
    settings = mes_settings(backend, redis_server)
    storage = Storage.open(settings.database)
    redis_server.stop()
    producer = Producer(settings.producer)
    worst = 0.0
    for n in range(10_000):
        t = time.perf_counter()
        producer.save_chat_completion(f"c{n % 97}", [{"role": "user", "content": f"q{n}"}],
                                      {"choices": [{"message": {"role": "assistant", "content": "a"}}]},
                                      "gpt-4o", 1 + n % 5, 1, 1, occurred_at=1_768_492_799_000 + n)  # fmt: skip
        worst = max(worst, time.perf_counter() - t)
    producer.flush(30)
    assert producer.stats().spooled == 10_000 and producer.stats().dropped == 0
    print(f"worst call with Redis down: {worst * 1e6:.0f} us")
    redis_server.start()
    deadline = time.monotonic() + 60
    while producer.stats().resent < 10_000 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert producer.stats().resent == 10_000
    run_workers(settings, redis_server, storage)
    ids = applied_events(storage)
    assert len(ids) == 10_000 == len(set(ids))
    assert_consistent(storage)
    producer.close()
    storage.close()


def _cut_database(backend: Any, storage: Storage, proxy: Proxy | None) -> None:
    if proxy is not None:
        proxy.cut()
    else:  # SQLite: the file goes away under a pool that must reconnect
        os.rename(backend.tmp_path / "db", backend.tmp_path / "db-away")
    storage.engine.dispose()


def _restore_database(backend: Any, proxy: Proxy | None) -> None:
    if proxy is not None:
        proxy.restore()
    else:
        os.rename(backend.tmp_path / "db-away", backend.tmp_path / "db")


@pytest.mark.parametrize("replay_with", ["mes", "rq"])
def test_database_down_jobs_fail_then_replay_writes_every_row_once(backend, redis_server, replay_with):
    """...and RQ's own `rq requeue` (with the JSON serializer) does what `mes replay failed` does."""
    proxy = Proxy(*backend.address) if backend.name != "sqlite" else None
    env = {"MES_SQL_DSN": backend.proxied_dsn(proxy.port)} if proxy else {}
    settings = mes_settings(backend, redis_server, **env)
    storage = Storage.open(settings.database)
    producer = Producer(settings.producer)
    for n in range(200):
        record(
            producer,
            event_from_call(sample_calls()[n % 7], ms=1_768_492_799_000 + n) | {"conversation_id": f"d{n}"},
        )
    producer.flush(10)
    _cut_database(backend, storage, proxy)
    run_workers(settings, redis_server, storage, rounds=4)  # the first try and both retries fail
    queue = make_queue(redis_server.client(), "mes", job_class=MESJob)
    assert FailedJobRegistry(queue=queue).count >= 1
    _restore_database(backend, proxy)
    if replay_with == "mes":
        result = CliRunner().invoke(cli, ["replay", "failed"], env=settings_env(backend, redis_server, env))
        assert result.exit_code == 0, result.output
        assert "requeued" in result.output
    else:
        rq = os.path.join(os.path.dirname(sys.executable), "rq")
        cmd = [rq, "requeue", "--all", "--serializer", "rq.serializers.JSONSerializer", "--queue", "mes",
               "-u", redis_server.url]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert FailedJobRegistry(queue=queue).count == 0
    run_workers(settings, redis_server, storage)
    ids = applied_events(storage)
    assert len(ids) == 200 == len(set(ids))
    assert_consistent(storage)
    producer.close()
    storage.close()
    if proxy:
        proxy.close()


def settings_env(backend: Any, redis_server: Any, extra: dict[str, str]) -> dict[str, str]:
    return backend.env(REDIS_CONN_STRING=redis_server.url, MES_DAILY_PARTITION="true", **extra)


def _lock_database(backend: Any, storage: Storage) -> Any:
    """Hold a lock that the next batch's transaction will wait on."""
    conn = storage.engine.raw_connection()
    cur = conn.cursor()
    if backend.name == "sqlite":
        cur.execute("BEGIN IMMEDIATE")
    else:
        conn.driver_connection.autocommit = False if backend.name == "postgresql" else None  # type: ignore[union-attr]
        cur.execute("SELECT * FROM mes_conversations WHERE conversation_id = 'k0' FOR UPDATE")
    return conn


@pytest.mark.slow
def test_worker_sigkilled_mid_batch_is_redone_by_another_without_duplicates(backend, redis_server):
    settings = mes_settings(backend, redis_server)
    env = {**os.environ, **settings_env(backend, redis_server, {
        "MES_JOB_TIMEOUT": "5", "MES_MAINTENANCE_INTERVAL": "1", "MES_RETRY_INTERVALS": "1,1,1"})}  # fmt: skip
    storage = Storage.open(settings.database)
    producer = Producer(settings.producer)
    record(producer, event_from_call(sample_calls()[0]) | {"conversation_id": "k0"})
    producer.flush(10)
    run_workers(settings, redis_server, storage)  # k0 exists now: a row to lock
    for n in range(300):
        record(
            producer,
            event_from_call(sample_calls()[n % 7], ms=1_768_492_799_000 + n)
            | {"conversation_id": f"k{n % 3}"},
        )
    producer.flush(10)
    lock = _lock_database(backend, storage)
    first = subprocess.Popen([sys.executable, "-m", "mes", "worker"], env=env, start_new_session=True)
    redis = redis_server.client()
    started = StartedJobRegistry(queue=make_queue(redis, "mes", job_class=MESJob))
    deadline = time.monotonic() + 30
    while not started.get_job_ids() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert started.get_job_ids(), "the worker never started the batch"
    time.sleep(0.5)  # inside the transaction, waiting on our lock
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    lock.rollback()
    lock.close()
    killed_at = time.monotonic()
    second = subprocess.Popen([sys.executable, "-m", "mes", "worker"], env=env, start_new_session=True)
    try:
        while len(applied_events(storage)) < 301 and time.monotonic() - killed_at < 120:
            time.sleep(0.5)
        recovered = time.monotonic() - killed_at
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(30)
    ids = applied_events(storage)
    assert len(ids) == 301 == len(set(ids)), f"{len(ids)} applied after {recovered:.0f}s"
    print(f"recovered {recovered:.1f}s after the kill")
    assert_consistent(storage)
    producer.close()
    storage.close()


def test_a_batch_is_written_with_the_context_it_is_given_and_not_without_one(backend, redis_server):
    """The job's work takes its context as an argument (``write_batch_with``); RQ's entry
    point ``write_batch`` finds the process's, and in a process that is no worker says so."""
    from mes.worker.jobs import write_batch, write_batch_with

    settings = mes_settings(backend, redis_server)
    storage = Storage.open(settings.database)
    ctx = WorkerContext.build(settings, redis_server.client(), storage=storage)
    events = [orjson.dumps(ev) for ev in conversation("conv-ctx", 2)]
    ctx.redis.rpush(ctx.keys.batch("b-ctx"), *events)
    with pytest.raises(RuntimeError, match="no MES worker context"):
        write_batch("b-ctx")
    assert write_batch_with(ctx, "b-ctx")["applied"] == 2
    assert sorted(applied_events(storage)) == sorted(orjson.loads(e)["event_id"] for e in events)
    assert ctx.redis.llen(ctx.keys.batch("b-ctx")) == 0
    assert_consistent(storage)
    storage.close()
