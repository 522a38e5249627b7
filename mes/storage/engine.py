"""Engines for the MES database: URL building, pool settings, and creating the database.

``create_engine_for(settings)`` turns a :class:`~mes.config.settings.DatabaseSettings` into a
SQLAlchemy engine with the seed's pool variables applied. ``bootstrap_database`` makes
the database exist: MySQL/MariaDB ``CREATE DATABASE IF NOT EXISTS`` in utf8mb4;
PostgreSQL ``CREATE DATABASE`` if the role may (else one line saying how); SQLite creates
the folder and uses WAL. ``event_limit(engine)`` asks the server how large an event it
can store.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
import weakref
from typing import Any

from sqlalchemy import URL, Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError
from sqlalchemy.pool import NullPool

from mes.config.dsn import DatabaseConfig
from mes.config.settings import DatabaseSettings
from mes.errors import ConfigError, DatabaseUnavailable
from mes.log import get_logger
from mes.schemas.limits import CONTRACT_LIMIT, MAX_EVENT_BYTES, SizeLimit

__all__ = [
    "bootstrap_database",
    "connect_args",
    "create_engine_for",
    "event_limit",
    "explain_connect_error",
    "is_unknown_database",
    "sqlalchemy_url",
]

log = get_logger("mes.storage")

_DRIVERS = {"mysql": "mysql+pymysql", "postgresql": "postgresql+psycopg2", "sqlite": "sqlite+pysqlite"}
_MYSQL_INT_OPTIONS = frozenset({"connect_timeout", "read_timeout", "write_timeout"})


def sqlalchemy_url(db: DatabaseConfig, *, database: str | None = "__same__") -> URL:
    """The SQLAlchemy URL of ``db``; ``database=None`` gives the server without a database."""
    name = db.database if database == "__same__" else database
    if db.backend == "sqlite":
        return URL.create(_DRIVERS["sqlite"], database=name)
    query: dict[str, str] = {}
    if db.backend == "mysql":
        query["charset"] = "utf8mb4"  # always: emoji and CJK must round-trip whatever the DSN says
        if db.unix_socket:
            query["unix_socket"] = db.unix_socket
    elif db.unix_socket:
        query["host"] = db.unix_socket
    for key, value in db.options:
        if db.backend == "mysql" and key in _MYSQL_INT_OPTIONS | {"ssl_mode"}:
            continue  # passed as connect_args, not URL text
        query[key] = value
    return URL.create(
        _DRIVERS[db.backend],
        username=db.user,
        password=db.password,
        host=db.host,
        port=db.port,
        database=name,
        query=query,
    )


def connect_args(db: DatabaseConfig) -> dict[str, Any]:
    args: dict[str, Any] = {}
    if db.backend == "mysql":
        args["connect_timeout"] = 10
        for key, value in db.options:
            if key in _MYSQL_INT_OPTIONS:
                args[key] = int(value)
            elif key == "ssl_mode":
                # tls=true verifies; skip-verify and preferred encrypt without checking the certificate.
                args["ssl"] = (
                    {"check_hostname": value == "true"} if value == "true" else {"ssl_disabled": False}
                )
    elif db.backend == "postgresql":
        if not any(k == "connect_timeout" for k, _ in db.options):
            args["connect_timeout"] = 10
    elif db.backend == "sqlite":
        args["timeout"] = 30  # seconds to wait for the write lock: SQLite has one writer at a time
    return args


def create_engine_for(settings: DatabaseSettings, *, echo: bool = False) -> Engine:
    """An engine with the seed's pool settings (``SQL_MAX_IDLE_CONNS`` and friends).

    Go's ``database/sql`` has max-open and max-idle; SQLAlchemy's QueuePool has
    ``pool_size`` (kept idle) and ``max_overflow`` (more, closed when returned), so
    idle → pool_size and open - idle → max_overflow. ``SQL_MAX_LIFETIME`` → ``pool_recycle``.
    """
    db = settings.db
    kwargs: dict[str, Any] = {
        "echo": echo,
        "connect_args": connect_args(db),
        "pool_pre_ping": True,
        # LIFO: at low concurrency the same few connections serve every request, so their
        # server-side caches (PostgreSQL's relation cache of a year of daily tables) stay warm
        # and the others idle out; FIFO would rotate through the whole pool.
        "pool_use_lifo": True,
    }
    if db.backend == "sqlite":
        os.makedirs(os.path.dirname(os.path.abspath(db.database)) or ".", exist_ok=True)
    idle = max(1, settings.max_idle_conns)
    kwargs["pool_size"] = idle
    kwargs["max_overflow"] = max(0, settings.max_open_conns - idle)
    if settings.max_lifetime > 0:
        kwargs["pool_recycle"] = settings.max_lifetime
    if db.backend == "mysql":
        # READ COMMITTED: the writer locks the conversations it touches, then reads their
        # latest committed state; REPEATABLE READ would read an older snapshot and take gap locks.
        kwargs["isolation_level"] = "READ COMMITTED"
    engine = create_engine(sqlalchemy_url(db), **kwargs)
    if db.backend == "sqlite":
        _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from pysqlite: it would BEGIN lazily (DEFERRED) and a
        # deferred reader that later writes can fail with "database is locked" at once,
        # without waiting. The writer begins IMMEDIATE itself; others begin below.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        _use_wal(cur)
        cur.execute("PRAGMA synchronous=FULL")  # a committed batch survives a power cut
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("mes_write") else "BEGIN")


def _use_wal(cur: Any, *, patience_s: float = 30.0) -> None:
    """Put the database file in WAL mode (it stays so: later connections find it done).

    Switching needs the file to itself, and SQLite answers "database is locked" at once
    instead of waiting (the busy timeout does not cover it): processes starting together
    on a new file retry until one of them has switched it.
    """
    deadline = time.monotonic() + patience_s
    while True:
        try:
            if cur.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01 + random.random() * 0.02)


def bootstrap_database(settings: DatabaseSettings) -> None:
    """Make sure the MES database exists (created if missing, as the seed promises).

    Raises:
        ConfigError: PostgreSQL's database is missing and the role may not create it, or
            the credentials are refused; the message says how to fix it.
        DatabaseUnavailable: the server cannot be reached.
    """
    db = settings.db
    if db.backend == "sqlite":
        os.makedirs(os.path.dirname(os.path.abspath(db.database)) or ".", exist_ok=True)
        return
    engine = create_engine(sqlalchemy_url(db), connect_args=connect_args(db), poolclass=NullPool)
    try:
        with engine.connect():
            return
    except OperationalError as exc:
        if not is_unknown_database(db, exc):
            raise explain_connect_error(settings, exc) from None
    finally:
        engine.dispose()
    _create_database(settings)


def is_unknown_database(db: DatabaseConfig, exc: DBAPIError) -> bool:
    orig = exc.orig
    if db.backend == "mysql":
        return bool(getattr(orig, "args", None)) and orig.args[0] == 1049  # type: ignore[union-attr]
    message = str(orig)
    return "does not exist" in message and "database" in message


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


def _create_database(settings: DatabaseSettings) -> None:
    db, var = settings.db, settings.source
    if db.backend == "mysql":
        server = create_engine(
            sqlalchemy_url(db, database=None), connect_args=connect_args(db), poolclass=NullPool
        )
        quoted = "`" + db.database.replace("`", "``") + "`"
        try:
            with server.begin() as conn:
                conn.execute(
                    text(
                        f"CREATE DATABASE IF NOT EXISTS {quoted} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
                    )
                )
        except (OperationalError, ProgrammingError) as exc:
            raise ConfigError(
                f"{var}: database {db.database!r} does not exist and user {db.user!r} may not create it; "
                f"run as an admin: CREATE DATABASE {quoted} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            ) from exc
        finally:
            server.dispose()
        log.info("database_created", backend="mysql", database=db.database)
        return
    # PostgreSQL: CREATE DATABASE cannot run in a transaction; connect to the maintenance db.
    # Processes starting together (a worker and the API, say) race to create it: the losers
    # get "already exists" or a unique violation on pg_database, and find it there.
    quoted = '"' + db.database.replace('"', '""') + '"'
    last: Exception | None = None
    for maintenance in ("postgres", "template1"):
        server = create_engine(
            sqlalchemy_url(db, database=maintenance),
            connect_args=connect_args(db),
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
        )
        try:
            with server.connect() as conn:
                exists = text("SELECT 1 FROM pg_database WHERE datname = :n")
                if conn.execute(exists, {"n": db.database}).first():
                    return
                try:
                    conn.execute(text(f"CREATE DATABASE {quoted} ENCODING 'UTF8' TEMPLATE template0"))
                except DBAPIError:
                    if conn.execute(exists, {"n": db.database}).first():
                        return  # another process created it at the same moment
                    raise
            log.info("database_created", backend="postgresql", database=db.database)
            return
        except (OperationalError, ProgrammingError) as exc:
            last = exc
            if isinstance(exc, ProgrammingError):
                break
        finally:
            server.dispose()
    raise ConfigError(
        f"{var}: database {db.database!r} does not exist and role {db.user!r} may not create it; "
        f"run as a superuser: createdb -h {db.host or 'localhost'} -O {db.user or 'postgres'} {db.database}"
    ) from last


# -- how large an event the database takes ------------------------------------------------
# Room left in MySQL's packet for the statement around the largest value: the INSERT's
# text, the row's other columns, and the rows pymysql packs with it (it starts a new
# statement past 1 MB, so at most one large row travels in a statement).
_PACKET_HEADROOM = 64 << 10
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
        limit = _learn_limit(engine)
    except Exception as exc:  # asked again at the next call; the contract limit meanwhile
        log.warning("event_limit_unknown", error=str(exc).splitlines()[0][:200] if str(exc) else repr(exc))
        return known[1] if known is not None else CONTRACT_LIMIT
    with _limits_lock:
        _limits[engine] = (now, limit)
    if known is None or known[1] != limit:
        log.info("event_limit_learned", backend=engine.dialect.name, max_bytes=limit.max_bytes,
                 source=limit.db_source or "MES's contract")  # fmt: skip
    return limit


def _learn_limit(engine: Engine) -> SizeLimit:
    name = engine.dialect.name
    if name in ("mysql", "mariadb"):
        with engine.connect() as conn:
            packet = int(conn.exec_driver_sql("SELECT @@max_allowed_packet").scalar_one())
        room = min(_PACKET_HEADROOM, packet // 4)
        if packet - room >= 2 * MAX_EVENT_BYTES:
            return CONTRACT_LIMIT  # even an event of quotes only fits
        server = "MariaDB" if getattr(engine.dialect, "is_mariadb", False) else "MySQL"
        return SizeLimit(
            db_max_bytes=packet - room,
            db_source=f"this {server} server (max_allowed_packet={packet}, less {room} for the statement)",
            quotes_escaped=True,
        )
    if name == "sqlite":
        with engine.connect() as conn:
            dbapi = conn.connection.dbapi_connection
            length = int(dbapi.getlimit(sqlite3.SQLITE_LIMIT_LENGTH))  # type: ignore[union-attr]
        # A row is assembled as one value: the limit binds the whole row, columns and all.
        room = min(_PACKET_HEADROOM, length // 4)
        if length - room >= MAX_EVENT_BYTES:
            return CONTRACT_LIMIT
        return SizeLimit(db_max_bytes=length - room, db_source=f"this SQLite (SQLITE_LIMIT_LENGTH={length})")
    # PostgreSQL: a field holds up to 1 GB, and COPY streams the rows: the contract binds.
    return CONTRACT_LIMIT
