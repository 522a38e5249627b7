"""Engines for the MES database: URL building, pool settings, and creating the database.

``create_engine_for(settings)`` turns a :class:`~mes.config.settings.DatabaseSettings` into a
SQLAlchemy engine with the seed's pool variables applied. ``bootstrap_database`` makes
the database exist: MySQL/MariaDB ``CREATE DATABASE IF NOT EXISTS`` in utf8mb4;
PostgreSQL ``CREATE DATABASE`` if the role may (else one line saying how); SQLite creates
the folder and uses WAL. ``event_limit(engine)`` asks the server how large an event it
can store.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any

from sqlalchemy import URL, Engine, create_engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import NullPool

from mes.config.dsn import DatabaseConfig
from mes.config.settings import DatabaseSettings
from mes.errors import ConfigError, DatabaseUnavailable
from mes.log import get_logger
from mes.schemas.limits import CONTRACT_LIMIT, SizeLimit
from mes.storage.backends import backend_for, backend_of

__all__ = [
    "bootstrap_database",
    "create_engine_for",
    "event_limit",
    "explain_connect_error",
    "sqlalchemy_url",
]

log = get_logger("mes.storage")


def sqlalchemy_url(db: DatabaseConfig, *, database: str | None = "__same__") -> URL:
    """The SQLAlchemy URL of ``db``; ``database=None`` gives the server without a database."""
    return backend_of(db).url(db, database=database)


def create_engine_for(settings: DatabaseSettings, *, echo: bool = False) -> Engine:
    """An engine with the seed's pool settings (``SQL_MAX_IDLE_CONNS`` and friends).

    Go's ``database/sql`` has max-open and max-idle; SQLAlchemy's QueuePool has
    ``pool_size`` (kept idle) and ``max_overflow`` (more, closed when returned), so
    idle → pool_size and open - idle → max_overflow. ``SQL_MAX_LIFETIME`` → ``pool_recycle``.
    """
    db = settings.db
    backend = backend_of(db)
    kwargs: dict[str, Any] = {
        "echo": echo,
        "connect_args": backend.connect_args(db),
        "pool_pre_ping": True,
        # LIFO: at low concurrency the same few connections serve every request, so their
        # server-side caches (PostgreSQL's relation cache of a year of daily tables) stay warm
        # and the others idle out; FIFO would rotate through the whole pool.
        "pool_use_lifo": True,
        **backend.engine_options(),
    }
    backend.prepare(db)
    idle = max(1, settings.max_idle_conns)
    kwargs["pool_size"] = idle
    kwargs["max_overflow"] = max(0, settings.max_open_conns - idle)
    if settings.max_lifetime > 0:
        kwargs["pool_recycle"] = settings.max_lifetime
    engine = create_engine(sqlalchemy_url(db), **kwargs)
    backend.configure(engine)
    return engine


def bootstrap_database(settings: DatabaseSettings) -> None:
    """Make sure the MES database exists (created if missing, as the seed promises).

    Raises:
        ConfigError: PostgreSQL's database is missing and the role may not create it, or
            the credentials are refused; the message says how to fix it.
        DatabaseUnavailable: the server cannot be reached.
    """
    db = settings.db
    backend = backend_of(db)
    if not backend.is_server:
        backend.create_database(settings)
        return
    engine = create_engine(sqlalchemy_url(db), connect_args=backend.connect_args(db), poolclass=NullPool)
    try:
        with engine.connect():
            return
    except OperationalError as exc:
        if not backend.is_unknown_database(exc):
            raise explain_connect_error(settings, exc) from None
    finally:
        engine.dispose()
    backend.create_database(settings)


def explain_connect_error(settings: DatabaseSettings, exc: DBAPIError) -> Exception:
    db, var = settings.db, settings.source
    message = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
    if db.password:
        message = message.replace(db.password, "***")
    lowered = message.lower()
    if (
        "access denied" in lowered
        or "password authentication failed" in lowered
        or ("role" in lowered and "does not exist" in lowered)
    ):
        return ConfigError(
            f"{var}: the server at {db.describe()} refused the credentials: {message} "
            f"(fix the user or password in {var})"
        )
    return DatabaseUnavailable(f"{var}: cannot reach {db.describe()}: {message}")


# -- how large an event the database takes ------------------------------------------------
LIMIT_MAX_AGE_S = 300.0
_limits: weakref.WeakKeyDictionary[Engine, tuple[float, SizeLimit]] = weakref.WeakKeyDictionary()
_limits_lock = threading.Lock()


def event_limit(engine: Engine, *, max_age_s: float = LIMIT_MAX_AGE_S) -> SizeLimit:
    """The largest event this database can store, learned from the server and kept for
    ``max_age_s`` (an operator who raises ``max_allowed_packet`` is heard within minutes).

    MySQL/MariaDB: ``@@max_allowed_packet`` less room for the statement; SQLite:
    ``SQLITE_LIMIT_LENGTH`` (10^9 unless compiled smaller); PostgreSQL: its 1 GB field limit.
    Each is taken with MES's contract limit, whichever is smaller. Never raises: a
    database that cannot be asked now gives the contract limit, and is asked again next
    time (the writer still isolates what the server refuses).
    """
    now = time.monotonic()
    with _limits_lock:
        known = _limits.get(engine)
    if known is not None and now - known[0] < max_age_s:
        return known[1]
    try:
        limit = backend_for(engine).learn_limit(engine)
    except Exception as exc:  # asked again at the next call; the contract limit meanwhile
        log.warning("event_limit_unknown", error=str(exc).splitlines()[0][:200] if str(exc) else repr(exc))
        return known[1] if known is not None else CONTRACT_LIMIT
    with _limits_lock:
        _limits[engine] = (now, limit)
    if known is None or known[1] != limit:
        log.info("event_limit_learned", backend=engine.dialect.name, max_bytes=limit.max_bytes,
                 source=limit.db_source or "MES's contract")  # fmt: skip
    return limit
