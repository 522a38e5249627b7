"""``mes up`` on an empty folder with no configuration: SQLite and the embedded Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from mes.core.settings import ProducerSettings
from mes.embedded import find_redis_binary, free_port, runtime_redis_url
from mes.producer import Producer

from .conftest import missing

pytestmark = pytest.mark.slow

CONFIG_VARS = (
    "MES_SQL_DSN",
    "SQL_DSN",
    "REDIS_CONN_STRING",
    "MES_DAILY_PARTITION",
    "MES_API_KEY",
    "MES_DATA_DIR",
)


class Up:
    def __init__(self, folder: Any) -> None:
        self.folder = folder
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARS}
        self.env.update(MES_API_PORT=str(self.port), MES_EMBEDDED_REDIS_PORT="0")
        self.process: subprocess.Popen[Any] | None = None

    def start(self) -> None:
        with open(self.folder / "up.log", "ab") as log:  # the child keeps its own copy
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mes", "up"], cwd=self.folder, env=self.env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.folder / "up.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("mes up did not become ready:\n" + (self.folder / "up.log").read_text())

    def interrupt(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(90)

    @property
    def key(self) -> str:
        return (self.folder / "mes-data" / "api-key").read_text().strip()

    def get(self, path: str, **params: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.key}"}
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", params=params, headers=headers, timeout=10)


def test_up_with_no_configuration_records_reads_survives_restart(tmp_path):
    if find_redis_binary() is None:
        missing("redis", "no embedded Redis (pip install 'mes-history[embedded]') and no redis-server")
    up = Up(tmp_path)
    up.start()
    try:
        url = runtime_redis_url(str(tmp_path / "mes-data"))
        assert url
        producer = Producer(
            ProducerSettings.from_env({"REDIS_CONN_STRING": url, "MES_SPOOL_DIR": str(tmp_path / "spool")})
        )
        for n in range(200):
            producer.save_chat_completion(
                f"conv-{n % 20}",
                [{"role": "user", "content": f"question {n} ✨"}],
                {"choices": [{"message": {"role": "assistant", "content": f"answer {n}"}, "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}},
                "gpt-4o", 7, 1, 1,
            )  # fmt: skip
        producer.close()
        assert producer.stats().enqueued == 200
        deadline = time.monotonic() + 60
        while True:
            stats = up.get("/api/v1/stats/conversations", user_id=7).json()
            if stats["total_messages"] == 400 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert stats["total_conversations"] == 20 and stats["total_messages"] == 400
        msgs = up.get("/api/v1/conversations/conv-3", limit=100).json()["messages"]
        assert msgs[0]["content"] == "question 3 ✨" and len(msgs) == 20
        # more events, and SIGINT right away: what the worker has not written stays queued
        producer = Producer(
            ProducerSettings.from_env({"REDIS_CONN_STRING": url, "MES_SPOOL_DIR": str(tmp_path / "spool")})
        )
        for n in range(300):
            producer.save_chat_completion(
                "late", [{"role": "user", "content": f"late {n}"}],
                {"choices": [{"message": {"role": "assistant", "content": "ok"}}]}, "gpt-4o", 7, 1, 1,
            )  # fmt: skip
        producer.close()
        assert producer.stats().enqueued == 300
    finally:
        assert up.interrupt() == 0, (tmp_path / "up.log").read_text()[-3000:]
    assert runtime_redis_url(str(tmp_path / "mes-data")) is None  # cleaned up
    up.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            stats = up.get("/api/v1/stats/conversations", user_id=7).json()
            if stats["total_messages"] >= 1000 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert stats["total_messages"] == 1000  # 400 before the restart + 600 after: none lost, none twice
        assert len(up.get("/api/v1/conversations", user_id=7, limit=100).json()["conversations"]) == 21
    finally:
        assert up.interrupt() == 0


def test_up_uses_the_configured_database_and_redis(server_backend, redis_server, tmp_path):
    """With MES_SQL_DSN and REDIS_CONN_STRING set, `mes up` runs on those (no embedded Redis)."""
    up = Up(tmp_path)
    up.env.update(
        server_backend.env(REDIS_CONN_STRING=redis_server.url, MES_DATA_DIR=str(tmp_path / "mes-data"))
    )
    up.start()
    try:
        assert runtime_redis_url(str(tmp_path / "mes-data")) is None  # nothing embedded
        producer = Producer(ProducerSettings.from_env({"REDIS_CONN_STRING": redis_server.url,
                                                       "MES_SPOOL_DIR": str(tmp_path / "spool")}))  # fmt: skip
        for n in range(50):
            producer.save_chat_completion(f"c{n % 5}", [{"role": "user", "content": f"q{n}"}],
                                          {"choices": [{"message": {"role": "assistant", "content": "a"}}]},
                                          "gpt-4o", 3, 1, 1)  # fmt: skip
        producer.close()
        deadline = time.monotonic() + 60
        while up.get("/api/v1/stats/conversations", user_id=3).json()["total_messages"] < 100:
            assert time.monotonic() < deadline, "events did not arrive"
            time.sleep(0.3)
        assert redis_server.client().dbsize() > 0  # the queue lives in the configured Redis
    finally:
        assert up.interrupt() == 0
