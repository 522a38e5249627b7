"""The ``mes`` command line. Each command reads the environment once, here, at the edge."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from mes import __version__

F = TypeVar("F", bound=Callable[..., Any])


def _settings() -> Any:
    """Settings from the environment. With REDIS_CONN_STRING unset, the embedded Redis of
    a ``mes up`` running on the same data folder, if there is one."""
    import os

    from mes.config.settings import Settings, data_dir
    from mes.embedded import runtime_redis_url

    env = dict(os.environ)
    if not env.get("REDIS_CONN_STRING"):
        url = runtime_redis_url(data_dir(env))
        if url:
            env["REDIS_CONN_STRING"] = url
    return Settings.from_env(env)


def handle_errors(func: F) -> F:
    """Turn MES's expected errors into one line on stderr and a non-zero exit, no traceback."""
    import functools

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from mes.errors import ConfigError, RetryableError

        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            click.echo(f"mes: configuration error: {exc}", err=True)
            sys.exit(2)
        except RetryableError as exc:
            click.echo(f"mes: unavailable: {exc}", err=True)
            sys.exit(3)
        except Exception as exc:
            line = _dependency_error(exc)
            if line is None:
                raise
            click.echo(f"mes: unavailable: {line}", err=True)
            sys.exit(3)

    return wrapper  # type: ignore[return-value]


def _dependency_error(exc: BaseException) -> str | None:
    """One line for a Redis or database fault that reached a command unexplained (the
    checks at start explain the usual ones); None for anything else, a bug to show whole."""
    import redis
    from sqlalchemy.exc import InterfaceError, OperationalError

    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return f"Redis: {text} (start Redis, or fix REDIS_CONN_STRING)"
    if isinstance(exc, OperationalError | InterfaceError):
        orig = exc.orig if exc.orig is not None else exc
        text = str(orig).strip().splitlines()[0][:200] if str(orig).strip() else type(orig).__name__
        return f"database: {text} (start the database server, or fix MES_SQL_DSN)"
    return None


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
    from mes.log import configure_logging
    from mes.storage import Storage

    settings = _settings()
    configure_logging(debug=settings.debug)
    storage = Storage.open(settings.database)
    try:
        click.echo(
            f"ready: {settings.database.db.describe()} (daily tables: {settings.database.daily_partition})"
        )
    finally:
        storage.close()


@main.command()
@click.option(
    "--processes",
    "-p",
    default=1,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Worker processes to run here (each with its own database pool).",
)
@click.option("--burst", is_flag=True, help="Process what is queued, then exit.")
@click.option("--name", default=None, help="Worker name (RQ's); default: host and pid.")
@click.option("--skip-checks", is_flag=True, hidden=True, help="Started by a command that checked already.")
@handle_errors
def worker(processes: int, burst: bool, name: str | None, skip_checks: bool) -> None:
    """Run RQ workers that write queued events into the database.

    Scale by running more: --processes N here, or `mes worker` on more machines against
    the same REDIS_CONN_STRING and database. SIGTERM finishes the current batch first.
    At start, Redis and the database must answer (within MES_STARTUP_WAIT seconds, default
    0): else one line says which does not, and it exits. Once started, it waits out outages.
    """
    import os

    from mes.log import configure_logging
    from mes.startup import check_database, check_redis, startup_wait

    settings = _settings()
    configure_logging(debug=settings.debug)
    if not skip_checks:
        wait = startup_wait(os.environ)
        check_redis(settings, wait)
        check_database(settings, wait)
    if processes > 1:
        from mes.worker.main import supervise

        # the children wait for Redis and the database as a started worker does
        argv = ["--skip-checks", *(["--burst"] if burst else [])]
        sys.exit(supervise(processes, argv))
    from mes.worker.main import run_one

    run_one(settings, burst=burst, name=name)


_DURATION = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(text: str | None) -> float | None:
    if text is None:
        return None
    unit = text[-1:].lower()
    try:
        return float(text[:-1]) * _DURATION[unit] if unit in _DURATION else float(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a duration such as 90s, 15m, 2h or 7d") from None


@main.group()
def replay() -> None:
    """Put back what failed: failed jobs, dead letters, spool files.

    Safe to repeat: events keep their ids and the database ledger drops any that were
    already written, so replaying too much never duplicates a row.
    """


class _QueueTools:
    """Settings, Redis, keys and the MES queue, for the commands that touch the queue."""

    def __init__(self) -> None:
        from mes.queue import Keys, make_queue
        from mes.worker.main import connect
        from mes.worker.safety import MESJob

        self.settings = _settings()
        self.redis = connect(self.settings)
        self.keys = Keys(self.settings.queue.queue_name)
        self.queue = make_queue(self.redis, self.settings.queue.queue_name, job_class=MESJob)


@replay.command("failed")
@click.option("--job", "job_ids", multiple=True, help="Only this job id (repeatable).")
@click.option(
    "--older-than", default=None, help="Only jobs that failed longer ago than this (90s, 15m, 2h, 7d)."
)
@handle_errors
def replay_failed(job_ids: tuple[str, ...], older_than: str | None) -> None:
    """Requeue jobs from RQ's failed registry (all by default). `rq requeue --all
    --serializer rq.serializers.JSONSerializer --queue mes` does the same."""
    from mes.worker.brake import held
    from mes.worker.replay import replay_failed_jobs

    tools = _QueueTools()
    braked = held(tools.redis, tools.settings.queue.queue_name)
    done = replay_failed_jobs(tools.queue, job_ids=job_ids or None, older_than_s=_seconds(older_than))
    released = [job_id for job_id in done if job_id in braked]
    line = f"requeued {len(done)} failed job(s)"
    if released:
        events = sum(int(braked[j].get("invalid") or 0) for j in released)
        line += (f"; {len(released)} held by the poison brake: their {events} invalid event(s) become "
                 "dead letters unless the workers accept them now")  # fmt: skip
    click.echo(line)


@replay.command("dead-letters")
@click.option("--id", "ids", multiple=True, type=int, help="Only this dead letter id (repeatable).")
@handle_errors
def replay_dead(ids: tuple[int, ...]) -> None:
    """Send dead letters back through the pipeline (after fixing what rejected them)."""
    from mes.storage import Storage
    from mes.worker.replay import replay_dead_letters

    tools = _QueueTools()
    storage = Storage.open(tools.settings.database)
    try:
        done = replay_dead_letters(storage, tools.redis, tools.keys, ids=ids or None)
    finally:
        storage.close()
    line = f"replayed {done.replayed} dead letter(s)"
    if done.truncated:
        shown = ", ".join(map(str, done.truncated[:20])) + (", ..." if len(done.truncated) > 20 else "")
        line += (f"; {len(done.truncated)} kept: truncated (the event was too large to keep whole, so it "
                 f"cannot be replayed; its reason gives its size and digest): id {shown}")  # fmt: skip
    click.echo(line)


@replay.command("spool")
@click.option("--dir", "directory", default=None, help="Spool folder (default: MES_SPOOL_DIR).")
@handle_errors
def replay_spool_cmd(directory: str | None) -> None:
    """Re-send the events a producer left in its spool folder."""
    import dataclasses

    from mes.worker.replay import replay_spool

    settings = _settings()
    producer_settings = settings.producer
    if directory:
        producer_settings = dataclasses.replace(producer_settings, spool_dir=directory)
    if not settings.queue.redis_url:
        from mes.errors import ConfigError

        raise ConfigError("REDIS_CONN_STRING is not set: the spool can only be re-sent to a Redis")
    click.echo(f"re-sent {replay_spool(producer_settings)} event(s)")


@main.command()
@click.option("--host", default=None, help="Address to listen on (default MES_API_HOST, 127.0.0.1).")
@click.option(
    "--port", default=None, type=click.IntRange(0, 65535), help="Port (default MES_API_PORT, 8080)."
)
@click.option(
    "--workers", default=1, show_default=True, type=click.IntRange(1, 64), help="uvicorn worker processes."
)
@handle_errors
def serve(host: str | None, port: int | None, workers: int) -> None:
    """Run the HTTP API: history reads, error history, ingest (POST /api/v1/events),
    /healthz, /readyz, /metrics, and the OpenAPI spec at /docs.

    The database must answer at start (within MES_STARTUP_WAIT seconds, default 0), else
    one line says why and it exits; an unreachable Redis is one warning line (ingest spools)."""
    import os

    import uvicorn

    from mes.errors import QueueUnavailable
    from mes.log import configure_logging
    from mes.startup import check_database, check_listen, check_redis, startup_wait

    settings = _settings()
    configure_logging(debug=settings.debug)
    host = host or settings.api.host
    port = settings.api.port if port is None else port
    check_listen(host, port)
    check_database(settings, startup_wait(os.environ))
    if settings.queue.redis_url:
        try:
            check_redis(settings)
        except QueueUnavailable as exc:
            click.echo(f"mes: warning: {exc}; POST /api/v1/events spools to "
                       f"{settings.producer.spool_dir} until it answers (/readyz answers 503)", err=True)  # fmt: skip
    click.echo(f"mes: API on http://{host}:{port} (OpenAPI: http://{host}:{port}/docs)", err=True)
    if workers > 1:
        uvicorn.run("mes.api.main:app", host=host, port=port, workers=workers, log_config=None,
                    access_log=settings.debug, lifespan="on")  # fmt: skip
        return
    from mes.api.app import create_app
    from mes.up import serve_app

    if not serve_app(create_app(settings), host=host, port=port, access_log=settings.debug):
        sys.exit(1)


@main.command()
@click.option(
    "--workers", "-w", default=1, show_default=True, type=click.IntRange(1, 64), help="Worker processes."
)
@click.option("--host", default=None, help="API address (default MES_API_HOST, 127.0.0.1).")
@click.option(
    "--port", default=None, type=click.IntRange(0, 65535), help="API port (default MES_API_PORT, 8080)."
)
@handle_errors
def up(workers: int, host: str | None, port: int | None) -> None:
    """Run all of MES here: workers and the read API, on the configured database and Redis,
    or with nothing configured on SQLite and an embedded Redis in MES_DATA_DIR.
    Ctrl-C stops it in order, losing nothing."""
    from mes.config.settings import Settings
    from mes.log import configure_logging
    from mes.up import run_up

    settings = Settings.from_env()  # not _settings(): an old run file must not stand in for Redis
    configure_logging(debug=settings.debug)
    sys.exit(run_up(settings, workers=workers, host=host, port=port))


@main.command()
@click.option(
    "--user-id", default=1, show_default=True, type=click.IntRange(0, 2_147_483_647), help="Whose history."
)
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for the worker.")
@handle_errors
def demo(user_id: int, timeout: float) -> None:
    """Record a few conversations through the real producer and read them back
    (needs a running `mes up`, or a `mes worker` on the same Redis and database)."""
    settings = _settings()
    if not settings.queue.redis_url:
        from mes.errors import ConfigError

        raise ConfigError("REDIS_CONN_STRING is not set and no `mes up` is running on this MES_DATA_DIR")
    from mes.demo import run_demo

    sys.exit(run_demo(settings, user_id=user_id, timeout=timeout))


@main.command()
@handle_errors
def migrate() -> None:
    """Bring MES's tables, every daily table included, to this version's schema.

    Every MES process does this at start-up under a lock; this command does it alone and
    says what it did. Idempotent: run it as often as you like."""
    from mes.log import configure_logging
    from mes.storage import Storage
    from mes.storage.migrate import CURRENT

    settings = _settings()
    configure_logging(debug=settings.debug)
    storage = Storage.open(settings.database)
    storage.close()
    for line in storage.migrated:
        click.echo(line)
    click.echo(f"schema version {CURRENT}: " + ("migrated" if storage.migrated else "already current"))


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


from mes.cli_ops import register as _register_ops  # noqa: E402  (partitions, doctor, stats)

_register_ops(main, handle_errors)


if __name__ == "__main__":  # pragma: no cover
    main()
