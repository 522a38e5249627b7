"""The `mes` commands not covered elsewhere, on each backend, run as a user runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import httpx
import orjson
from click.testing import CliRunner
from sqlalchemy import insert, text

from mes.cli import main as cli
from mes.embedded import free_port
from mes.producer import Producer
from mes.reader import HistoryReader
from mes.storage import Storage

from .factories import conversation
from .test_pipeline import mes_settings, run_workers


def env_of(backend: Any, redis_server: Any = None, **extra: str) -> dict[str, str]:
    env = backend.env(MES_DAILY_PARTITION="true", **extra)
    if redis_server is not None:
        env["REDIS_CONN_STRING"] = redis_server.url
    return env


def mes(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full = {**{k: v for k, v in os.environ.items() if not k.startswith(("MES_", "SQL_", "REDIS_"))}, **env}
    return subprocess.run([sys.executable, "-m", "mes", *args], env=full, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def test_help_explains_every_command():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("up", "demo", "worker", "serve", "init-db", "migrate", "replay", "verify"):
        assert command in result.output
        sub = CliRunner().invoke(cli, [command, "--help"])
        assert sub.exit_code == 0 and len(sub.output) > 80, command


def test_init_db_and_verify(backend):
    env = env_of(backend)
    done = mes(env, "init-db")
    assert done.returncode == 0, done.stderr
    assert "ready" in done.stdout
    storage = backend.storage()
    storage.writer.write(conversation("v", 2))
    ok = mes(env, "verify")
    assert ok.returncode == 0 and "equal a recount" in ok.stdout, ok.stderr
    with storage.engine.begin() as conn:
        conn.execute(text("UPDATE mes_daily_stats SET messages = messages + 1"))
    bad = mes(env, "verify")
    assert bad.returncode == 1 and "difference" in bad.stderr


def test_serve_answers_and_stops_on_sigterm(backend):
    port = free_port()
    env = {**os.environ, **env_of(backend, MES_API_KEY="k" * 20, MES_API_PORT=str(port))}
    server = subprocess.Popen([sys.executable, "-m", "mes", "serve"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "mes serve did not answer"
            time.sleep(0.2)
        listed = httpx.get(f"http://127.0.0.1:{port}/api/v1/conversations", params={"user_id": 1},
                           headers={"Authorization": "Bearer " + "k" * 20})  # fmt: skip
        assert listed.status_code == 200 and listed.json()["conversations"] == []
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0


def test_demo_goes_the_whole_way_through_a_running_worker(backend, redis_server, tmp_path):
    env = env_of(backend, redis_server)
    full = {**os.environ, **env}
    worker_log = (tmp_path / "worker.log").open("w+")
    worker = subprocess.Popen([sys.executable, "-m", "mes", "worker"], env=full,
                              stdout=worker_log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        done = mes(env, "demo", "--user-id", "42", "--timeout", "60")
        worker_log.seek(0)
        assert done.returncode == 0, f"{done.stdout}{done.stderr}\nworker:\n{worker_log.read()[-3000:]}"
        assert "read back (user 42)" in done.stdout and "rate limit exceeded" in done.stdout
        assert "2 conversations, 9 messages" in done.stdout
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        worker_log.close()


def test_demo_without_a_queue_says_what_is_missing(backend, tmp_path):
    done = mes(env_of(backend, MES_DATA_DIR=str(tmp_path / "empty")), "demo")
    assert done.returncode == 2 and "REDIS_CONN_STRING" in done.stderr and "Traceback" not in done.stderr


def test_replay_dead_letters_and_spool(backend, redis_server, tmp_path):
    settings = mes_settings(backend, redis_server, MES_SPOOL_DIR=str(tmp_path / "spool"))
    storage = Storage.open(settings.database)
    # a dead letter whose cause was since fixed (here: a valid event put there by hand)
    event = conversation("from-dead-letter", 1)[0]
    with storage.engine.begin() as conn:
        conn.execute(insert(storage.catalog.dead_letters).values(
            event_id=event["event_id"], reason="was refused by a bug since fixed", payload=orjson.dumps(event),
            fingerprint="f" * 32, created_at=int(time.time())))  # fmt: skip
    # a gateway that died with events in its spool
    producer = Producer(settings.producer)
    producer._transport = None  # as if Redis never answered: everything goes to the spool
    for ev in conversation("from-spool", 2):
        producer.record_serialized(orjson.dumps(ev))
    producer.close()
    assert producer.stats().spooled == 2
    env = env_of(backend, redis_server, MES_SPOOL_DIR=str(tmp_path / "spool"))
    dead = mes(env, "replay", "dead-letters")
    assert dead.returncode == 0 and "replayed 1" in dead.stdout, dead.stderr
    spool = mes(env, "replay", "spool")
    assert spool.returncode == 0 and "re-sent 2" in spool.stdout, spool.stderr
    run_workers(settings, redis_server, storage)
    reader = HistoryReader(storage)
    assert reader.get_conversation("from-dead-letter", 1) is not None
    assert reader.get_conversation("from-spool", 1)["request_count"] == 2
    with storage.engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM mes_dead_letters")).scalar_one() == 0
    storage.close()
