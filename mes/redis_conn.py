"""``REDIS_CONN_STRING`` read once, and the one place a Redis client is made from it.

Forms (every ``mes`` process, the producer and the API call :func:`connect`):

* ``redis://[[user]:password@]host:6379[/db]``, ``rediss://`` (TLS), ``unix:///path.sock``:
  redis-py's own URLs, with its query options (``?ssl_ca_certs=/ca.pem``,
  ``ssl_cert_reqs=none``, ...).
* ``redis+sentinel://[[user]:password@]host:26379[,host2:26379...]/mymaster[/db]``
  (``rediss+sentinel://`` for TLS): Redis Sentinel. The client asks the sentinels
  (in order, the first that answers) where the primary of ``mymaster`` is, and asks again
  after a failover: a connection to a demoted primary fails as a ``ConnectionError``
  (redis-py's ``SentinelManagedConnection``), which the producer spools and a worker
  waits out. The password is the data nodes' (``requirepass``); the sentinels' own are
  query options: ``sentinel_username``, ``sentinel_password``. TLS options
  (``ssl=true``, ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``,
  ``ssl_check_hostname``) apply to sentinels and data nodes alike.

MES's own query options, in either form:

* ``wait_replicas=N`` — the producer counts a push as done only once ``N`` replicas
  acknowledged it (Redis ``WAIT``); otherwise it spools and re-sends (the ledger drops
  the duplicates). Replication is asynchronous: without it, a primary that dies loses
  what it acknowledged and had not yet passed on. Default: ``1`` with Sentinel, ``0``
  otherwise.
* ``wait_timeout_ms=T`` — how long the producer waits for those acknowledgements
  (default 500).

Parsing is pure (no redis import): ``core.settings`` checks the value at start-up through
:func:`parse_redis_url`, and errors quote no part of the value but option names.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from mes.errors import ConfigError

if TYPE_CHECKING:
    import redis

__all__ = ["RedisTarget", "connect", "describe", "parse_redis_url"]

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
_SSL_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")
_SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password", "ssl", *_SSL_OPTIONS)
_MES_OPTIONS = ("wait_replicas", "wait_timeout_ms")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclasses.dataclass(frozen=True)
class RedisTarget:
    """Where Redis is: a redis-py URL, or sentinels and a service name. Secrets stay out
    of the repr."""

    url: str = dataclasses.field(repr=False)  # for redis-py: MES's own options removed
    sentinels: tuple[tuple[str, int], ...] = ()  # empty: ``url`` is a plain redis-py URL
    service: str | None = None
    db: int = 0
    username: str | None = dataclasses.field(default=None, repr=False)
    password: str | None = dataclasses.field(default=None, repr=False)
    sentinel_username: str | None = dataclasses.field(default=None, repr=False)
    sentinel_password: str | None = dataclasses.field(default=None, repr=False)
    ssl: bool = False
    ssl_options: tuple[tuple[str, Any], ...] = ()
    wait_replicas: int = 0
    wait_timeout_ms: int = 500

    @property
    def is_sentinel(self) -> bool:
        return bool(self.sentinels)


def parse_redis_url(url: str) -> RedisTarget:
    """``url`` understood, or :class:`ConfigError` naming what is wrong (never a value)."""
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    query, mes = _take_mes_options(url)
    if scheme not in SENTINEL_SCHEMES:
        # (by hand: urlunsplit would turn unix:///path into unix:/path)
        plain = url.split("?", 1)[0] + (f"?{urlencode(query)}" if query else "") if mes else url
        return RedisTarget(url=plain, wait_replicas=mes.get("wait_replicas", 0),
                           wait_timeout_ms=mes.get("wait_timeout_ms", 500))  # fmt: skip
    rest = url[len(scheme) + len(sep) :]
    netloc, _, path = rest.partition("/")
    path = path.split("?", 1)[0].split("#", 1)[0]
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    sentinels = tuple(_address(h, n) for n, h in enumerate(hosts.split(","), 1))
    segments = [s for s in path.split("/") if s]
    if not segments or len(segments) > 2:
        raise ConfigError(
            "REDIS_CONN_STRING: a Sentinel URL names its service and, optionally, a database: "
            "redis+sentinel://host:26379[,host2:26379]/mymaster[/0]"
        )
    db = 0
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise ConfigError("REDIS_CONN_STRING: the database after the service name must be a number")
        db = int(segments[1])
    options = dict(query)
    unknown = sorted(set(options) - set(_SENTINEL_OPTIONS))
    if unknown:
        raise ConfigError(
            f"REDIS_CONN_STRING: unknown Sentinel option(s) {', '.join(unknown)} "
            f"(known: {', '.join(_SENTINEL_OPTIONS + _MES_OPTIONS)})"
        )
    ssl = scheme == "rediss+sentinel" or _flag(options.get("ssl"), "ssl")
    ssl_options: list[tuple[str, Any]] = []
    for name in _SSL_OPTIONS:
        if name in options:
            value: Any = options[name]
            if name == "ssl_check_hostname":
                value = _flag(value, name)
            ssl_options.append((name, value))
    return RedisTarget(
        url=url, sentinels=sentinels, service=unquote(segments[0]), db=db, username=username,
        password=password, sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password") or None, ssl=ssl,
        ssl_options=tuple(ssl_options), wait_replicas=mes.get("wait_replicas", 1),
        wait_timeout_ms=mes.get("wait_timeout_ms", 500),
    )  # fmt: skip


def _take_mes_options(url: str) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """The URL's query without MES's own options, and those options as numbers."""
    query = urlsplit(url).query
    pairs = parse_qsl(query, keep_blank_values=True)
    mes: dict[str, int] = {}
    rest: list[tuple[str, str]] = []
    for name, value in pairs:
        if name in _MES_OPTIONS:
            if not value.isdigit():
                raise ConfigError(f"REDIS_CONN_STRING: {name} must be a whole number, 0 or more")
            mes[name] = int(value)
        else:
            rest.append((name, value))
    return rest, mes


def _address(text: str, n: int) -> tuple[str, int]:
    host, port = text, "26379"
    if text.startswith("["):  # [::1]:26379
        host, _, tail = text[1:].partition("]")
        if tail:
            if not tail.startswith(":"):
                host = ""
            port = tail[1:]
    elif ":" in text:
        host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"REDIS_CONN_STRING: sentinel address {n} is malformed, want host:port "
            "(percent-encode '/', '?', '#', ',' and '@' in a password)"
        )
    return host, int(port)


def _flag(value: str | None, name: str) -> bool:
    if value is None or value.lower() in _FALSE:
        return False
    if value.lower() in _TRUE:
        return True
    raise ConfigError(f"REDIS_CONN_STRING: {name} must be true or false")


def describe(url: str) -> str:
    """``url`` fit for a log line or a report: no user, password or query options."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "(malformed)"
    rest = rest.split("?", 1)[0].split("#", 1)[0]
    netloc, slash, path = rest.partition("/")
    return f"{scheme}://{netloc.rpartition('@')[2]}{slash}{path}"


def connect(url: str | RedisTarget, **kwargs: Any) -> redis.Redis:
    """A ``redis.Redis`` for ``url``; ``kwargs`` (timeouts, ``command_packer``, ...) go to
    every connection to the data nodes.

    With Sentinel the client is a ``master_for()`` client: it finds the primary through
    the sentinels on each new connection. The sentinels are asked with the caller's
    connect timeout and at most a 2 s read timeout, so a silent sentinel is passed over
    rather than waited on; ``close()`` closes the sentinel connections too.
    """
    import redis

    target = url if isinstance(url, RedisTarget) else parse_redis_url(url)
    if not target.is_sentinel:
        return redis.Redis.from_url(target.url, **kwargs)
    from redis.sentinel import Sentinel

    tls: dict[str, Any] = dict(target.ssl_options)
    if target.ssl:
        tls["ssl"] = True
    connect_timeout = kwargs.get("socket_connect_timeout") or 1.0
    sentinel_kwargs: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": min(kwargs.get("socket_timeout") or 2.0, 2.0),
        "username": target.sentinel_username,
        "password": target.sentinel_password,
        **tls,
    }
    manager = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]  # redis-py: Sentinel is unannotated
    client = manager.master_for(  # type: ignore[no-untyped-call]  # redis-py: master_for is unannotated
        target.service, redis_class=_sentinel_redis_class(), db=target.db, username=target.username,
        password=target.password, **tls, **kwargs,
    )  # fmt: skip
    client.sentinel_manager = manager
    return cast("redis.Redis", client)  # a _sentinel_redis_class(): redis-py's master_for returns Any


@functools.cache
def _sentinel_redis_class() -> type[redis.Redis]:
    """``redis.Redis`` for a ``master_for()`` client that also closes its connections to
    the sentinels (made on first use: importing this module must not import redis)."""
    import redis

    class SentinelRedis(redis.Redis):
        sentinel_manager: Any = None

        def close(self) -> None:
            super().close()
            if self.sentinel_manager is not None:
                self.sentinel_manager.close()

    return SentinelRedis
