"""``mes worker``, ``mes serve``, ``mes up``, ``mes demo``: the running parts of MES."""

from __future__ import annotations

import sys

import click

from mes.cli.common import handle_errors, load_settings


@click.command()
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

    from mes.log import configure_logging
    from mes.startup import check_database, check_redis

    settings = load_settings()
    configure_logging(debug=settings.debug)
    if not skip_checks:
        wait = settings.startup_wait
        check_redis(settings, wait)
        check_database(settings, wait)
    if processes > 1:
        from mes.worker.main import supervise

        # the children wait for Redis and the database as a started worker does
        argv = ["--skip-checks", *(["--burst"] if burst else [])]
        sys.exit(supervise(processes, argv, metrics_port=settings.worker.metrics_port))
    from mes.worker.main import run_one

    run_one(settings, burst=burst, name=name)


@click.command()
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

    import uvicorn

    from mes.errors import QueueUnavailable
    from mes.log import configure_logging
    from mes.startup import check_database, check_listen, check_redis

    settings = load_settings()
    configure_logging(debug=settings.debug)
    host = host or settings.api.host
    port = settings.api.port if port is None else port
    check_listen(host, port)
    check_database(settings, settings.startup_wait)
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


@click.command()
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

    settings = Settings.from_env()  # not load_settings(): an old run file must not stand in for Redis
    configure_logging(debug=settings.debug)
    sys.exit(run_up(settings, workers=workers, host=host, port=port))


@click.command()
@click.option(
    "--user-id", default=1, show_default=True, type=click.IntRange(0, 2_147_483_647), help="Whose history."
)
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for the worker.")
@handle_errors
def demo(user_id: int, timeout: float) -> None:
    """Record a few conversations through the real producer and read them back
    (needs a running `mes up`, or a `mes worker` on the same Redis and database)."""
    settings = load_settings()
    if not settings.queue.redis_url:
        from mes.errors import ConfigError

        raise ConfigError("REDIS_CONN_STRING is not set and no `mes up` is running on this MES_DATA_DIR")
    from mes.demo import run_demo

    sys.exit(run_demo(settings, user_id=user_id, timeout=timeout))
