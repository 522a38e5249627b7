"""New API's ``users`` and ``tokens`` tables (the columns MES reads, as New API's GORM
models declare them), and the cast of callers the API tests use."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, Integer, MetaData, String, Table, insert, update

metadata = MetaData()
users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("username", String(64), unique=True),
    Column("role", Integer, default=1),
    Column("status", Integer, default=1),
    Column("access_token", String(32), unique=True, nullable=True),
    Column("group", String(64), default="default"),
    Column("deleted_at", DateTime, nullable=True),
)
tokens = Table(
    "tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("user_id", Integer),
    Column("key", String(48), unique=True),
    Column("status", Integer, default=1),
    Column("name", String(64)),
    Column("expired_time", BigInteger, default=-1),
    Column("group", String(64), default=""),
    Column("deleted_at", DateTime, nullable=True),
)

OPERATOR_KEY = "mes-operator-key-for-tests-0123456789"


@dataclasses.dataclass(frozen=True)
class Cast:
    """Credentials (full ``Authorization`` values and headers) for each kind of caller."""

    a: dict[str, str]
    b: dict[str, str]
    admin: dict[str, str]
    root: dict[str, str]
    disabled_user: dict[str, str]
    disabled_token: dict[str, str]
    expired_token: dict[str, str]
    deleted_token: dict[str, str]
    a_access: dict[str, str]
    a_access_wrong_user: dict[str, str]
    a_short_key: dict[str, str]
    a_channel_suffix: dict[str, str]
    operator: dict[str, str]
    none: dict[str, str]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def install(engine: Any) -> Cast:
    """Create the tables (dropping earlier ones) and the callers: A (1), B (2), admin (10,
    role 10), root (100, role 100), a disabled user (3)."""
    metadata.drop_all(engine)
    metadata.create_all(engine)
    now = int(time.time())
    with engine.begin() as conn:
        conn.execute(
            insert(users),
            [
                {"id": 1, "username": "alice", "role": 1, "status": 1, "access_token": "acc0alice0000000000000000000000a"},
                {"id": 2, "username": "bob", "role": 1, "status": 1, "access_token": "acc0bob000000000000000000000000b"},
                {"id": 10, "username": "admin", "role": 10, "status": 1, "access_token": None},
                {"id": 100, "username": "root", "role": 100, "status": 1, "access_token": None},
                {"id": 3, "username": "carol", "role": 1, "status": 2, "access_token": None},
            ],
        )  # fmt: skip
        rows = [
            (1, 1, "a" * 48, 1, -1, None),
            (2, 2, "b" * 48, 1, -1, None),
            (3, 10, "d" * 48, 1, -1, None),
            (4, 100, "r" * 48, 1, now + 3600, None),
            (5, 3, "c" * 48, 1, -1, None),  # a live token of a disabled user
            (6, 1, "e" * 48, 2, -1, None),  # disabled
            (7, 1, "f" * 48, 1, now - 10, None),  # expired, status not yet flipped (as New API leaves it)
            (8, 1, "g" * 48, 1, -1, "2026-01-01 00:00:00"),  # deleted
            (9, 1, "h" * 32, 1, -1, None),  # an old One API key: 32 characters
        ]
        conn.execute(
            insert(tokens),
            [{"id": i, "user_id": u, "key": k, "status": s, "name": f"t{i}", "expired_time": e,
              "deleted_at": None if d is None else __import__("datetime").datetime.fromisoformat(d)}
             for i, u, k, s, e, d in rows],
        )  # fmt: skip
    return Cast(
        a=bearer("sk-" + "a" * 48),
        b=bearer("sk-" + "b" * 48),
        admin=bearer("sk-" + "d" * 48),
        root=bearer("sk-" + "r" * 48),
        disabled_user=bearer("sk-" + "c" * 48),
        disabled_token=bearer("sk-" + "e" * 48),
        expired_token=bearer("sk-" + "f" * 48),
        deleted_token=bearer("sk-" + "g" * 48),
        a_access={"Authorization": "acc0alice0000000000000000000000a", "New-Api-User": "1"},
        a_access_wrong_user={"Authorization": "Bearer acc0alice0000000000000000000000a", "New-Api-User": "2"},
        a_short_key=bearer("sk-" + "h" * 32),
        a_channel_suffix=bearer("sk-" + "a" * 48 + "-7"),
        operator=bearer(OPERATOR_KEY),
        none={},
    )


def disable_token(engine: Any, key: str) -> None:
    with engine.begin() as conn:
        conn.execute(update(tokens).where(tokens.c.key == key).values(status=2))
