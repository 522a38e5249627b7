"""The fastest correct bulk statements of each backend, on a raw DB-API cursor.

Measured on a 2-core machine (see ``bench/writer.py``): PyMySQL's ``executemany`` turns an
``INSERT ... VALUES`` into multi-row statements of up to 1 MB; PostgreSQL's ``COPY`` is
about twice ``execute_values``; SQLite's ``executemany`` reuses one prepared statement.
Upserts use each server's native form (``ON DUPLICATE KEY UPDATE`` / ``ON CONFLICT``) in one
multi-row statement; SQLAlchemy's ORM-level paths make a round trip per row on some of
these and are avoided on the hot path.

Identifiers are quoted by the SQLAlchemy dialect's preparer; table names come from
:mod:`mes.storage.tables` (validated dates); values always travel as parameters, except
in MySQL's bulk INSERT: PyMySQL renders parameters into the statement text on the client
in any case, and MES does that step itself there (:func:`_mysql_literal`) with PyMySQL's
own escaping, because PyMySQL's per-value path was 44 % of the writer's time on MariaDB.
"""

from __future__ import annotations

import csv
import io
import re
import weakref
from collections.abc import Sequence
from hashlib import blake2b
from typing import Any

from sqlalchemy import Engine, Table

from mes.storage.backends import backend_for
from mes.storage.backends.mysql import MYSQL
from mes.storage.backends.postgresql import POSTGRESQL
from mes.storage.backends.sqlite import SQLITE

__all__ = ["Bulk", "ErrorKind", "bulk_for"]

Row = Sequence[Any]


class ErrorKind:
    RETRY = "retry"  # deadlock, lock timeout, a concurrent insert of the same key: run the transaction again
    UNAVAILABLE = "unavailable"  # the connection or the server: retry the job later
    DATA = "data"  # a value the database refused: tied to an event; split the batch to find it


class Bulk:
    """Statements for one dialect. Subclasses override what differs."""

    param = "%s"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._quote = engine.dialect.identifier_preparer.quote
        self._sql_cache: dict[tuple[Any, ...], str] = {}

    # -- SQL text ------------------------------------------------------------------
    def q(self, name: str) -> str:
        return self._quote(name)

    def _cols(self, columns: Sequence[str]) -> str:
        return ", ".join(self.q(c) for c in columns)

    def marks(self, n: int) -> str:
        """``(%s, %s, ...)``: n parameters, for VALUES and IN lists."""
        return "(" + ", ".join([self.param] * n) + ")"

    # -- transactions --------------------------------------------------------------
    def begin(self, dbapi_conn: Any) -> None:
        """Start a write transaction (drivers that begin implicitly need nothing)."""

    # -- statements ----------------------------------------------------------------
    def insert(self, cur: Any, table: Table, columns: Sequence[str], rows: Sequence[Row]) -> None:
        if not rows:
            return
        key = ("insert", table.name, tuple(columns))
        sql = self._sql_cache.get(key)
        if sql is None:
            sql = (
                f"INSERT INTO {self.q(table.name)} ({self._cols(columns)}) VALUES {self.marks(len(columns))}"
            )
            self._sql_cache[key] = sql
        cur.executemany(sql, rows)

    def delete_keys(self, cur: Any, table: Table, keys: Sequence[str], values: Sequence[Row]) -> None:
        """Delete the rows whose ``keys`` equal each tuple of ``values``."""
        if not values:
            return
        where = " AND ".join(f"{self.q(k)} = {self.param}" for k in keys)
        cur.executemany(f"DELETE FROM {self.q(table.name)} WHERE {where}", values)

    def upsert(
        self,
        cur: Any,
        table: Table,
        columns: Sequence[str],
        keys: Sequence[str],
        rows: Sequence[Row],
        *,
        add: Sequence[str] = (),
        keep: bool = False,
    ) -> None:
        """Insert ``rows``; on a key conflict set the other columns to the new values,
        or add the new values to the columns named in ``add``; ``keep`` leaves the old row."""
        if not rows:
            return
        key = ("upsert", table.name, tuple(columns), tuple(keys), tuple(add), keep)
        sql = self._sql_cache.get(key)
        if sql is None:
            sql = self._upsert_sql(table.name, columns, keys, add, keep)
            self._sql_cache[key] = sql
        self._run_upsert(cur, sql, rows)

    def _run_upsert(self, cur: Any, sql: str, rows: Sequence[Row]) -> None:
        cur.executemany(sql, rows)

    def _upsert_sql(
        self, table: str, columns: Sequence[str], keys: Sequence[str], add: Sequence[str], keep: bool
    ) -> str:
        t = self.q(table)
        head = f"INSERT INTO {t} ({self._cols(columns)}) VALUES {self.marks(len(columns))}"
        conflict = f" ON CONFLICT ({self._cols(keys)}) "
        if keep:
            return head + conflict + "DO NOTHING"
        sets = []
        for c in columns:
            if c in keys:
                continue
            qc = self.q(c)
            sets.append(f"{qc} = {t}.{qc} + excluded.{qc}" if c in add else f"{qc} = excluded.{qc}")
        return head + conflict + "DO UPDATE SET " + ", ".join(sets)

    def lock_suffix(self) -> str:
        return " FOR UPDATE"

    def share_suffix(self) -> str:
        """A shared row lock: other readers share it, a writer of the row waits for them."""
        return " FOR SHARE"

    # -- the write gate (``storage.erase``) --------------------------------------------
    def gate(self, cur: Any) -> int:
        """The write gate's count, read under a shared lock this transaction holds to its
        end: an erasure's ``close_gate`` waits for it, and holds new ones back."""
        q = self.q
        cur.execute(
            f"SELECT {q('erasures')} FROM {q('mes_write_gate')} WHERE {q('id')} = 1{self.share_suffix()}"
        )
        row = cur.fetchone()
        return int(row[0]) if row else 0

    def close_gate(self, conn: Any) -> None:
        """In an erasure's transaction (a SQLAlchemy connection), before it updates the gate
        row: what makes it wait for the batches under way (here: the update's own row lock)."""

    def by_key(self) -> str:
        """What follows a table's name to make a locking read go by its primary key."""
        return ""

    def claim(self, cur: Any, keys: Sequence[tuple[str, int]], *, wait: bool = False) -> set[tuple[str, int]]:
        """Claim conversations (``keys`` in sorted order) for this transaction; returns
        those another writer holds. Without ``wait`` it does not wait, so a writer can leave
        a conversation that another batch is writing for later instead of waiting for that
        batch's whole transaction; with ``wait`` it queues for them (in key order: no two
        waiting writers deadlock). A claim keeps writers apart; it is not the guard (the
        unique keys and row locks are)."""
        return set()

    def release_claims(self, dbapi_conn: Any) -> None:
        """Give up this session's claims (after commit or rollback) where they outlive
        the transaction."""

    def after_transaction(self, dbapi_conn: Any, *, committed: bool) -> None:
        """Called by the writer after each commit or rollback."""
        self.release_claims(dbapi_conn)

    # -- errors ----------------------------------------------------------------------
    def classify(self, exc: BaseException) -> str | None:
        """What kind of failure a driver exception is (an ``ErrorKind``), or None if not a DB error."""
        return None


def _claim_digest(key: tuple[str, int]) -> bytes:
    """A conversation's claim: MySQL names it by the hex, PostgreSQL numbers it by the first 8 bytes."""
    return blake2b(f"{key[1]}|{key[0]}".encode(), digest_size=16).digest()


# The characters PyMySQL's ``escape_string`` rewrites; a string without any (most text)
# goes into the statement as it is, after one scan in C instead of a per-character table.
_MYSQL_SPECIAL = re.compile(r"""[\x00\n\r\x1a\\"']""")
_MYSQL_STMT_MAX = 1_024_000  # as PyMySQL's executemany: statements of up to ~1 MB


def _mysql_literal(value: Any, conn: Any) -> str:
    """``value`` as PyMySQL renders it into a statement (``Connection.escape``, which its
    cursors call for every parameter)."""
    kind = type(value)
    if kind is str:
        if _MYSQL_SPECIAL.search(value) is None:
            return f"'{value}'"
        return str(conn.escape(value))  # PyMySQL's own: it knows NO_BACKSLASH_ESCAPES
    if value is None:
        return "NULL"
    if kind is int:
        return str(value)
    if kind is bool:
        return "1" if value else "0"
    return str(conn.escape(value))


class MySQLBulk(Bulk):
    def insert(self, cur: Any, table: Table, columns: Sequence[str], rows: Sequence[Row]) -> None:
        """Multi-row INSERTs of up to ~1 MB each, rendered here (see the module docstring)."""
        if not rows:
            return
        key = ("insert-head", table.name, tuple(columns))
        head = self._sql_cache.get(key)
        if head is None:
            head = self._sql_cache[key] = f"INSERT INTO {self.q(table.name)} ({self._cols(columns)}) VALUES "
        conn = cur.connection
        parts: list[str] = []
        size = len(head)
        for row in rows:
            text = "(" + ",".join([_mysql_literal(v, conn) for v in row]) + ")"
            if parts and size + len(text) + 1 > _MYSQL_STMT_MAX:
                cur.execute(head + ",".join(parts))
                parts, size = [], len(head)
            parts.append(text)
            size += len(text) + 1
        cur.execute(head + ",".join(parts))

    _WAIT_S = 30  # a claim not had by then is left to the keys and row locks

    def claim(self, cur: Any, keys: Sequence[tuple[str, int]], *, wait: bool = False) -> set[tuple[str, int]]:
        # Named locks of the session, released after the transaction.
        busy: set[tuple[str, int]] = set()
        if wait:  # one at a time, in order
            for k in keys:
                cur.execute("SELECT GET_LOCK(%s, %s)", ("mes:" + _claim_digest(k).hex(), self._WAIT_S))
                if cur.fetchone()[0] != 1:
                    busy.add(k)
            return busy
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            cur.execute(
                "SELECT " + ", ".join(["GET_LOCK(%s, 0)"] * len(chunk)),
                ["mes:" + _claim_digest(k).hex() for k in chunk],
            )
            got = cur.fetchone()
            busy.update(k for k, ok in zip(chunk, got, strict=True) if ok != 1)
        return busy

    def release_claims(self, dbapi_conn: Any) -> None:
        with dbapi_conn.cursor() as cur:
            cur.execute("DO RELEASE_ALL_LOCKS()")

    _RETRY = frozenset({1205, 1213, 1062})  # lock wait timeout, deadlock, duplicate key (a race)
    _UNAVAILABLE = frozenset({2002, 2003, 2006, 2013, 2055, 1040, 1053, 1927, 4031})
    _DATA = frozenset({1048, 1153, 1264, 1292, 1366, 1406, 1300, 3988, 1301, 4025})

    def begin(self, dbapi_conn: Any) -> None:
        dbapi_conn.begin()

    def share_suffix(self) -> str:
        return " LOCK IN SHARE MODE"  # MariaDB has no FOR SHARE (MySQL 8 has both)

    def by_key(self) -> str:
        # With a long IN list InnoDB may choose to scan the table, and a locking scan waits
        # for every row another writer holds, not just the ones asked for: two workers
        # then take turns (seen with 2,000 chats under way: two writers no faster than one).
        return " FORCE INDEX (PRIMARY)"

    def _upsert_sql(
        self, table: str, columns: Sequence[str], keys: Sequence[str], add: Sequence[str], keep: bool
    ) -> str:
        head = f"INSERT INTO {self.q(table)} ({self._cols(columns)}) VALUES {self.marks(len(columns))}"
        if keep:
            # A no-op update, not INSERT IGNORE: IGNORE would also turn data errors into warnings.
            first = self.q(keys[0])
            return head + f" ON DUPLICATE KEY UPDATE {first} = {first}"
        sets = []
        for c in columns:
            if c in keys:
                continue
            qc = self.q(c)
            sets.append(f"{qc} = {qc} + VALUES({qc})" if c in add else f"{qc} = VALUES({qc})")
        return head + " ON DUPLICATE KEY UPDATE " + ", ".join(sets)

    def classify(self, exc: BaseException) -> str | None:
        import pymysql

        if not isinstance(exc, pymysql.err.Error):
            return None
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        if code in self._RETRY:
            return ErrorKind.RETRY
        if code in self._DATA or isinstance(exc, pymysql.err.DataError):
            return ErrorKind.DATA
        if code in self._UNAVAILABLE or isinstance(exc, pymysql.err.InterfaceError):
            return ErrorKind.UNAVAILABLE
        if isinstance(exc, pymysql.err.OperationalError):
            return ErrorKind.UNAVAILABLE
        if isinstance(exc, pymysql.err.IntegrityError):
            return ErrorKind.RETRY
        return ErrorKind.DATA


class _Null:
    """Written unquoted by ``csv`` (it looks numeric), so COPY reads it as NULL, while a
    real string ``\\N`` is quoted and stays a string."""

    __slots__ = ()

    def __float__(self) -> float:
        return 0.0

    def __str__(self) -> str:
        return "\\N"


_NULL = _Null()


class PostgresBulk(Bulk):
    # The write gate as an advisory lock (two keys: apart from the claims' one-key locks):
    # a shared one takes no row lock, so no batch writes to the gate row, and PostgreSQL
    # queues a new shared request behind a waiting exclusive one (no erasure starves).
    _GATE = "7169627, 1"  # "mes" in ASCII, and 1

    def gate(self, cur: Any) -> int:
        cur.execute(f"SELECT pg_advisory_xact_lock_shared({self._GATE})")
        cur.execute('SELECT "erasures" FROM "mes_write_gate" WHERE "id" = 1')
        row = cur.fetchone()
        return int(row[0]) if row else 0

    def close_gate(self, conn: Any) -> None:
        conn.exec_driver_sql("SET LOCAL lock_timeout = '60s'")  # batches under way finish in less
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({self._GATE})")

    def claim(self, cur: Any, keys: Sequence[tuple[str, int]], *, wait: bool = False) -> set[tuple[str, int]]:
        # Transaction-level advisory locks: they go with the commit or the rollback.
        if not keys:
            return set()
        numbers = [int.from_bytes(_claim_digest(k)[:8], "big", signed=True) for k in keys]
        if wait:  # one statement; the array's order is the order they are taken in
            cur.execute(
                "SELECT count(pg_advisory_xact_lock(n)) FROM unnest(%s::bigint[]) AS t(n)", (numbers,)
            )
            cur.fetchall()
            return set()
        cur.execute(
            "SELECT n FROM unnest(%s::bigint[]) AS t(n) WHERE NOT pg_try_advisory_xact_lock(n)",
            (numbers,),
        )
        refused = {r[0] for r in cur.fetchall()}
        return {k for k, n in zip(keys, numbers, strict=True) if n in refused}

    # Upserts of this many rows or more go through a staging table: COPY, then one
    # INSERT ... SELECT ... ON CONFLICT. Measured on 2 cores with ~220 rollup rows: about a
    # third of the time of execute_values, whose VALUES list psycopg2 builds row by row in
    # Python and the server parses as one long statement.
    STAGE_MIN_ROWS = 16

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        # Per DB-API connection: staging tables known to exist, and those created in the
        # transaction under way (they count once it commits; a rollback takes them back).
        self._stages: weakref.WeakKeyDictionary[Any, tuple[set[str], set[str]]] = weakref.WeakKeyDictionary()

    def insert(self, cur: Any, table: Table, columns: Sequence[str], rows: Sequence[Row]) -> None:
        self._copy(cur, table.name, columns, rows)

    def _copy(self, cur: Any, name: str, columns: Sequence[str], rows: Sequence[Row]) -> None:
        if not rows:
            return
        key = ("copy", name, tuple(columns))
        sql = self._sql_cache.get(key)
        if sql is None:
            sql = f"COPY {self.q(name)} ({self._cols(columns)}) FROM STDIN WITH (FORMAT csv, NULL '\\N')"
            self._sql_cache[key] = sql
        buf = io.StringIO()
        writer = csv.writer(buf, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
        null = _NULL
        writer.writerows([[null if v is None else v for v in row] for row in rows])
        buf.seek(0)
        cur.copy_expert(sql, buf)

    def _upsert_sql(
        self, table: str, columns: Sequence[str], keys: Sequence[str], add: Sequence[str], keep: bool
    ) -> str:
        # execute_values wants a single %s for the whole VALUES list.
        sql = super()._upsert_sql(table, columns, keys, add, keep)
        return sql.replace(self.marks(len(columns)), "%s", 1)

    def _run_upsert(self, cur: Any, sql: str, rows: Sequence[Row]) -> None:
        from psycopg2.extras import execute_values

        execute_values(cur, sql, rows, page_size=max(1, len(rows)))

    def upsert(
        self,
        cur: Any,
        table: Table,
        columns: Sequence[str],
        keys: Sequence[str],
        rows: Sequence[Row],
        *,
        add: Sequence[str] = (),
        keep: bool = False,
    ) -> None:
        if keep or len(rows) < self.STAGE_MIN_ROWS:
            super().upsert(cur, table, columns, keys, rows, add=add, keep=keep)
            return
        stage = "mes_stage_" + table.name
        ready, pending = self._stages.setdefault(cur.connection, (set(), set()))
        if stage not in ready and stage not in pending:
            # A temporary table of this session; emptied at each commit.
            cur.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {self.q(stage)} "
                f"(LIKE {self.q(table.name)} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            pending.add(stage)
        key = ("staged", table.name, tuple(columns), tuple(keys), tuple(add))
        sql = self._sql_cache.get(key)
        if sql is None:
            # Rows are taken in key order: the lock order that keeps writers from deadlocking.
            source = f"SELECT {self._cols(columns)} FROM {self.q(stage)} ORDER BY {self._cols(keys)}"
            upsert = Bulk._upsert_sql(self, table.name, columns, keys, add, False)
            sql = upsert.replace("VALUES " + self.marks(len(columns)), source, 1)
            sql += f"; DELETE FROM {self.q(stage)}"  # empty again for a second use in this transaction
            self._sql_cache[key] = sql
        self._copy(cur, stage, columns, rows)
        cur.execute(sql)

    def after_transaction(self, dbapi_conn: Any, *, committed: bool) -> None:
        super().after_transaction(dbapi_conn, committed=committed)
        if committed:
            ready, pending = self._stages.get(dbapi_conn, (set(), set()))
            ready |= pending
            pending.clear()
        else:  # forget them all: CREATE ... IF NOT EXISTS makes them again if they are gone
            self._stages.pop(dbapi_conn, None)

    def classify(self, exc: BaseException) -> str | None:
        import psycopg2

        if not isinstance(exc, psycopg2.Error):
            return None
        code = getattr(exc, "pgcode", None) or ""
        if code in ("40P01", "40001", "55P03", "23505"):
            return ErrorKind.RETRY
        if code.startswith("08") or code.startswith("57") or code.startswith("53"):
            return ErrorKind.UNAVAILABLE
        if code.startswith("22") or code.startswith("54") or code.startswith("23"):
            return ErrorKind.DATA
        if isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError):
            return ErrorKind.UNAVAILABLE
        return ErrorKind.DATA


class SQLiteBulk(Bulk):
    param = "?"

    def begin(self, dbapi_conn: Any) -> None:
        # IMMEDIATE takes the write lock now (waiting up to busy_timeout), so the reads that
        # plan the batch see what the batch will be written over: SQLite has one writer.
        dbapi_conn.execute("BEGIN IMMEDIATE")

    def lock_suffix(self) -> str:
        return ""

    def share_suffix(self) -> str:
        return ""  # one writer at a time already (BEGIN IMMEDIATE)

    def classify(self, exc: BaseException) -> str | None:
        import sqlite3

        if not isinstance(exc, sqlite3.Error):
            return None
        message = str(exc).lower()
        if isinstance(exc, sqlite3.IntegrityError):
            return ErrorKind.RETRY if "unique" in message else ErrorKind.DATA
        if "locked" in message or "busy" in message:
            return ErrorKind.RETRY
        if isinstance(exc, sqlite3.OperationalError) and ("disk" in message or "unable to open" in message):
            return ErrorKind.UNAVAILABLE
        return ErrorKind.DATA


def bulk_for(engine: Engine) -> Bulk:
    """The bulk path of ``engine``'s backend."""
    bulk = {MYSQL: MySQLBulk, POSTGRESQL: PostgresBulk, SQLITE: SQLiteBulk}[backend_for(engine)]
    return bulk(engine)
