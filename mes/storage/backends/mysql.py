"""MySQL and MariaDB (PyMySQL)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError
from sqlalchemy.pool import NullPool

from mes.errors import ConfigError
from mes.log import get_logger
from mes.storage.backends.base import Backend

if TYPE_CHECKING:
    from mes.config.dsn import DatabaseConfig
    from mes.config.settings import DatabaseSettings
    from mes.schemas.limits import SizeLimit

__all__ = ["MYSQL", "MySQL"]

log = get_logger("mes.storage")

_INT_OPTIONS = frozenset({"connect_timeout", "read_timeout", "write_timeout"})
# Room left in the packet for the statement around the largest value: the INSERT's text,
# the row's other columns, and the rows PyMySQL packs with it (it starts a new statement
# past 1 MB, so at most one large row travels in a statement).
PACKET_HEADROOM = 64 << 10


class MySQL(Backend):
    name = "mysql"
    driver = "mysql+pymysql"
    create_hint: ClassVar[str] = ""

    def url_query(self, db: DatabaseConfig) -> dict[str, str]:
        query = {"charset": "utf8mb4"}  # always: emoji and CJK must round-trip whatever the DSN says
        if db.unix_socket:
            query["unix_socket"] = db.unix_socket
        for key, value in db.options:
            if key not in _INT_OPTIONS | {"ssl_mode"}:  # those are connect_args, not URL text
                query[key] = value
        return query

    def connect_args(self, db: DatabaseConfig) -> dict[str, Any]:
        args: dict[str, Any] = {"connect_timeout": 10}
        for key, value in db.options:
            if key in _INT_OPTIONS:
                args[key] = int(value)
            elif key == "ssl_mode":
                # tls=true verifies; skip-verify and preferred encrypt without checking the certificate.
                args["ssl"] = (
                    {"check_hostname": value == "true"} if value == "true" else {"ssl_disabled": False}
                )
        return args

    def engine_options(self) -> dict[str, Any]:
        # READ COMMITTED: the writer locks the conversations it touches, then reads their
        # latest committed state; REPEATABLE READ would read an older snapshot and take gap locks.
        return {"isolation_level": "READ COMMITTED"}

    def is_unknown_database(self, exc: DBAPIError) -> bool:
        args = getattr(exc.orig, "args", None)
        return bool(args) and args[0] == 1049  # type: ignore[index]

    def create_database(self, settings: DatabaseSettings) -> None:
        db, var = settings.db, settings.source
        server = create_engine(
            self.url(db, database=None), connect_args=self.connect_args(db), poolclass=NullPool
        )
        quoted = "`" + db.database.replace("`", "``") + "`"
        charset = "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        try:
            with server.begin() as conn:
                conn.execute(text(f"CREATE DATABASE IF NOT EXISTS {quoted} {charset}"))
        except (OperationalError, ProgrammingError) as exc:
            raise ConfigError(
                f"{var}: database {db.database!r} does not exist and user {db.user!r} may not create it; "
                f"run as an admin: CREATE DATABASE {quoted} {charset}"
            ) from exc
        finally:
            server.dispose()
        log.info("database_created", backend=self.name, database=db.database)

    def learn_limit(self, engine: Engine) -> SizeLimit:
        """``@@max_allowed_packet`` less room for the statement, or the contract's limit."""
        from mes.schemas.limits import CONTRACT_LIMIT, MAX_EVENT_BYTES, SizeLimit

        with engine.connect() as conn:
            packet = int(conn.exec_driver_sql("SELECT @@max_allowed_packet").scalar_one())
        room = min(PACKET_HEADROOM, packet // 4)
        if packet - room >= 2 * MAX_EVENT_BYTES:
            return CONTRACT_LIMIT  # even an event of quotes only fits
        server = "MariaDB" if getattr(engine.dialect, "is_mariadb", False) else "MySQL"
        return SizeLimit(
            db_max_bytes=packet - room,
            db_source=f"this {server} server (max_allowed_packet={packet}, less {room} for the statement)",
            quotes_escaped=True,
        )

    def exact_collation(self, engine: Engine) -> str | None:
        """The byte-exact utf8mb4 collation of this server."""
        with engine.connect() as conn:
            version = str(conn.exec_driver_sql("SELECT VERSION()").scalar())
        if "mariadb" in version.lower():
            return "utf8mb4_nopad_bin"
        major = int(version.split(".")[0]) if version[:1].isdigit() else 0
        return "utf8mb4_0900_bin" if major >= 8 else "utf8mb4_bin"

    def _acquire(self, conn: Connection, name: str) -> None:
        if conn.execute(text("SELECT GET_LOCK(:name, 3600)"), {"name": name}).scalar() != 1:
            raise RuntimeError(f"another MES process has held the lock {name!r} for an hour")

    def _release(self, conn: Connection, name: str) -> None:
        conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": name})

    def table_sizes(self, engine: Engine, names: list[str]) -> dict[str, int]:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT TABLE_NAME, DATA_LENGTH + INDEX_LENGTH FROM information_schema.TABLES "
                    "WHERE TABLE_SCHEMA = DATABASE()"
                )
            )
            return {r[0]: int(r[1] or 0) for r in rows if r[0] in names}


MYSQL = MySQL()
