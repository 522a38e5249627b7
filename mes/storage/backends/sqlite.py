"""SQLite (the standard library's sqlite3): one file, one writer at a time."""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, event, text

from mes.storage.backends.base import Backend

if TYPE_CHECKING:
    from mes.config.dsn import DatabaseConfig
    from mes.config.settings import DatabaseSettings
    from mes.schemas.limits import SizeLimit

__all__ = ["SQLITE", "SQLite"]

# Room left in SQLITE_LIMIT_LENGTH for the row around the largest value.
_ROW_HEADROOM = 64 << 10


class SQLite(Backend):
    name = "sqlite"
    driver = "sqlite+pysqlite"
    is_server = False
    locks_rows = False
    version_sql = "SELECT sqlite_version()"

    def url_query(self, db: DatabaseConfig) -> dict[str, str]:
        return {}

    def connect_args(self, db: DatabaseConfig) -> dict[str, Any]:
        return {"timeout": 30}  # seconds to wait for the write lock: SQLite has one writer at a time

    def prepare(self, db: DatabaseConfig) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(db.database)) or ".", exist_ok=True)

    def configure(self, engine: Engine) -> None:
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
            conn.exec_driver_sql(
                "BEGIN IMMEDIATE" if conn.get_execution_options().get("mes_write") else "BEGIN"
            )

    @contextlib.contextmanager
    def lock(self, engine: Engine, name: str) -> Iterator[Connection]:
        """SQLite has one writer: a write transaction (BEGIN IMMEDIATE) is the lock."""
        with engine.execution_options(mes_write=True).connect() as conn:
            conn.execute(text("SELECT 1"))
            yield conn

    def create_database(self, settings: DatabaseSettings) -> None:
        self.prepare(settings.db)  # the file is created by the first connection

    def learn_limit(self, engine: Engine) -> SizeLimit:
        """``SQLITE_LIMIT_LENGTH`` (10^9 unless compiled smaller) binds the whole row."""
        from mes.schemas.limits import CONTRACT_LIMIT, MAX_EVENT_BYTES, SizeLimit

        with engine.connect() as conn:
            dbapi = conn.connection.dbapi_connection
            length = int(dbapi.getlimit(sqlite3.SQLITE_LIMIT_LENGTH))  # type: ignore[union-attr]
        room = min(_ROW_HEADROOM, length // 4)
        if length - room >= MAX_EVENT_BYTES:
            return CONTRACT_LIMIT
        return SizeLimit(db_max_bytes=length - room, db_source=f"this SQLite (SQLITE_LIMIT_LENGTH={length})")


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


SQLITE = SQLite()
