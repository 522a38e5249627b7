"""The storage core: the MES database, its daily tables, and the exactly-once batch writer.

Everything in MES writes through or reads from this package. ``Storage.open(settings)``
creates the database if it is missing, the fixed tables, and today's and the next days'
tables when ``MES_DAILY_PARTITION`` is on.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine

from mes.config.settings import DatabaseSettings
from mes.days import DayCalendar
from mes.storage.catalog import Catalog
from mes.storage.dead_letters import DeadLetter
from mes.storage.engine import bootstrap_database, create_engine_for
from mes.storage.migrate import migrate
from mes.storage.writer import BatchDataError, BatchWriter, WriteResult

__all__ = ["BatchDataError", "BatchWriter", "DeadLetter", "Storage", "WriteResult"]


class Storage:
    """One MES database: engine, catalog of tables, day calendar and writer."""

    def __init__(self, settings: DatabaseSettings, *, clock_ms: Callable[[], int] | None = None) -> None:
        self.settings = settings
        self.engine: Engine = create_engine_for(settings)
        self.catalog = Catalog(self.engine, daily=settings.daily_partition)
        self.calendar = DayCalendar(settings.timezone, clock_ms)
        self.writer = BatchWriter(self.engine, self.catalog, self.calendar)
        self.migrated: list[str] = []  # what ``open`` migrated (storage.migrate)

    @classmethod
    def open(cls, settings: DatabaseSettings, *, clock_ms: Callable[[], int] | None = None) -> Storage:
        """Bootstrap the database, migrate MES's tables of an older version
        (``storage.migrate``), create the missing ones, then return a ready ``Storage``.

        Raises:
            ConfigError: the database is missing and cannot be created, or refuses the login.
            DatabaseUnavailable: the server cannot be reached.
        """
        bootstrap_database(settings)
        storage = cls(settings, clock_ms=clock_ms)
        storage._refuse_foreign_tables()
        storage.migrated = migrate(storage)
        storage.catalog.ensure_base()
        storage.create_ahead()
        return storage

    def _refuse_foreign_tables(self) -> None:
        """History tables MES did not create (the Go version's, say) lack MES's columns;
        writing into them would fail batch after batch. Say so once, at start."""
        from sqlalchemy import inspect

        from mes.errors import ConfigError

        inspector = inspect(self.engine)
        names = sorted(
            (
                n
                for n in self.catalog.refresh()
                if n.startswith(("conversation_histories", "error_conversation_histories"))
            ),
            reverse=True,
        )
        for name in names[:3]:
            columns = {c["name"] for c in inspector.get_columns(name)}
            if "event_id" not in columns:
                raise ConfigError(
                    f"{self.settings.source}: table {name} exists without MES's columns (created by the Go "
                    "version?): give MES its own database, e.g. a new database name in the DSN"
                )

    def create_ahead(self) -> None:
        """Create today's and the next ``MES_CREATE_AHEAD_DAYS`` days' tables (partitioned only)."""
        self.catalog.ensure_ahead(self.calendar.today(), self.settings.create_ahead_days)

    def close(self) -> None:
        self.engine.dispose()
