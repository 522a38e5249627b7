"""Schema migrations of MES's own tables, every existing daily table included.

``migrate(storage)`` brings a database written by an older MES to the current schema. It
runs at start-up (``Storage.open``) and as ``mes migrate``; it is idempotent and safe with
many workers starting at once: the first takes a lock (MySQL ``GET_LOCK``, PostgreSQL an
advisory lock, SQLite the write lock), the others wait for it and find nothing left to do.
``mes_schema`` holds the version reached, so a current database costs one query.

Steps, in order (each can be run again: a run killed half-way is finished by the next):

* **2, transcripts** (``storage.transcript``): the chat tables gain ``ordinal``,
  ``position``, ``digest`` and ``context``; ``mes_conversations`` its counters and tail.
  Existing rows are numbered in the order the older MES read them back (time, place in
  the request, id), ``GAP`` apart, and their turn digests computed from their columns;
  each conversation's tail is its whole transcript (the request a linear chat sends next
  starts with it). Requests stored before have no recorded context (``context`` NULL).
  Values are recomputed from the rows on every run, so a second run writes the same.

Columns are added with SQLAlchemy's own column DDL (``CreateColumn``), so each backend
gets the types the table definitions declare. Alembic was weighed and not used: its
version scripts fit fixed tables, and most of MES's tables are made per day at run time.
"""

from __future__ import annotations

import contextlib
from hashlib import blake2b
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, Connection, Integer, MetaData, String, Table, bindparam, inspect, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.schema import CreateColumn, CreateTable

from mes.log import get_logger
from mes.storage.backends import backend_for
from mes.storage.tables import CHAT_BASE, chat_table, conversations_table, mes_table, parse_day_suffix
from mes.storage.transcript import GAP
from mes.storage.turns import message_digest, stored_message

if TYPE_CHECKING:
    from mes.storage import Storage

__all__ = ["CURRENT", "migrate"]

log = get_logger("mes.storage")

CURRENT = 2  # 1: tables of MES before transcripts (no mes_schema table)
_LOCK = "mes_migrate"
_CHUNK = 1000


def _schema_table(metadata: MetaData) -> Table:
    return mes_table(
        "mes_schema",
        metadata,
        Column("name", String(32), primary_key=True),
        Column("version", Integer, nullable=False),
    )


def migrate(storage: Storage) -> list[str]:
    """Bring the database to ``CURRENT``; returns what was done (empty: nothing to do)."""
    engine = storage.engine
    schema = _schema_table(MetaData())
    # A current database is only read: a worker starting while another process holds
    # SQLite's write lock (or a long transaction) must not wait for it.
    if not inspect(engine).has_table(schema.name):
        try:
            # In a write transaction of its own: on SQLite a read that turns into a write in
            # one transaction is refused at once ("database is locked") when another writes.
            with engine.execution_options(mes_write=True).begin() as conn:
                conn.execute(CreateTable(schema, if_not_exists=True))
        except DBAPIError:  # another process made it at the same moment
            if not inspect(engine).has_table(schema.name):
                raise
    if _version(engine, schema) >= CURRENT:
        return []
    with _locked(storage) as conn:
        if _version(conn, schema) >= CURRENT:  # another process did it while we waited
            return []
        done = _to_transcripts(storage, conn)
        _set_version(conn, schema)
        conn.commit()
    for line in done:
        log.info("schema_migrated", step=line)
    return done


def _version(bind: Any, schema: Table) -> int:
    if isinstance(bind, Connection):
        return int(bind.execute(select(schema.c.version).where(schema.c.name == "mes")).scalar() or 1)
    with bind.connect() as conn:
        return _version(conn, schema)


def _set_version(conn: Connection, schema: Table) -> None:
    done = conn.execute(schema.update().where(schema.c.name == "mes").values(version=CURRENT))
    if done.rowcount == 0:
        conn.execute(schema.insert().values(name="mes", version=CURRENT))


def _locked(storage: Storage) -> contextlib.AbstractContextManager[Connection]:
    """A connection holding the migration lock (waits for another process's migration)."""
    return backend_for(storage.engine).lock(storage.engine, _LOCK)


# -- step 2: transcripts -----------------------------------------------------------------
def _add_missing_columns(conn: Connection, table: Table) -> list[str]:
    have = {c["name"] for c in inspect(conn).get_columns(table.name)}
    q = conn.dialect.identifier_preparer.quote
    added = []
    for column in table.columns:
        if column.name not in have:
            ddl = CreateColumn(column).compile(dialect=conn.dialect)
            conn.execute(text(f"ALTER TABLE {q(table.name)} ADD COLUMN {ddl}"))
            added.append(column.name)
    return added


def _chat_tables(names: set[str]) -> list[str]:
    """MES's chat tables, oldest first (the plain one before the daily ones)."""
    days = sorted((d, n) for n in names if (d := parse_day_suffix(n, CHAT_BASE)) is not None)
    return ([CHAT_BASE] if CHAT_BASE in names else []) + [n for _, n in days]


def _to_transcripts(storage: Storage, conn: Connection) -> list[str]:
    names = set(inspect(conn).get_table_names())
    if "mes_conversations" not in names:
        return []  # a new database: the tables are made with the current columns
    ids = storage.catalog.id_collation
    done: list[str] = []
    metadata = MetaData()
    conversations = conversations_table(metadata, ids)
    if added := _add_missing_columns(conn, conversations):
        done.append(f"mes_conversations: added {', '.join(added)}")
    tables = [chat_table(name, metadata, ids) for name in _chat_tables(names)]
    for table in tables:
        if added := _add_missing_columns(conn, table):
            done.append(f"{table.name}: added {', '.join(added)}")
    conn.commit()
    # conversation -> [rows numbered so far, the running digest of its turns]
    running: dict[tuple[str, int], list[Any]] = {}
    for table in tables:
        filled = _number_rows(conn, table, running)
        conn.commit()
        done.append(f"{table.name}: numbered {filled} rows")
    c = conversations.c
    for (cid, uid), (count, digest) in running.items():
        conn.execute(
            conversations.update()
            .where(c.conversation_id == cid, c.user_id == uid)
            .values(last_ordinal=count, max_position=GAP * count, tail_digest=digest.hexdigest(),
                    tail_len=count, tail_context=f"1-{count}" if count > 1 else str(count))
        )  # fmt: skip
    conn.commit()
    done.append(f"{len(running)} conversations: tails set")
    return done


def _number_rows(conn: Connection, table: Table, running: dict[tuple[str, int], list[Any]]) -> int:
    c = table.c
    order = select(c.id, c.conversation_id, c.user_id).order_by(
        c.conversation_id, c.user_id, c.created_at_ms, c.seq, c.id
    )
    rows = conn.execute(order).fetchall()
    numbered: dict[int, tuple[int, int]] = {}  # id -> (ordinal, position)
    digests: dict[int, bytes] = {}
    for i in range(0, len(rows), _CHUNK):
        chunk = [r.id for r in rows[i : i + _CHUNK]]
        for m in conn.execute(select(c.id, c.role, c.content, c.other).where(c.id.in_(chunk))):
            digests[m.id] = message_digest(stored_message(m.role, m.content, m.other))
    for r in rows:
        state = running.get((r.conversation_id, r.user_id))
        if state is None:
            state = running[(r.conversation_id, r.user_id)] = [0, blake2b(digest_size=16)]
        state[0] += 1
        state[1].update(digests[r.id])
        numbered[r.id] = (state[0], GAP * state[0])
    values = [
        {"b_id": rid, "b_ordinal": o, "b_position": p, "b_digest": digests[rid].hex()}
        for rid, (o, p) in numbered.items()
    ]
    stmt = (
        table.update()
        .where(c.id == bindparam("b_id"))
        .values(
            ordinal=bindparam("b_ordinal"), position=bindparam("b_position"), digest=bindparam("b_digest")
        )
    )
    for i in range(0, len(values), _CHUNK):
        conn.execute(stmt, values[i : i + _CHUNK])
    return len(values)
