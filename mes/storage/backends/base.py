"""The interface every dialect implements, with the behaviour most of them share."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import URL, Connection, Engine, text

if TYPE_CHECKING:
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.sql.elements import TextClause

    from mes.config.dsn import DatabaseConfig
    from mes.config.settings import DatabaseSettings
    from mes.schemas.limits import SizeLimit

__all__ = ["Backend"]


class Backend:
    """What MES needs to know of one database dialect. One instance per dialect."""

    name: ClassVar[str]  # DatabaseConfig.backend
    driver: ClassVar[str]  # SQLAlchemy's dialect+driver
    is_server: ClassVar[bool] = True  # False: a file, nothing to connect to before opening it
    locks_rows: ClassVar[bool] = True  # SELECT ... FOR UPDATE (SQLite locks the whole file)
    version_sql: ClassVar[str] = "SELECT VERSION()"
    # `mes doctor`'s hint when the database is missing: may this login create it?
    create_hint: ClassVar[str] = " if the role may create databases"

    def url(self, db: DatabaseConfig, *, database: str | None = "__same__") -> URL:
        """The SQLAlchemy URL of ``db``; ``database=None`` gives the server without a database."""
        name = db.database if database == "__same__" else database
        if not self.is_server:
            return URL.create(self.driver, database=name)
        return URL.create(
            self.driver,
            username=db.user,
            password=db.password,
            host=db.host,
            port=db.port,
            database=name,
            query=self.url_query(db),
        )

    def url_query(self, db: DatabaseConfig) -> dict[str, str]:
        """The URL's query: the DSN's options, and a Unix socket as libpq takes it."""
        query: dict[str, str] = {}
        if db.unix_socket:
            query["host"] = db.unix_socket
        query.update(db.options)
        return query

    def connect_args(self, db: DatabaseConfig) -> dict[str, Any]:
        return {}

    def engine_options(self) -> dict[str, Any]:
        """More ``create_engine`` arguments (isolation level, ...)."""
        return {}

    def prepare(self, db: DatabaseConfig) -> None:
        """Before the engine connects (SQLite: the data folder)."""

    def configure(self, engine: Engine) -> None:
        """After the engine is made (SQLite: its pragmas and transaction control)."""

    def is_unknown_database(self, exc: DBAPIError) -> bool:
        message = str(exc.orig)
        return "does not exist" in message and "database" in message

    def create_database(self, settings: DatabaseSettings) -> None:
        raise NotImplementedError

    def learn_limit(self, engine: Engine) -> SizeLimit:
        """The largest event this server can store (see ``engine.event_limit``)."""
        from mes.schemas.limits import CONTRACT_LIMIT

        return CONTRACT_LIMIT

    def exact_collation(self, engine: Engine) -> str | None:
        """The byte-exact collation of the ids' columns, where the default is not."""
        return None

    def table_sizes(self, engine: Engine, names: list[str]) -> dict[str, int]:
        """Bytes on disk of each table (data and indexes); empty where the server cannot say."""
        return {}

    def version_query(self) -> TextClause:
        return text(self.version_sql)

    @contextlib.contextmanager
    def lock(self, engine: Engine, name: str) -> Iterator[Connection]:
        """A connection holding the server-wide lock ``name`` (waits for its holder)."""
        with engine.connect() as conn:
            self._acquire(conn, name)
            conn.commit()
            try:
                yield conn
            finally:
                conn.rollback()
                self._release(conn, name)
                conn.commit()

    def _acquire(self, conn: Connection, name: str) -> None:
        raise NotImplementedError

    def _release(self, conn: Connection, name: str) -> None:
        raise NotImplementedError
