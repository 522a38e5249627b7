"""Start-up checks of the ``mes`` commands: each problem is one line, said before anything starts.

A command that needs the database or Redis asks them first and turns what went wrong
into a :class:`~mes.errors.ConfigError` (a setting to fix: exit 2) or a
:class:`~mes.errors.RetryableError` (a dependency that does not answer: exit 3),
whose message names the variable, the address (never a password) and the fix.
``MES_STARTUP_WAIT`` (seconds, default 0) lets a command wait that long for a dependency
that does not answer yet (an orchestrator starting MES with its database) before it gives up.
Once started, workers ride out outages as before: this is about start-up only.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from mes.errors import ConfigError, DatabaseUnavailable, QueueUnavailable, RetryableError
from mes.redis_conn import SENTINEL_SCHEMES, describe

__all__ = ["check_database", "check_listen", "check_redis", "redis_address"]

T = TypeVar("T")


def redis_address(url: str) -> str:
    """Where ``url`` points, without its user or password: ``host:port``, the socket path,
    or for Sentinel the sentinels and the service (``redis+sentinel://h1:26379,h2:26379/mymaster``)."""
    if url.partition("://")[0] in SENTINEL_SCHEMES:
        return describe(url)
    try:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return parts.path or "a unix socket"
        return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
    except ValueError:
        return "(unparsable address)"


def _waiting(check: Callable[[], T], what: str, wait_s: float) -> T:
    """Run ``check``; while it raises a RetryableError and ``wait_s`` is not spent, try again
    (logged, as a worker waits: SIGTERM or SIGINT during the wait exit cleanly)."""
    deadline = time.monotonic() + wait_s
    attempt = 0
    while True:
        try:
            return check()
        except RetryableError as exc:
            if time.monotonic() >= deadline:
                raise
            attempt += 1
            from mes.worker.main import pause_before_retry

            pause_before_retry(what, exc, attempt)


def check_database(settings: Any, wait_s: float = 0.0) -> None:
    """Open the MES database as every process does (create it if missing, migrate), then close."""
    from mes.storage import Storage

    source = settings.database.source

    def attempt() -> None:
        try:
            Storage.open(settings.database).close()
        except DatabaseUnavailable as exc:
            raise DatabaseUnavailable(
                f"{exc} (start the database server, or fix the host and port in {source})"
            ) from None

    _waiting(attempt, "database", wait_s)


def check_redis(settings: Any, wait_s: float = 0.0) -> None:
    """PING the queue's Redis (REDIS_CONN_STRING) through the client the workers use."""
    import redis
    from redis.exceptions import AuthorizationError

    from mes.worker.main import connect

    url = settings.queue.redis_url
    where = redis_address(url) if url else ""

    def attempt() -> None:
        client = connect(settings)
        try:
            client.ping()
        except (redis.AuthenticationError, AuthorizationError) as exc:
            raise ConfigError(
                f"REDIS_CONN_STRING: Redis at {where} refused the login ({_first_line(exc)}): "
                "fix the user or password in REDIS_CONN_STRING"
            ) from None
        except redis.ResponseError as exc:  # NOAUTH and friends: a password is needed
            raise ConfigError(
                f"REDIS_CONN_STRING: Redis at {where} answered {_first_line(exc)!r}: "
                "check the password and database number in REDIS_CONN_STRING"
            ) from None
        except redis.RedisError as exc:
            raise QueueUnavailable(
                f"REDIS_CONN_STRING: cannot reach Redis at {where}: {_first_line(exc)} "
                "(start Redis, or fix REDIS_CONN_STRING)"
            ) from None
        finally:
            client.close()

    try:
        _waiting(attempt, "redis", wait_s)
    except ValueError as exc:  # redis-py parses the URL when connecting
        raise ConfigError(f"REDIS_CONN_STRING is not a Redis URL (redis://host:6379/0): {exc}") from None


def check_listen(host: str, port: int, variable: str = "MES_API_PORT") -> None:
    """Whether the API can listen on ``host:port`` (probed as uvicorn binds: SO_REUSEADDR)."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ConfigError(f"MES_API_HOST: cannot listen on {host!r}: {exc.strerror or exc}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as exc:
            raise ConfigError(
                f"{variable}: the read API cannot listen on {host}:{port}: {exc.strerror or exc} "
                f"(stop what listens there, or choose another port: --port or {variable})"
            ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]
