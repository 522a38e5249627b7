"""PostgreSQL (psycopg2)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError
from sqlalchemy.pool import NullPool

from mes.errors import ConfigError
from mes.log import get_logger
from mes.storage.backends.base import Backend

if TYPE_CHECKING:
    from mes.config.dsn import DatabaseConfig
    from mes.config.settings import DatabaseSettings

__all__ = ["POSTGRESQL", "PostgreSQL"]

log = get_logger("mes.storage")


class PostgreSQL(Backend):
    """A field holds up to 1 GB and COPY streams the rows: MES's contract limit binds."""

    name = "postgresql"
    driver = "postgresql+psycopg2"

    def connect_args(self, db: DatabaseConfig) -> dict[str, Any]:
        return {} if any(k == "connect_timeout" for k, _ in db.options) else {"connect_timeout": 10}

    def create_database(self, settings: DatabaseSettings) -> None:
        """CREATE DATABASE cannot run in a transaction: from the maintenance database.
        Processes starting together (a worker and the API, say) race to create it: the
        losers get "already exists" or a unique violation on pg_database, and find it there."""
        db, var = settings.db, settings.source
        quoted = '"' + db.database.replace('"', '""') + '"'
        last: Exception | None = None
        for maintenance in ("postgres", "template1"):
            server = create_engine(
                self.url(db, database=maintenance),
                connect_args=self.connect_args(db),
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
                log.info("database_created", backend=self.name, database=db.database)
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

    def _acquire(self, conn: Connection, name: str) -> None:
        conn.execute(text("SELECT pg_advisory_lock(hashtext(:name))"), {"name": name})

    def _release(self, conn: Connection, name: str) -> None:
        conn.execute(text("SELECT pg_advisory_unlock(hashtext(:name))"), {"name": name})

    def table_sizes(self, engine: Engine, names: list[str]) -> dict[str, int]:
        size = text("SELECT pg_total_relation_size(CAST(:n AS regclass))")
        with engine.connect() as conn:
            return {name: int(conn.execute(size, {"n": name}).scalar_one()) for name in names}


POSTGRESQL = PostgreSQL()
