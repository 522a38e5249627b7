"""``mes partitions``: the daily tables listed, created ahead, dropped, archived, restored."""

from __future__ import annotations

import datetime as dt
import sys

import click

from mes.cli.common import handle_errors, human_bytes, load_settings, open_storage, parse_day


@click.group()
def partitions() -> None:
    """Daily tables (MES_DAILY_PARTITION=true): list, create ahead, drop, archive, restore."""


@partitions.command("list")
@handle_errors
def partitions_list() -> None:
    """Every day with tables: rows per table and size on disk."""
    from mes.storage.partitions import list_partitions

    storage = open_storage(load_settings())
    try:
        infos = list_partitions(storage)
    finally:
        storage.close()
    click.echo(f"{'day':<12}{'messages':>12}{'error rows':>12}{'events':>12}{'size':>12}")
    for p in infos:
        click.echo(f"{p.day.isoformat():<12}{p.rows.get('chat', 0):>12}{p.rows.get('error', 0):>12}"
                   f"{p.rows.get('ledger', 0):>12}{human_bytes(p.bytes):>12}")  # fmt: skip
    click.echo(f"{len(infos)} day(s)")


@partitions.command("create")
@click.option(
    "--days", default=None, type=click.IntRange(0, 366), help="Days ahead (default MES_CREATE_AHEAD_DAYS)."
)
@handle_errors
def partitions_create(days: int | None) -> None:
    """Create today's and the coming days' tables now (workers also do it)."""
    from mes.storage.partitions import require_daily

    settings = load_settings()
    storage = open_storage(settings)
    try:
        require_daily(storage)
        ahead = settings.database.create_ahead_days if days is None else days
        storage.catalog.ensure_ahead(storage.calendar.today(), ahead)
    finally:
        storage.close()
    click.echo(f"tables exist for today and the next {ahead} day(s)")


@partitions.command("drop")
@click.option(
    "--older-than-days",
    "older",
    required=True,
    type=click.IntRange(1, None),
    help="Drop days older than this.",
)
@click.option("--yes", is_flag=True, help="Do not ask.")
@handle_errors
def partitions_drop(older: int, yes: bool) -> None:
    """Drop the tables of days older than N days (rollups and index fixed to match)."""
    from mes.storage.partitions import days_older_than, drop_day, retention_cutoff

    storage = open_storage(load_settings())
    try:
        days = days_older_than(storage, older)
        if not days:
            click.echo(f"nothing older than {retention_cutoff(storage, older).isoformat()}")
            return
        if not yes:
            click.confirm(f"drop {len(days)} day(s), {days[0]} to {days[-1]}?", abort=True)
        with click.progressbar(days, label="dropping", file=sys.stderr) as bar:
            for day in bar:
                drop_day(storage, day)
    finally:
        storage.close()
    click.echo(f"dropped {len(days)} day(s)")


@partitions.command("archive")
@click.argument("day", type=parse_day)
@click.option("--out", "out", default=None, help="File to write (default mes-archive-DAY.jsonl.gz).")
@click.option("--keep", is_flag=True, help="Keep the tables after archiving (default: drop them).")
@handle_errors
def partitions_archive(day: dt.date, out: str | None, keep: bool) -> None:
    """Write DAY's tables to a compressed JSON Lines file, check it, then drop them."""
    from sqlalchemy import func, select

    from mes.storage.partitions import archive_day, require_daily, tables_of_day

    path = out or f"mes-archive-{day.isoformat()}.jsonl.gz"
    storage = open_storage(load_settings())
    try:
        require_daily(storage)
        known = storage.catalog.refresh()
        with storage.engine.connect() as conn:
            total = sum(int(conn.execute(select(func.count()).select_from(t)).scalar_one())
                        for t in tables_of_day(storage, day).values() if t.name in known)  # fmt: skip
        with click.progressbar(length=total, label=f"archiving {day}", file=sys.stderr) as bar:
            counts = archive_day(storage, day, path, drop=not keep, progress=bar.update)
    finally:
        storage.close()
    click.echo(
        f"archived {sum(counts.values())} rows of {day} to {path}" + ("" if keep else "; tables dropped")
    )


@partitions.command("restore")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@handle_errors
def partitions_restore(path: str) -> None:
    """Bring an archived day back: its tables, rows, index and rollups."""
    from mes.storage.partitions import read_counts, restore_archive

    storage = open_storage(load_settings())
    try:
        total = sum(read_counts(path).values())
        with click.progressbar(length=total, label="restoring", file=sys.stderr) as bar:
            counts = restore_archive(storage, path, progress=bar.update)
    finally:
        storage.close()
    erased = counts.pop("erased", 0)
    click.echo(f"restored {sum(counts.values())} rows from {path}"
               + (f"; left out {erased} of users erased since" if erased else ""))  # fmt: skip
