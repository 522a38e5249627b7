"""Operator commands: ``mes partitions``, ``mes doctor``, ``mes stats``."""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from typing import Any

import click

__all__ = ["register"]


def _settings() -> Any:
    from mes.cli import _settings as settings

    return settings()


def _open_storage(settings: Any) -> Any:
    from mes.storage import Storage

    return Storage.open(settings.database)


def _day(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a day: use YYYY-MM-DD") from None


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


# -- partitions ----------------------------------------------------------------------------
@click.group()
def partitions() -> None:
    """Daily tables (MES_DAILY_PARTITION=true): list, create ahead, drop, archive, restore."""


@partitions.command("list")
def partitions_list() -> None:
    """Every day with tables: rows per table and size on disk."""
    from mes.storage.partitions import list_partitions

    storage = _open_storage(_settings())
    try:
        infos = list_partitions(storage)
    finally:
        storage.close()
    click.echo(f"{'day':<12}{'messages':>12}{'error rows':>12}{'events':>12}{'size':>12}")
    for p in infos:
        click.echo(f"{p.day.isoformat():<12}{p.rows.get('chat', 0):>12}{p.rows.get('error', 0):>12}"
                   f"{p.rows.get('ledger', 0):>12}{_human(p.bytes):>12}")  # fmt: skip
    click.echo(f"{len(infos)} day(s)")


@partitions.command("create")
@click.option(
    "--days", default=None, type=click.IntRange(0, 366), help="Days ahead (default MES_CREATE_AHEAD_DAYS)."
)
def partitions_create(days: int | None) -> None:
    """Create today's and the coming days' tables now (workers also do it)."""
    from mes.storage.partitions import _require_daily

    settings = _settings()
    storage = _open_storage(settings)
    try:
        _require_daily(storage)
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
def partitions_drop(older: int, yes: bool) -> None:
    """Drop the tables of days older than N days (rollups and index fixed to match)."""
    from mes.storage.partitions import _require_daily, drop_day

    storage = _open_storage(_settings())
    try:
        _require_daily(storage)
        cutoff = storage.calendar.today() - dt.timedelta(days=older)
        days = [d for d in storage.catalog.partition_days() if d < cutoff]
        if not days:
            click.echo(f"nothing older than {cutoff.isoformat()}")
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
@click.argument("day", type=_day)
@click.option("--out", "out", default=None, help="File to write (default mes-archive-DAY.jsonl.gz).")
@click.option("--keep", is_flag=True, help="Keep the tables after archiving (default: drop them).")
def partitions_archive(day: dt.date, out: str | None, keep: bool) -> None:
    """Write DAY's tables to a compressed JSON Lines file, check it, then drop them."""
    from sqlalchemy import func, select

    from mes.storage.partitions import _require_daily, _tables, archive_day

    path = out or f"mes-archive-{day.isoformat()}.jsonl.gz"
    storage = _open_storage(_settings())
    try:
        _require_daily(storage)
        known = storage.catalog.refresh()
        with storage.engine.connect() as conn:
            total = sum(int(conn.execute(select(func.count()).select_from(t)).scalar_one())
                        for t in _tables(storage, day).values() if t.name in known)  # fmt: skip
        with click.progressbar(length=total, label=f"archiving {day}", file=sys.stderr) as bar:
            counts = archive_day(storage, day, path, drop=not keep, progress=bar.update)
    finally:
        storage.close()
    click.echo(
        f"archived {sum(counts.values())} rows of {day} to {path}" + ("" if keep else "; tables dropped")
    )


@partitions.command("restore")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def partitions_restore(path: str) -> None:
    """Bring an archived day back: its tables, rows, index and rollups."""
    from mes.storage.partitions import _read_counts, restore_archive

    storage = _open_storage(_settings())
    try:
        total = sum(_read_counts(path).values())
        with click.progressbar(length=total, label="restoring", file=sys.stderr) as bar:
            counts = restore_archive(storage, path, progress=bar.update)
    finally:
        storage.close()
    click.echo(f"restored {sum(counts.values())} rows from {path}")


# -- doctor --------------------------------------------------------------------------------
class _Report:
    def __init__(self) -> None:
        self.failed = False

    def line(self, status: str, what: str, detail: str, fix: str | None = None) -> None:
        color = {"OK": "green", "WARN": "yellow", "FAIL": "red"}[status]
        click.echo(click.style(f"{status:<5}", fg=color) + f"{what}: {detail}")
        if fix and status != "OK":
            click.echo(f"      fix: {fix}")
        if status == "FAIL":
            self.failed = True


def _doctor_database(report: _Report, settings: Any) -> Any:
    """Connect and look, creating nothing (but the probe table it says it drops at once):
    a database or tables that do not exist yet are reported, not made."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.pool import NullPool

    from mes.storage import Storage
    from mes.storage.engine import _connect_args, _explain, _is_unknown_database, sqlalchemy_url

    db = settings.database.db
    creates = "mes init-db creates it (as does any `mes` process: up, worker, serve)"
    if db.backend == "sqlite":
        if not os.path.exists(db.database):
            report.line("WARN", "database", f"{db.describe()} does not exist yet", creates)
            return None
    else:
        probe = create_engine(sqlalchemy_url(db), connect_args=_connect_args(db), poolclass=NullPool)
        try:
            with probe.connect():
                pass
        except DBAPIError as exc:
            if _is_unknown_database(db, exc):
                may = "" if db.backend == "mysql" else " if the role may create databases"
                report.line("WARN", "database", f"{db.describe()} does not exist yet", creates + may)
            else:
                report.line("FAIL", "database", str(_explain(settings.database, exc)),
                            "check MES_SQL_DSN, that the server runs, and the login")  # fmt: skip
            return None
        finally:
            probe.dispose()
    storage = Storage(settings.database)  # the constructor only: Storage.open would create and migrate
    engine = storage.engine
    with engine.connect() as conn:
        version = conn.execute(
            text("SELECT sqlite_version()" if engine.dialect.name == "sqlite" else "SELECT VERSION()")
        ).scalar()
    report.line("OK", "database", f"{db.describe()} ({engine.dialect.name} {version})")
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE mes_doctor_probe (x INTEGER)"))
            conn.execute(text("DROP TABLE mes_doctor_probe"))
        report.line("OK", "permissions", "may create and drop tables (daily tables need it; probed "
                    "with a table mes_doctor_probe, dropped at once)")  # fmt: skip
    except Exception as exc:
        report.line("FAIL", "permissions", str(exc).splitlines()[0][:200],
                    "grant CREATE and DROP on the MES database to this user")  # fmt: skip
    known = storage.catalog.refresh()
    missing = [
        t.name for t in (storage.catalog.conversations, storage.catalog.dead_letters) if t.name not in known
    ]
    if missing:
        report.line("WARN", "tables", f"MES's tables are not created yet ({', '.join(missing)})", creates)
        storage.close()
        return None
    if settings.database.daily_partition:
        today = storage.calendar.today()
        if storage.catalog.is_known(storage.catalog.day_tables(today).chat.name):
            report.line("OK", "daily tables", f"today's exist ({today}); TZ={settings.database.timezone}")
        else:
            report.line("WARN", "daily tables", f"today's are missing ({today})", "mes partitions create")
    return storage


def _doctor_redis(report: _Report, settings: Any) -> Any:
    import redis

    from mes.queue import queue_figures
    from mes.redis_conn import connect as redis_connect
    from mes.redis_conn import describe

    url = settings.queue.redis_url
    if not url:
        report.line("WARN", "redis", "REDIS_CONN_STRING is not set and no `mes up` runs here",
                    "set REDIS_CONN_STRING (or run `mes up`)")  # fmt: skip
        return None
    client = redis_connect(url, socket_timeout=3, socket_connect_timeout=3)
    try:
        info = client.info("server")
    except redis.RedisError as exc:
        report.line(
            "FAIL",
            "redis",
            f"cannot reach {describe(url)}: {exc}",
            "start Redis or fix REDIS_CONN_STRING",
        )
        return None
    report.line("OK", "redis", f"{describe(url)} (Redis {info.get('redis_version')})")
    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
    except redis.RedisError:
        policy = None
    if policy is None:
        report.line("WARN", "maxmemory-policy", "cannot read it (CONFIG is disabled here)",
                    "make sure the provider sets noeviction")  # fmt: skip
    elif policy != "noeviction":
        report.line("FAIL", "maxmemory-policy", f"{policy}: Redis may evict queued events",
                    "redis-cli CONFIG SET maxmemory-policy noeviction (and in redis.conf)")  # fmt: skip
    else:
        report.line("OK", "maxmemory-policy", "noeviction")
    try:
        aof = client.info("persistence").get("aof_enabled")
    except redis.RedisError:
        aof = None
    if aof == 0:
        report.line("WARN", "persistence", "AOF is off: a Redis restart loses queued events",
                    "redis-cli CONFIG SET appendonly yes (and in redis.conf)")  # fmt: skip
    elif aof == 1:
        report.line("OK", "persistence", "AOF on")
    figures = queue_figures(client, settings.queue.queue_name)
    backlog = figures["staged_events"] + figures["jobs_queued"]
    report.line("OK" if backlog < 10_000 else "WARN", "queue",
                f"{figures['staged_events']} events staged, {figures['batches_pending']} batches pending, "
                f"{figures['jobs_queued']} jobs queued, {figures['jobs_retrying']} retrying",
                "run more workers: mes worker -p N")  # fmt: skip
    if figures["jobs_failed"]:
        report.line("WARN", "failed jobs", f"{figures['jobs_failed']} batches failed after every retry",
                    "fix the cause (often the database), then: mes replay failed")  # fmt: skip
    else:
        report.line("OK", "failed jobs", "none")
    _doctor_brake(report, client, settings.queue.queue_name)
    return client


def _doctor_brake(report: _Report, client: Any, queue_name: str) -> None:
    from mes.worker.brake import held

    batches = held(client, queue_name)
    if not batches:
        report.line("OK", "poison brake", "not holding anything")
        return
    events = sum(int(b.get("invalid") or 0) for b in batches.values())
    latest = max(batches.values(), key=lambda b: int(b.get("at") or 0))
    report.line("WARN", "poison brake",
                f"{len(batches)} batch(es) mostly invalid (a gateway deploy?): {events} invalid event(s) held, "
                f"their valid events written; latest: {str(latest.get('example'))[:150]}",
                "fix the gateway or upgrade the workers, then: mes replay failed "
                "(what is still invalid becomes dead letters)")  # fmt: skip


def _doctor_dead_letters(report: _Report, storage: Any) -> None:
    from sqlalchemy import func, select

    t = storage.catalog.dead_letters
    with storage.engine.connect() as conn:
        count = int(conn.execute(select(func.count()).select_from(t)).scalar_one())
        sample = conn.execute(select(t.c.reason).order_by(t.c.id.desc()).limit(1)).scalar()
    if count:
        report.line("WARN", "dead letters", f"{count}, latest: {str(sample)[:150]}",
                    "fix what the reason says, then: mes replay dead-letters")  # fmt: skip
    else:
        report.line("OK", "dead letters", "none")


def _doctor_spool(report: _Report, settings: Any) -> None:
    from mes.producer.spool import Spool

    if not os.path.isdir(settings.producer.spool_dir):  # Spool() would create it
        report.line("OK", "spool", f"empty ({os.path.abspath(settings.producer.spool_dir)} not created yet)")
        return
    spool = Spool(settings.producer.spool_dir)
    files = spool.ready_files()
    if files:
        report.line("WARN", "spool", f"{len(files)} file(s), {_human(sum(f.size for f in files))} in {spool.directory}",
                    "a producer that is gone left them: mes replay spool")  # fmt: skip
    else:
        report.line("OK", "spool", f"empty ({spool.directory})")


def _doctor_auth(report: _Report, settings: Any) -> None:
    from sqlalchemy import create_engine, inspect

    from mes.storage.engine import sqlalchemy_url
    from mes.up import key_file

    if settings.main_db is None:
        kept = key_file(os.path.abspath(settings.data_dir))
        if settings.api.api_key:
            report.line("OK", "read API auth", "operator key (MES_API_KEY); SQL_DSN not set")
        elif kept is not None:
            report.line("OK", "read API auth", f"`mes up`'s operator key ({kept}); SQL_DSN not set "
                        "(`mes serve` alone needs MES_API_KEY or SQL_DSN)")  # fmt: skip
        else:
            report.line("WARN", "read API auth", "neither SQL_DSN nor MES_API_KEY is set: every call gets 401",
                        "set SQL_DSN to New API's database, or MES_API_KEY")  # fmt: skip
        return
    try:
        engine = create_engine(sqlalchemy_url(settings.main_db))
        names = set(inspect(engine).get_table_names())
        engine.dispose()
    except Exception as exc:
        report.line("FAIL", "read API auth", f"SQL_DSN: {str(exc).splitlines()[0][:150]}", "check SQL_DSN")
        return
    if {"users", "tokens"} <= names:
        report.line("OK", "read API auth", "New API's users and tokens (SQL_DSN)")
    else:
        report.line("WARN", "read API auth", "SQL_DSN has no users/tokens tables: is it New API's database?",
                    "point SQL_DSN at New API's main database")  # fmt: skip


@click.command()
def doctor() -> None:
    """Check configuration, connectivity, permissions, versions, Redis's eviction policy,
    the backlog, failed jobs, dead letters and the spool; print a fix for each problem.
    Exits 1 if anything FAILed."""
    from mes.errors import ConfigError

    report = _Report()
    try:
        settings = _settings()
    except ConfigError as exc:
        report.line("FAIL", "configuration", str(exc), "fix the variable it names")
        sys.exit(1)
    report.line(
        "OK", "configuration", f"read from the environment (data folder {os.path.abspath(settings.data_dir)})"
    )
    storage = _doctor_database(report, settings)
    client = _doctor_redis(report, settings)
    if storage is not None:
        _doctor_dead_letters(report, storage)
        storage.close()
    _doctor_spool(report, settings)
    _doctor_auth(report, settings)
    if client is not None:
        client.close()
    sys.exit(1 if report.failed else 0)


# -- stats ---------------------------------------------------------------------------------
@click.command()
@click.option(
    "--days", default=7, show_default=True, type=click.IntRange(1, 3660), help="Recent days to show."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
def stats(days: int, as_json: bool) -> None:
    """Queue depth, failed jobs, what the poison brake holds, dead letters, messages and
    errors per recent day, totals."""
    import orjson
    import redis
    from sqlalchemy import func, select

    from mes.days import date_of_int, day_int
    from mes.queue import queue_figures
    from mes.redis_conn import connect as redis_connect
    from mes.worker.brake import figures as braked_figures

    settings = _settings()
    storage = _open_storage(settings)
    out: dict[str, Any] = {"queue": None, "braked": None}
    try:
        s, c, d = storage.catalog.daily_stats, storage.catalog.conversations, storage.catalog.dead_letters
        since = day_int(storage.calendar.today() - dt.timedelta(days=days - 1))
        with storage.engine.connect() as conn:
            per_day = conn.execute(
                select(s.c.day, func.sum(s.c.messages), func.sum(s.c.requests), func.sum(s.c.errors),
                       func.sum(s.c.total_tokens)).where(s.c.day >= since).group_by(s.c.day).order_by(s.c.day)
            ).fetchall()  # fmt: skip
            totals = conn.execute(select(func.sum(s.c.messages), func.sum(s.c.requests), func.sum(s.c.errors),
                                         func.sum(s.c.total_tokens))).first()  # fmt: skip
            out["conversations"] = int(conn.execute(select(func.count()).select_from(c)).scalar_one())
            out["dead_letters"] = int(conn.execute(select(func.count()).select_from(d)).scalar_one())
        out["days"] = {date_of_int(r[0]).isoformat(): {"messages": int(r[1] or 0), "requests": int(r[2] or 0),
                       "errors": int(r[3] or 0), "tokens": int(r[4] or 0)} for r in per_day}  # fmt: skip
        out["totals"] = dict(
            zip(("messages", "requests", "errors", "tokens"), (int(v or 0) for v in totals), strict=True)
        )
    finally:
        storage.close()
    if settings.queue.redis_url:
        try:
            client = redis_connect(settings.queue.redis_url, socket_timeout=3, socket_connect_timeout=3)
            out["queue"] = queue_figures(client, settings.queue.queue_name)
            out["braked"] = braked_figures(client, settings.queue.queue_name)
            client.close()
        except redis.RedisError as exc:
            out["queue"] = {"error": str(exc)}
    out["at"] = int(time.time())
    if as_json:
        click.echo(orjson.dumps(out).decode())
        return
    q = out["queue"]
    if q is None:
        click.echo("queue: REDIS_CONN_STRING is not set")
    elif "error" in q:
        click.echo(f"queue: unreachable ({q['error']})")
    else:
        click.echo("queue: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in q.items()))
    b = out["braked"]
    if b is not None:
        click.echo(f"braked: {b['events']} invalid event(s) in {b['batches']} batch(es) held by the poison brake"
                   + (" (see mes doctor; release: mes replay failed)" if b["batches"] else ""))  # fmt: skip
    click.echo(f"dead letters: {out['dead_letters']}")
    t = out["totals"]
    click.echo(f"totals: {out['conversations']} conversations, {t['messages']} messages, {t['requests']} requests, "
               f"{t['errors']} errors, {t['tokens']} tokens")  # fmt: skip
    click.echo(f"last {days} day(s):")
    for day, v in out["days"].items():
        click.echo(
            f"  {day}  {v['messages']:>10} messages {v['requests']:>9} requests {v['errors']:>7} errors"
        )


def register(main: click.Group, handle_errors: Any) -> None:
    """Add the commands to ``main``; ``handle_errors`` turns MES's errors into one line."""
    for command in (partitions, doctor, stats):
        subs = command.commands.values() if isinstance(command, click.Group) else [command]
        for sub in subs:
            if sub.callback is not None:
                sub.callback = handle_errors(sub.callback)
        main.add_command(command)
