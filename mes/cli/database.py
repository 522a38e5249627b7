"""``mes init-db``, ``mes migrate``, ``mes verify``: the database and its schema."""

from __future__ import annotations

import sys

import click

from mes.cli.common import handle_errors, load_settings


@click.command("init-db")
@handle_errors
def init_db() -> None:
    """Create the MES database if missing, its tables, and the coming days' tables."""
    from mes.log import configure_logging
    from mes.storage import Storage

    settings = load_settings()
    configure_logging(debug=settings.debug)
    storage = Storage.open(settings.database)
    try:
        click.echo(
            f"ready: {settings.database.db.describe()} (daily tables: {settings.database.daily_partition})"
        )
    finally:
        storage.close()


@click.command()
@handle_errors
def migrate() -> None:
    """Bring MES's tables, every daily table included, to this version's schema.

    Every MES process does this at start-up under a lock; this command does it alone and
    says what it did. Idempotent: run it as often as you like."""
    from mes.log import configure_logging
    from mes.storage import Storage
    from mes.storage.migrate import CURRENT

    settings = load_settings()
    configure_logging(debug=settings.debug)
    storage = Storage.open(settings.database)
    storage.close()
    for line in storage.migrated:
        click.echo(line)
    click.echo(f"schema version {CURRENT}: " + ("migrated" if storage.migrated else "already current"))


@click.command()
@handle_errors
def verify() -> None:
    """Recount every history table and compare with the conversation index and daily rollups.

    Exits 1 and lists the differences if any. It reads every row: run it off-peak.
    """
    from mes.storage import Storage
    from mes.storage.verify import compare, read_index, recount

    settings = load_settings()
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
