"""Everything a database dialect knows, behind one small interface (``base.Backend``):
its URL and connect arguments, engine options, how to create the database, which error
says it is missing, how large an event it takes, its exact collation, table sizes, a
server-wide lock; ``types`` holds the column types that differ by dialect.

``backend_of(db)`` and ``backend_for(engine)`` pick one by name; no other module of the
storage layer compares a dialect's name (``bulk`` keys its statement classes by these
objects). Outside it, ``mes.config.dsn`` still knows which DSN schemes name which backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mes.storage.backends.base import Backend
from mes.storage.backends.mysql import MYSQL
from mes.storage.backends.postgresql import POSTGRESQL
from mes.storage.backends.sqlite import SQLITE

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from mes.config.dsn import DatabaseConfig

__all__ = ["Backend", "backend_for", "backend_of"]

_BY_NAME: dict[str, Backend] = {b.name: b for b in (MYSQL, POSTGRESQL, SQLITE)}
# SQLAlchemy's dialect names: MariaDB's is its own where the server says so
_BY_DIALECT: dict[str, Backend] = {**_BY_NAME, "mariadb": MYSQL}


def backend_of(db: DatabaseConfig) -> Backend:
    """The backend of a parsed DSN."""
    return _BY_NAME[db.backend]


def backend_for(engine: Engine) -> Backend:
    """The backend of an engine."""
    try:
        return _BY_DIALECT[engine.dialect.name]
    except KeyError:
        raise ValueError(f"unsupported database dialect {engine.dialect.name!r}") from None
