"""``mes up`` on an empty folder with no configuration: SQLite and the embedded Redis."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from mes.config.settings import ProducerSettings
from mes.embedded import find_redis_binary, free_port, remembered_redis_url, runtime_redis_url
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


def _send_one(url: str, spool: Any, conversation: str = "port") -> None:
    producer = Producer(ProducerSettings.from_env({"REDIS_CONN_STRING": url, "MES_SPOOL_DIR": str(spool)}))
    producer.save_chat_completion(conversation, [{"role": "user", "content": "hi"}],
                                  {"choices": [{"message": {"role": "assistant", "content": "a"}}]},
                                  "gpt-4o", 5, 1, 1)  # fmt: skip
    producer.close()
    assert producer.stats().enqueued == 1


def test_embedded_redis_keeps_its_port_across_quick_restarts(tmp_path):
    """Stopped and started again at once, `mes up` listens on the same Redis port: the port
    asked for although its last connections are in TIME_WAIT, then the one it remembers."""
    if find_redis_binary() is None:
        missing("redis", "no embedded Redis (pip install 'mes-history[embedded]') and no redis-server")
    data = str(tmp_path / "mes-data")
    wanted = free_port()
    up = Up(tmp_path)
    up.env["MES_EMBEDDED_REDIS_PORT"] = str(wanted)
    urls = []
    for run in range(3):
        if run == 2:
            up.env["MES_EMBEDDED_REDIS_PORT"] = "0"  # any port: the one this data folder used last
        up.start()
        try:
            urls.append(runtime_redis_url(data))
            _send_one(urls[-1], tmp_path / "spool")  # connections the stop leaves in TIME_WAIT
        finally:
            assert up.interrupt() == 0, (tmp_path / "up.log").read_text()[-3000:]
    assert urls == [f"redis://127.0.0.1:{wanted}/0"] * 3, urls
    assert remembered_redis_url(data) == urls[0]  # kept for gateways and the next start
    assert "moved" not in (tmp_path / "up.log").read_text()


def test_embedded_redis_that_must_move_says_so_and_writes_its_url(tmp_path):
    if find_redis_binary() is None:
        missing("redis", "no embedded Redis (pip install 'mes-history[embedded]') and no redis-server")
    data = str(tmp_path / "mes-data")
    up = Up(tmp_path)
    up.start()
    first = runtime_redis_url(data)
    assert up.interrupt() == 0
    assert first is not None
    old_port = int(first.rsplit(":", 1)[1].split("/")[0])
    with socket.socket() as squatter:  # another program takes the port meanwhile
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the TIME_WAIT the stop left
        squatter.bind(("127.0.0.1", old_port))
        squatter.listen()
        (tmp_path / "up.log").write_text("")
        up.start()
        try:
            now = runtime_redis_url(data)
            assert now is not None and now != first
            assert remembered_redis_url(data) == now  # where gateways and `mes demo` find it
            log = (tmp_path / "up.log").read_text()
            moved = [line for line in log.splitlines() if "moved" in line]
            assert len(moved) == 1 and f"port {old_port} is taken" in moved[0] and now in moved[0], log
            _send_one(now, tmp_path / "spool")
        finally:
            assert up.interrupt() == 0


def test_doctor_under_mes_up_knows_its_key(tmp_path):
    """`mes up` made an operator key (MES_API_KEY unset): doctor, run beside it, does not
    claim that every call gets 401, and that key does work."""
    if find_redis_binary() is None:
        missing("redis", "no embedded Redis (pip install 'mes-history[embedded]') and no redis-server")
    up = Up(tmp_path)
    up.start()
    try:
        assert up.get("/api/v1/conversations", user_id=1).status_code == 200
        env = {k: v for k, v in up.env.items() if k != "MES_API_KEY"}
        done = subprocess.run([sys.executable, "-m", "mes", "doctor"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        out = done.stdout + done.stderr
        assert "401" not in out, out
        auth = [line for line in out.splitlines() if "read API auth" in line]
        assert len(auth) == 1 and auth[0].startswith("OK") and "api-key" in auth[0], out
        assert up.key not in out  # the key itself is not printed
    finally:
        assert up.interrupt() == 0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        return False


def test_a_killed_mes_up_leaves_nothing_running_after_the_next_start(tmp_path):
    """`mes up` SIGKILLed: its Redis and workers outlive it. The next `mes up` on the same
    folder stops them (workers first, Redis with its AOF flushed), takes the same port and
    loses nothing; while one `mes up` runs, a second on the same folder is refused."""
    if find_redis_binary() is None:
        missing("redis", "no embedded Redis (pip install 'mes-history[embedded]') and no redis-server")
    data = tmp_path / "mes-data"
    up = Up(tmp_path)
    up.start()
    first = runtime_redis_url(str(data))
    assert first is not None
    note = json.loads((data / "run" / "up.json").read_text())
    assert note["up"] == up.process.pid
    _send_one(first, tmp_path / "spool")
    deadline = time.monotonic() + 30
    while up.get("/api/v1/stats/conversations", user_id=5).json()["total_messages"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    # a second one on the same folder: refused in one line, the first one untouched
    other = Up(tmp_path)
    done = subprocess.run([sys.executable, "-m", "mes", "up"], cwd=tmp_path, env=other.env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode != 0 and "already running" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    up.process.kill()
    up.process.wait(10)
    assert _alive(note["redis"]) and _alive(note["worker"])  # what SIGKILL leaves behind
    _send_one(first, tmp_path / "spool", "after-kill")  # into the orphaned Redis (its workers may take it)
    (tmp_path / "up.log").write_text("")
    up.start()
    try:
        log = (tmp_path / "up.log").read_text()
        assert "stopped the workers" in log and "stopped the embedded Redis" in log, log
        assert not _alive(note["redis"]) and not _alive(note["worker"])
        assert runtime_redis_url(str(data)) == first and "moved" not in log  # same port
        deadline = time.monotonic() + 30
        while up.get("/api/v1/stats/conversations", user_id=5).json()["total_messages"] < 4:
            assert time.monotonic() < deadline, "the event queued in the orphaned Redis was lost"
            time.sleep(0.2)
        assert up.get("/api/v1/stats/conversations", user_id=5).json()["total_messages"] == 4
    finally:
        assert up.interrupt() == 0
    assert not (data / "run" / "up.json").exists()
