"""The ``mes`` command line. Each command reads the environment once, here, at the edge."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from . import __version__

F = TypeVar("F", bound=Callable[..., Any])


def _settings() -> Any:
    from mes.core.settings import Settings

    return Settings.from_env()


def handle_errors(func: F) -> F:
    """Turn MES's expected errors into one line on stderr and a non-zero exit, no traceback."""
    import functools

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from mes.core.errors import ConfigError, RetryableError

        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            click.echo(f"mes: configuration error: {exc}", err=True)
            sys.exit(2)
        except RetryableError as exc:
            click.echo(f"mes: unavailable: {exc}", err=True)
            sys.exit(3)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mes")
def main() -> None:
    """MES stores the chat history of LLM API gateways (New API / One API).

    Configuration comes from the environment, with the names New API uses:
    MES_SQL_DSN (or SQL_DSN; unset: SQLite in ./mes-data), MES_DAILY_PARTITION,
    REDIS_CONN_STRING, TZ, DEBUG. See README.md for every variable.
    """


@main.command("init-db")
@handle_errors
def init_db() -> None:
    """Create the MES database if missing, its tables, and the coming days' tables."""
    from mes.core.log import configure_logging
    from mes.storage import Storage

    settings = _settings()
    configure_logging(debug=settings.debug)
    storage = Storage.open(settings.database)
    try:
        click.echo(f"ready: {settings.database.db.describe()} (daily tables: {settings.database.daily_partition})")
    finally:
        storage.close()


@main.command()
@handle_errors
def verify() -> None:
    """Recount every history table and compare with the conversation index and daily rollups.

    Exits 1 and lists the differences if any. It reads every row: run it off-peak.
    """
    from mes.storage import Storage
    from mes.storage.verify import compare, read_index, recount

    settings = _settings()
    storage = Storage.open(settings.database)
    try:
        problems = compare(recount(storage.catalog, storage.calendar), read_index(storage.catalog))
    finally:
        storage.close()
    for line in problems[:100]:
        click.echo(line)
    if problems:
        click.echo(f"{len(problems)} difference(s)", err=True)
        sys.exit(1)
    click.echo("index and rollups equal a recount of the rows")


if __name__ == "__main__":  # pragma: no cover
    main()
