"""The catalog: which tables exist, and creating the missing ones exactly once.

Known table names are cached per process, so a batch never asks the database's catalog
whether its day's tables exist; only a day the process has not seen costs a round trip.
Creation is safe when many workers create the same new day at the same moment: each
runs ``CREATE TABLE IF NOT EXISTS`` outside the data transaction (MySQL commits DDL
implicitly), and PostgreSQL's occasional ``UniqueViolation`` on ``pg_type`` from that race
is treated as "someone else made it" once the table is confirmed to exist.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterable

from sqlalchemy import Engine, MetaData, Table, insert, inspect, select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.schema import CreateIndex, CreateTable

from mes.days import date_of_int
from mes.log import get_logger
from mes.metrics import PARTITIONS_CREATED
from mes.storage.backends import backend_for
from mes.storage.tables import (
    CHAT_BASE,
    ERROR_BASE,
    LEDGER_BASE,
    UNCAPTURED_BASE,
    DayTables,
    audit_table,
    chat_table,
    content_expired_table,
    conversations_table,
    daily_stats_table,
    dead_letters_table,
    erasures_table,
    error_table,
    parse_day_suffix,
    uncaptured_table,
    write_gate_table,
)

__all__ = ["Catalog", "exact_collation"]

log = get_logger("mes.storage")


def exact_collation(engine: Engine) -> str | None:
    """The byte-exact collation of the ids' columns on this server; None where the default is."""
    return backend_for(engine).exact_collation(engine)


class Catalog:
    """Tables of one MES database. Thread-safe; one per engine."""

    def __init__(self, engine: Engine, *, daily: bool) -> None:
        self.engine = engine
        self.daily = daily
        self.metadata = MetaData()
        self.id_collation = exact_collation(engine)
        ids = self.id_collation
        self.conversations = conversations_table(self.metadata, ids)
        self.daily_stats = daily_stats_table(self.metadata, ids)
        self.dead_letters = dead_letters_table(self.metadata, ids)
        self.content_expired = content_expired_table(self.metadata)
        self.audit = audit_table(self.metadata, ids)
        self.erasures = erasures_table(self.metadata)
        self.write_gate = write_gate_table(self.metadata)
        self._days: dict[dt.date | None, DayTables] = {}
        self._known: set[str] = set()
        self._lock = threading.Lock()

    # -- lookups -------------------------------------------------------------------
    def day_tables(self, day: dt.date | None) -> DayTables:
        """The tables that hold ``day`` (the plain tables when partitioning is off). No I/O."""
        key = day if self.daily else None
        tables = self._days.get(key)
        if tables is None:
            with self._lock:
                tables = self._days.get(key)
                if tables is None:
                    tables = DayTables(key, self.metadata, self.id_collation)
                    self._days[key] = tables
        return tables

    def is_known(self, name: str) -> bool:
        return name in self._known

    def refresh(self) -> set[str]:
        """Re-read table names from the database (after another process dropped some)."""
        names = set(inspect(self.engine).get_table_names())
        with self._lock:
            self._known = names
        return names

    def partition_days(self) -> list[dt.date]:
        """Days that have a daily chat or error table, oldest first (from the catalog)."""
        days = set()
        for name in self.refresh():
            for base in (CHAT_BASE, ERROR_BASE, LEDGER_BASE, UNCAPTURED_BASE):
                day = parse_day_suffix(name, base)
                if day is not None:
                    days.add(day)
        return sorted(days)

    # -- creation ------------------------------------------------------------------
    def ensure_base(self) -> None:
        """Create the fixed tables (and the plain history tables when not partitioned)."""
        self.refresh()
        fixed = [self.conversations, self.daily_stats, self.dead_letters, self.content_expired, self.audit]
        fixed += [self.erasures, self.write_gate]
        if not self.daily:
            fixed.extend(self.day_tables(None).chat_error_ledger())
        self._create(fixed)
        self._seed_gate()

    def _seed_gate(self) -> None:
        """The write gate's one row (``tables.write_gate_table``), made once."""
        gate = self.write_gate
        with self.engine.connect() as conn:
            if conn.execute(select(gate.c.id).where(gate.c.id == 1)).first() is not None:
                return
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(gate).values(id=1, erasures=0))
        except IntegrityError:  # another process made it first
            pass

    def ensure_days(self, days: Iterable[dt.date]) -> None:
        """Make sure every day's tables exist; one catalog round trip per unseen day."""
        missing: list[Table] = []
        for day in set(days):
            tables = self.day_tables(day)
            missing.extend(t for t in tables.chat_error_ledger() if t.name not in self._known)
        if missing:
            self._create(missing)

    def ensure_uncaptured(self, days: Iterable[dt.date | None]) -> None:
        """The ``mes_uncaptured`` tables of ``days`` (None: the plain one), made when an
        event kept as counts only (``MES_CAPTURE=none``) first lands on a day."""
        missing = [t for t in (self.day_tables(d).uncaptured for d in set(days)) if t.name not in self._known]
        if missing:
            self._create(missing)

    def ensure_ahead(self, today: dt.date, days_ahead: int) -> None:
        """Create today's and the next ``days_ahead`` days' tables, so midnight finds them ready."""
        if self.daily:
            self.ensure_days(today + dt.timedelta(days=i) for i in range(days_ahead + 1))

    def _create(self, tables: list[Table]) -> None:
        todo = [t for t in tables if t.name not in self._known]
        if not todo:
            return
        dialect = self.engine.dialect
        for table in todo:
            statements = [str(CreateTable(table, if_not_exists=True).compile(dialect=dialect))]
            # Indexes that are not constraints need their own statement; MySQL has no
            # CREATE INDEX IF NOT EXISTS, so they are only made with a table we created.
            index_sql = [str(CreateIndex(ix).compile(dialect=dialect)) for ix in table.indexes]
            self._create_one(table.name, statements, index_sql)
            with self._lock:
                self._known.add(table.name)

    def _create_one(self, name: str, create_sql: list[str], index_sql: list[str]) -> None:
        existed = name in set(inspect(self.engine).get_table_names())
        if existed:
            return
        try:
            with self.engine.begin() as conn:
                for sql in create_sql:
                    conn.exec_driver_sql(sql)
        except DBAPIError as exc:
            if not self._exists(name):
                raise
            log.debug("table_create_race", table=name, error=str(exc.orig).splitlines()[0])
            return
        for sql in index_sql:
            try:
                with self.engine.begin() as conn:
                    conn.exec_driver_sql(sql)
            except DBAPIError as exc:  # another process made the same index first
                if "exist" not in str(exc.orig).lower() and "duplicate" not in str(exc.orig).lower():
                    raise
        PARTITIONS_CREATED.inc()
        log.info("table_created", table=name)

    def _exists(self, name: str) -> bool:
        return name in set(inspect(self.engine).get_table_names())

    def history_tables(self, days: Iterable[int], kind: str) -> list[Table]:
        """The existing tables (``chat``, ``error`` or ``uncaptured``) that may hold rows of ``days``
        (``YYYYMMDD`` integers), newest day first."""
        wanted = []
        if self.daily:
            wanted = [getattr(self.day_tables(date_of_int(d)), kind) for d in sorted(set(days), reverse=True)]
        plain = getattr(self.day_tables(None), kind) if not self.daily else None
        if plain is None:
            # partitioning was switched on later: rows of older days may sit in the plain table
            plain = self._plain(kind)
        candidates = [*wanted, plain] if plain is not None else wanted
        if any(not self.is_known(t.name) for t in candidates):
            self.refresh()
        return [t for t in candidates if self.is_known(t.name)]

    def _plain(self, kind: str) -> Table | None:
        name = {"chat": CHAT_BASE, "error": ERROR_BASE, "uncaptured": UNCAPTURED_BASE}[kind]
        if not self.is_known(name):
            return None
        existing = self.metadata.tables.get(name)
        if existing is not None:
            return existing
        make = {"chat": chat_table, "error": error_table, "uncaptured": uncaptured_table}[kind]
        return make(name, self.metadata, self.id_collation)

    def drop_day(self, day: dt.date) -> list[str]:
        """Drop the tables of ``day``; returns the names that existed."""
        tables = self.day_tables(day)
        existing = self.refresh()
        dropped = []
        with self.engine.begin() as conn:
            for table in tables.every():
                if table.name in existing:
                    table.drop(conn)
                    dropped.append(table.name)
        with self._lock:
            self._known.difference_update(dropped)
        return dropped
