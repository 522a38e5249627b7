"""Database bootstrap on every backend: created if missing, in the right charset, WAL on
SQLite, a clear line when PostgreSQL may not create it; big contents fit."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from mes.errors import ConfigError
from mes.storage import Storage
from mes.storage.engine import sqlalchemy_url

from .conftest import (
    Backend,
    _check,
    _server_engine,
    derived,
    missing,
    needs_own_databases,
    reset_database,
    run_names,
)
from .factories import chat


def test_database_is_created_if_missing(backend):
    if backend.name != "sqlite":
        needs_own_databases(backend.name, "a database it may drop")
    storage = backend.storage()  # the fixture dropped the database (or SQLite's folder is new)
    with storage.engine.connect() as conn:
        if backend.name == "mysql":
            charset, collation = conn.execute(text(
                "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA "
                "WHERE SCHEMA_NAME = DATABASE()")).one()  # fmt: skip
            assert (charset, collation) == ("utf8mb4", "utf8mb4_unicode_ci")
        elif backend.name == "postgresql":
            assert conn.execute(text("SELECT current_database()")).scalar_one() == run_names().database
            assert conn.execute(text("SHOW server_encoding")).scalar_one() == "UTF8"
        else:
            assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
            assert (backend.tmp_path / "db" / "mes.db").exists()
    names = storage.catalog.refresh()
    assert {"mes_conversations", "mes_daily_stats", "mes_dead_letters"} <= names
    Storage.open(backend.settings()).close()  # a second start finds everything in place


def _open_together(settings: Any, count: int) -> list[BaseException]:
    """Open ``count`` Storage objects at the same instant; the errors they raised."""
    start = threading.Barrier(count)
    errors: list[BaseException] = []

    def open_one() -> None:
        start.wait()
        try:
            Storage.open(settings).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_processes_starting_together_on_a_missing_database_all_start(backend):
    """A worker and the API started at once both find the database missing and race to
    create it, then its tables: every one of them must come up."""
    if backend.name != "sqlite":
        needs_own_databases(backend.name, "a database it may drop")
    for _ in range(3):
        if backend.name != "sqlite":
            reset_database(backend.name)
        assert _open_together(backend.settings(), 4) == []


@pytest.fixture
def postgres_backend(tmp_path):
    reason = _check("postgresql")
    if reason:
        missing("postgresql", reason)
    needs_own_databases("postgresql", "a role of its own")
    reset_database("postgresql")
    yield Backend("postgresql", tmp_path)


def test_postgres_role_that_may_not_create_databases_gets_one_line_saying_how(postgres_backend):
    server_backend = postgres_backend
    role = database = derived("nocreate")  # this run's names: the run drops them at its end
    admin = _server_engine("postgresql")
    with admin.connect() as conn:
        conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN NOCREATEDB'))
    try:
        settings = server_backend.settings()
        db = dataclasses.replace(settings.db, user=role, password=None, database=database)
        with pytest.raises(ConfigError) as caught:
            Storage.open(dataclasses.replace(settings, db=db))
        message = str(caught.value)
        assert "\n" not in message and "createdb" in message.lower() and database in message
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()


def test_a_15_mb_message_with_emoji_round_trips(backend):
    """LONGTEXT on MySQL (TEXT would stop at 64 KB); the same bytes back on every backend."""
    storage = backend.storage()
    unit = "😀 emoji, 中文, and ascii. "
    content = unit * (15 * 1024 * 1024 // len(unit.encode()))
    assert 14 * 1024 * 1024 < len(content.encode()) <= 15 * 1024 * 1024
    storage.writer.write([chat("huge", [{"role": "user", "content": content}], "ok")])
    engine = create_engine(sqlalchemy_url(storage.settings.db), poolclass=NullPool)
    with engine.connect() as conn:
        got = conn.execute(
            text("SELECT content FROM conversation_histories_2026_01_15 WHERE role = 'user'")
        ).scalar_one()
    engine.dispose()
    assert got == content
