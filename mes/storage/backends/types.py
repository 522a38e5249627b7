"""Column types whose form differs by dialect (SQLAlchemy variants), for ``storage.tables``."""

from __future__ import annotations

from sqlalchemy import BigInteger, Integer, LargeBinary, String, Text
from sqlalchemy.dialects import mysql

__all__ = ["AutoId", "LongBlob", "LongText", "exact_string"]

# MySQL's TEXT stops at 64 KB; LONGTEXT holds 4 GB (the packet size is the real limit).
LongText = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
LongBlob = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
# SQLite auto-increments only an INTEGER PRIMARY KEY (its rowid)
AutoId = BigInteger().with_variant(Integer, "sqlite")


def exact_string(length: int, collation: str | None) -> String:
    """A VARCHAR that compares byte for byte. MySQL's default collations are case- and
    trailing-space-insensitive, so 'Conv1', 'conv1' and 'conv1 ' would be one key there
    and three on PostgreSQL and SQLite. ``collation`` is the server's exact one
    (``Catalog`` picks it: utf8mb4_nopad_bin on MariaDB, utf8mb4_0900_bin on MySQL 8)."""
    if collation is None:
        return String(length)
    return String(length).with_variant(
        mysql.VARCHAR(length, charset="utf8mb4", collation=collation), "mysql", "mariadb"
    )
