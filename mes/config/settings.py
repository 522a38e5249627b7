"""Settings, read from the environment once, at the edge, into frozen values.

Library code takes these objects as arguments and never reads ``os.environ`` itself.
The names come from the seed (New API's MES): ``MES_SQL_DSN``, ``SQL_DSN``,
``MES_DAILY_PARTITION``, ``SQL_MAX_IDLE_CONNS``, ``SQL_MAX_OPEN_CONNS``,
``SQL_MAX_LIFETIME``, ``REDIS_CONN_STRING``, ``TZ``, ``DEBUG``; what MES adds starts
with ``MES_``. Every problem is a one-line :class:`~mes.errors.ConfigError` that
names the variable and never prints a password.

The sections are separate so that the producer, which runs inside the gateway, reads
only what it needs (a bad ``MES_SQL_DSN`` is the worker's problem, not the gateway's).
"""

from __future__ import annotations

import dataclasses
import os
import re
import zoneinfo
from collections.abc import Mapping
from urllib.parse import SplitResult, urlsplit

from mes.config.dsn import DatabaseConfig, parse_dsn
from mes.errors import ConfigError
from mes.privacy.capture import Capture, CapturePolicy, load_rules
from mes.privacy.policy import Privacy
from mes.privacy.redact import Redactor, load_plugin, parse_redact
from mes.redis_conn import SENTINEL_SCHEMES, parse_redis_url

__all__ = [
    "ApiSettings",
    "DatabaseSettings",
    "PrivacySettings",
    "ProducerSettings",
    "QueueSettings",
    "Settings",
    "WorkerSettings",
    "load_timezone",
]

Env = Mapping[str, str]

_TRUE = frozenset({"1", "true", "yes", "on", "y", "t"})
_FALSE = frozenset({"0", "false", "no", "off", "n", "f", ""})


def _get(env: Env, name: str) -> str | None:
    value = env.get(name)
    return None if value is None else value.strip()


def env_bool(env: Env, name: str, default: bool) -> bool:
    value = _get(env, name)
    if value is None:
        return default
    low = value.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean (use true or false)")


def env_int(env: Env, name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
    value = _get(env, name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a whole number") from None
    if number < minimum or (maximum is not None and number > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise ConfigError(f"{name}={number} is out of range: it must be {bound}")
    return number


def load_timezone(env: Env) -> zoneinfo.ZoneInfo:
    """The zone whose midnight separates daily tables: ``TZ``, or UTC when unset."""
    name = (_get(env, "TZ") or "UTC").lstrip(":")
    if os.path.isabs(name):  # TZ=/usr/share/zoneinfo/Asia/Shanghai
        marker = "zoneinfo/"
        name = name.split(marker, 1)[1] if marker in name else name
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"TZ={name!r} is not a known time zone (use an IANA name such as Asia/Shanghai)"
        ) from None


def data_dir(env: Env) -> str:
    return os.path.abspath(_get(env, "MES_DATA_DIR") or "mes-data")


_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def _check_redis_url(url: str) -> None:
    """Refuse here, in words that quote none of it, a URL redis-py would refuse later with
    a piece of it: ``redis://:pa/ss@h`` ends its host at the password's ``/``, and
    redis-py's "Port could not be cast to integer value as 'pa'" would print half of it."""
    match = _SCHEME.match(url)
    scheme = match.group(1).lower() if match else None  # safe to quote: the value starts with it
    if scheme not in ("redis", "rediss", "unix", *SENTINEL_SCHEMES):
        got = f"got scheme {scheme!r}" if scheme else "no scheme"
        raise ConfigError(
            f"REDIS_CONN_STRING must be a redis://, rediss://, unix:// or redis+sentinel:// URL ({got})"
        )
    if scheme in ("unix", *SENTINEL_SCHEMES):
        parse_redis_url(url)  # the Sentinel form, and MES's own options (wait_replicas)
        return
    parts = _split(url)
    if parts is None:
        raise ConfigError(
            "REDIS_CONN_STRING: the host or port is malformed (percent-encode '/', '?', '#' and '@' "
            "in a password)"
        )
    if "@" in parts.path + parts.query + parts.fragment:
        raise ConfigError(
            "REDIS_CONN_STRING: an '@' after the host (percent-encode '/', '?', '#' and '@' in a password)"
        )
    parse_redis_url(url)


def _split(url: str) -> SplitResult | None:
    """``url`` split, or None where urllib refuses it. (Returned, not raised from the
    ``except``: urllib's error, which quotes the port, would ride along as ``__context__``.)"""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- read for the ValueError a malformed port raises
    except ValueError:
        return None
    return parts


@dataclasses.dataclass(frozen=True)
class QueueSettings:
    """Where the queue lives and what it is called."""

    # None: MES runs an embedded Redis (``mes up``) or none is configured. Not in the repr:
    # it may hold the password.
    redis_url: str | None = dataclasses.field(repr=False)
    queue_name: str = "mes"
    # Seconds between retries of a failed batch job; after the last one it waits in RQ's
    # failed registry for ``mes replay``. Default: a minute of blips, then hours.
    retry_intervals: tuple[int, ...] = (2, 5, 15, 30, 60, 180, 600, 1800)
    job_timeout: int = 60

    @classmethod
    def from_env(cls, env: Env) -> QueueSettings:
        url = _get(env, "REDIS_CONN_STRING") or None
        if url is not None:
            _check_redis_url(url)
        name = _get(env, "MES_QUEUE") or "mes"
        if not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"MES_QUEUE={name!r} may hold only letters, digits, '-' and '_'")
        raw = _get(env, "MES_RETRY_INTERVALS")
        intervals = cls.retry_intervals
        if raw:
            try:
                intervals = tuple(int(x) for x in raw.split(",") if x.strip())
            except ValueError:
                raise ConfigError(
                    f"MES_RETRY_INTERVALS={raw!r} must be seconds separated by commas, e.g. 2,5,15"
                ) from None
            if any(i < 0 for i in intervals):
                raise ConfigError(f"MES_RETRY_INTERVALS={raw!r} must not hold negative numbers")
        return cls(
            redis_url=url,
            queue_name=name,
            retry_intervals=intervals,
            job_timeout=env_int(env, "MES_JOB_TIMEOUT", 60, minimum=5, maximum=3600),
        )


@dataclasses.dataclass(frozen=True)
class ProducerSettings:
    """How the in-process producer batches and where it spools."""

    queue: QueueSettings
    spool_dir: str
    linger_ms: int = 50  # the longest an event waits in the gateway's memory before a flush
    batch_max_events: int = 500
    batch_max_bytes: int = 4 << 20
    buffer_max_events: int = 50_000  # past this, calls spill straight to the spool
    buffer_max_bytes: int = 64 << 20
    direct_job_min_events: int = 200  # a flush this large becomes its own RQ job
    debug: bool = False

    @classmethod
    def from_env(cls, env: Env) -> ProducerSettings:
        base = data_dir(env)
        return cls(
            queue=QueueSettings.from_env(env),
            spool_dir=os.path.abspath(_get(env, "MES_SPOOL_DIR") or os.path.join(base, "spool")),
            linger_ms=env_int(env, "MES_LINGER_MS", 50, minimum=1, maximum=60_000),
            batch_max_events=env_int(env, "MES_BATCH_MAX_EVENTS", 500, minimum=1, maximum=100_000),
            batch_max_bytes=env_int(env, "MES_BATCH_MAX_BYTES", 4 << 20, minimum=1024),
            buffer_max_events=env_int(env, "MES_BUFFER_MAX_EVENTS", 50_000, minimum=1),
            buffer_max_bytes=env_int(env, "MES_BUFFER_MAX_BYTES", 64 << 20, minimum=1024),
            direct_job_min_events=env_int(env, "MES_DIRECT_JOB_MIN_EVENTS", 200, minimum=1),
            debug=env_bool(env, "DEBUG", False),
        )


@dataclasses.dataclass(frozen=True)
class DatabaseSettings:
    """The MES database, its pool, and how tables are partitioned by day."""

    db: DatabaseConfig
    source: str  # which variable the DSN came from, for messages
    daily_partition: bool
    timezone: zoneinfo.ZoneInfo
    max_idle_conns: int = 100
    max_open_conns: int = 1000
    max_lifetime: int = 60
    create_ahead_days: int = 2

    @classmethod
    def from_env(cls, env: Env) -> DatabaseSettings:
        base = data_dir(env)
        source, raw = "MES_SQL_DSN", _get(env, "MES_SQL_DSN")
        if not raw:
            source, raw = "SQL_DSN", _get(env, "SQL_DSN")
        if not raw:
            source, raw = "MES_SQL_DSN", "local"
        db = parse_dsn(raw, variable=source, data_dir=base)
        idle = env_int(env, "SQL_MAX_IDLE_CONNS", 100, minimum=0)
        open_ = env_int(env, "SQL_MAX_OPEN_CONNS", 1000, minimum=1)
        if idle > open_:
            idle = open_  # Go's database/sql does the same: idle never exceeds open
        return cls(
            db=db,
            source=source,
            daily_partition=env_bool(env, "MES_DAILY_PARTITION", False),
            timezone=load_timezone(env),
            max_idle_conns=idle,
            max_open_conns=open_,
            max_lifetime=env_int(env, "SQL_MAX_LIFETIME", 60, minimum=0),
            create_ahead_days=env_int(env, "MES_CREATE_AHEAD_DAYS", 2, minimum=0, maximum=31),
        )


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    """How workers cut batches out of the staging list and retry jobs."""

    job_max_events: int = 1000
    drain_linger_ms: int = 200
    maintenance_interval: int = 15
    retention_days: int = 0  # 0: keep everything
    content_retention_days: int = 0  # 0: keep content as long as the rows
    metrics_port: int = 0  # Prometheus port (0: off); `mes worker -p N` gives process i port + i

    @classmethod
    def from_env(cls, env: Env) -> WorkerSettings:
        return cls(
            job_max_events=env_int(env, "MES_JOB_MAX_EVENTS", 1000, minimum=1, maximum=100_000),
            drain_linger_ms=env_int(env, "MES_DRAIN_LINGER_MS", 200, minimum=1, maximum=60_000),
            maintenance_interval=env_int(env, "MES_MAINTENANCE_INTERVAL", 15, minimum=1, maximum=3600),
            retention_days=env_int(env, "MES_RETENTION_DAYS", 0, minimum=0),
            content_retention_days=env_int(env, "MES_CONTENT_RETENTION_DAYS", 0, minimum=0),
            metrics_port=env_int(env, "MES_METRICS_PORT", 0, minimum=0, maximum=65535),
        )


@dataclasses.dataclass(frozen=True)
class PrivacySettings:
    """What the workers keep of each event (``MES_CAPTURE``, ``MES_CAPTURE_RULES``) and
    what they blank out of its texts first (``MES_REDACT``, ``MES_REDACTOR``)."""

    capture_rules: str | None = None  # the rules file, read and checked at start-up
    policy: CapturePolicy = dataclasses.field(default_factory=CapturePolicy)  # MES_CAPTURE is its default
    redact: tuple[str, ...] = ()  # the detectors on (MES_REDACT; unset: off)
    redactor: str | None = None  # MES_REDACTOR, package.module:function

    @classmethod
    def from_env(cls, env: Env) -> PrivacySettings:
        raw = _get(env, "MES_CAPTURE")
        capture = Capture.parse(raw, "MES_CAPTURE") if raw else Capture.FULL
        rules = _get(env, "MES_CAPTURE_RULES") or None
        policy = load_rules(rules, default=capture) if rules else CapturePolicy(default=capture)
        redact_raw = _get(env, "MES_REDACT")
        redact = parse_redact(redact_raw) if redact_raw else ()
        plugin = _get(env, "MES_REDACTOR") or None
        if plugin is not None:
            load_plugin(plugin)  # fails now, in one line, rather than in the first batch
        return cls(capture_rules=rules, policy=policy, redact=redact, redactor=plugin)

    def build(self) -> Privacy | None:
        """What the writer applies (loads the plug-in); None when it would change nothing
        (everything kept, nothing redacted: the writer then skips it)."""
        plugin = load_plugin(self.redactor) if self.redactor else None
        redactor = Redactor(self.redact, plugin) if self.redact or plugin is not None else None
        if redactor is None and self.policy.default == Capture.FULL and not self.policy.rules:
            return None
        return Privacy(self.policy, redactor)

    def describe(self) -> str:
        """One line for ``mes up`` and ``mes doctor``: ``capture full, redaction off``."""
        capture = f"capture {self.policy.default.label}"
        if self.capture_rules:
            capture += f" (rules: {self.capture_rules}, {len(self.policy.rules)} rule(s))"
        names = ",".join(self.redact) if self.redact else "off"
        redaction = f"redaction {names}" + (f" + {self.redactor}" if self.redactor else "")
        return f"{capture}, {redaction}"


@dataclasses.dataclass(frozen=True)
class ApiSettings:
    """The HTTP API (``mes serve``): where it listens, who may call it, request limits."""

    host: str = "127.0.0.1"
    port: int = 8080
    # MES_API_KEY: an operator key, admin of every user's history (a secret: not in the repr)
    api_key: str | None = dataclasses.field(default=None, repr=False)
    auth_cache_seconds: int = 5  # a revoked token keeps working at most this long
    ingest_max_events: int = 1000
    ingest_max_bytes: int = 16 * 1024 * 1024

    @classmethod
    def from_env(cls, env: Env) -> ApiSettings:
        key = _get(env, "MES_API_KEY") or None
        if key is not None and len(key) < 16:
            raise ConfigError("MES_API_KEY is too short: use at least 16 random characters")
        return cls(
            host=_get(env, "MES_API_HOST") or "127.0.0.1",
            port=env_int(env, "MES_API_PORT", 8080, minimum=0, maximum=65535),
            api_key=key,
            auth_cache_seconds=env_int(env, "MES_AUTH_CACHE_SECONDS", 5, minimum=0, maximum=3600),
            ingest_max_events=env_int(env, "MES_INGEST_MAX_EVENTS", 1000, minimum=1, maximum=100_000),
            ingest_max_bytes=env_int(env, "MES_INGEST_MAX_BYTES", 16 * 1024 * 1024, minimum=1024),
        )


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything, for the entry points (``mes worker``, ``mes serve``, the CLI)."""

    database: DatabaseSettings
    producer: ProducerSettings
    worker: WorkerSettings
    api: ApiSettings
    privacy: PrivacySettings
    main_db: DatabaseConfig | None  # New API's SQL_DSN: users and tokens for the read API
    data_dir: str
    debug: bool
    startup_wait: float = 0.0  # MES_STARTUP_WAIT: seconds a starting process waits for a dependency
    embedded_redis_port: int | None = None  # MES_EMBEDDED_REDIS_PORT (`mes up`; None: the last run's)

    @property
    def queue(self) -> QueueSettings:
        return self.producer.queue

    def with_redis_url(self, url: str) -> Settings:
        """The same settings on another Redis (a running ``mes up``'s embedded one)."""
        queue = dataclasses.replace(self.queue, redis_url=url)
        return dataclasses.replace(self, producer=dataclasses.replace(self.producer, queue=queue))

    @classmethod
    def from_env(cls, env: Env | None = None) -> Settings:
        env = os.environ if env is None else env
        base = data_dir(env)
        main_raw = _get(env, "SQL_DSN")
        database, worker = DatabaseSettings.from_env(env), WorkerSettings.from_env(env)
        if worker.content_retention_days and not database.daily_partition:
            raise ConfigError(
                "MES_CONTENT_RETENTION_DAYS needs daily tables: set MES_DAILY_PARTITION=true (content is erased by day)"
            )
        return cls(
            database=database,
            producer=ProducerSettings.from_env(env),
            worker=worker,
            api=ApiSettings.from_env(env),
            privacy=PrivacySettings.from_env(env),
            main_db=parse_dsn(main_raw, variable="SQL_DSN", data_dir=base) if main_raw else None,
            data_dir=base,
            debug=env_bool(env, "DEBUG", False),
            startup_wait=_startup_wait(env),
            embedded_redis_port=_embedded_redis_port(env),
        )


def _startup_wait(env: Env) -> float:
    raw = (_get(env, "MES_STARTUP_WAIT") or "").strip()
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86_400:
        raise ConfigError("MES_STARTUP_WAIT must be a number of seconds between 0 and 86400")
    return value


def _embedded_redis_port(env: Env) -> int | None:
    wanted = (_get(env, "MES_EMBEDDED_REDIS_PORT") or "").strip()
    if wanted and not (wanted.isdigit() and int(wanted) < 65536):
        raise ConfigError("MES_EMBEDDED_REDIS_PORT must be a port number (0: any free port)")
    return int(wanted) if wanted else None
