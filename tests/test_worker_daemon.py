"""A worker is a daemon: Redis or the database down later (or at start, with
MES_STARTUP_WAIT) makes it wait, not exit; when they are back it carries on. SIGTERM
while it waits stops it cleanly. (Without MES_STARTUP_WAIT, a dependency down at start
is one line and an exit: tests/test_startup.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import orjson

from mes.producer import Producer
from mes.storage import Storage

from .factories import conversation
from .netproxy import Proxy
from .test_pipeline import applied_events, mes_settings


def start_worker(env: dict[str, str], log: Any) -> subprocess.Popen[Any]:
    return subprocess.Popen(
        [sys.executable, "-m", "mes", "worker"], env={**os.environ, **env}, stdout=log, stderr=log
    )


def wait_applied(storage: Storage, count: int, timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ids = applied_events(storage)
        if len(ids) >= count:
            return ids
        time.sleep(0.3)
    return applied_events(storage)


def test_redis_restarts_under_a_running_worker(backend, redis_server, tmp_path):
    settings = mes_settings(backend, redis_server)
    storage = Storage.open(settings.database)
    env = backend.env(REDIS_CONN_STRING=redis_server.url, MES_DAILY_PARTITION="true")
    with open(tmp_path / "worker.log", "ab") as log:
        worker = start_worker(env, log)
    try:
        time.sleep(2)
        redis_server.stop()
        time.sleep(3)  # the worker loses Redis mid-wait
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-2000:]
        redis_server.start()
        producer = Producer(settings.producer)
        for ev in conversation("after-restart", 3):
            producer.record_serialized(orjson.dumps(ev))
        producer.close()
        assert len(wait_applied(storage, 3)) == 3
        assert "redis_unavailable" in (tmp_path / "worker.log").read_text()
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
        storage.close()


def test_database_down_at_start_then_back(server_backend, redis_server, tmp_path):
    proxy = Proxy(*server_backend.address)
    settings = mes_settings(server_backend, redis_server)
    storage = Storage.open(settings.database)
    proxy.cut()
    env = server_backend.env(REDIS_CONN_STRING=redis_server.url, MES_DAILY_PARTITION="true",
                             MES_SQL_DSN=server_backend.proxied_dsn(proxy.port), MES_STARTUP_WAIT="600")  # fmt: skip
    with open(tmp_path / "worker.log", "ab") as log:
        worker = start_worker(env, log)
    try:
        time.sleep(4)
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-2000:]
        assert "database_unavailable" in (tmp_path / "worker.log").read_text()
        proxy.restore()
        producer = Producer(settings.producer)
        for ev in conversation("db-back", 2):
            producer.record_serialized(orjson.dumps(ev))
        producer.close()
        assert len(wait_applied(storage, 2)) == 2
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        proxy.close()
        storage.close()


def test_sigterm_while_waiting_exits_cleanly(backend, redis_server, tmp_path):
    redis_server.stop()
    env = backend.env(REDIS_CONN_STRING=redis_server.url, MES_DAILY_PARTITION="true", MES_STARTUP_WAIT="600")
    with open(tmp_path / "worker.log", "ab") as log:
        worker = start_worker(env, log)
    time.sleep(3)
    assert worker.poll() is None
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(15) == 0
