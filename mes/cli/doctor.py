"""``mes doctor``: every dependency and setting checked, each answered OK, WARN or FAIL."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from mes.cli.common import handle_errors, human_bytes, load_settings


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
    from mes.storage.backends import backend_of
    from mes.storage.engine import explain_connect_error, sqlalchemy_url

    db = settings.database.db
    backend = backend_of(db)
    creates = "mes init-db creates it (as does any `mes` process: up, worker, serve)"
    if not backend.is_server:
        if not os.path.exists(db.database):
            report.line("WARN", "database", f"{db.describe()} does not exist yet", creates)
            return None
    else:
        probe = create_engine(sqlalchemy_url(db), connect_args=backend.connect_args(db), poolclass=NullPool)
        try:
            with probe.connect():
                pass
        except DBAPIError as exc:
            if backend.is_unknown_database(exc):
                report.line(
                    "WARN", "database", f"{db.describe()} does not exist yet", creates + backend.create_hint
                )
            else:
                report.line("FAIL", "database", str(explain_connect_error(settings.database, exc)),
                            "check MES_SQL_DSN, that the server runs, and the login")  # fmt: skip
            return None
        finally:
            probe.dispose()
    storage = Storage(settings.database)  # the constructor only: Storage.open would create and migrate
    engine = storage.engine
    with engine.connect() as conn:
        version = conn.execute(backend.version_query()).scalar()
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
        report.line("WARN", "spool", f"{len(files)} file(s), {human_bytes(sum(f.size for f in files))} in {spool.directory}",
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
@handle_errors
def doctor() -> None:
    """Check configuration, connectivity, permissions, versions, Redis's eviction policy,
    the backlog, failed jobs, dead letters and the spool; print a fix for each problem.
    Exits 1 if anything FAILed."""
    from mes.errors import ConfigError

    report = _Report()
    try:
        settings = load_settings()
    except ConfigError as exc:
        report.line("FAIL", "configuration", str(exc), "fix the variable it names")
        sys.exit(1)
    report.line(
        "OK", "configuration", f"read from the environment (data folder {os.path.abspath(settings.data_dir)})"
    )
    report.line("OK", "privacy", settings.privacy.describe())
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
