"""``mes worker``: run one worker in this process, or supervise N of them.

Scaling: ``--processes N`` runs N worker processes here (each its own interpreter,
database pool and Redis connection) and restarts any that dies; on more machines, run
``mes worker`` there against the same ``REDIS_CONN_STRING`` and database. Workers share
nothing but Redis and the database.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from typing import Any

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mes.config.settings import Settings
from mes.errors import ConfigError, DatabaseUnavailable
from mes.log import get_logger
from mes.redis_conn import connect as redis_connect
from mes.worker.context import WorkerContext, install
from mes.worker.runner import MESWorker

__all__ = ["connect", "pause_before_retry", "run_one", "supervise"]

log = get_logger("mes.worker")


def connect(settings: Settings) -> Redis:
    url = settings.queue.redis_url
    if not url:
        raise ConfigError(
            "REDIS_CONN_STRING is not set: point it at your Redis, or use `mes up` (embedded Redis)"
        )
    # No socket timeout for the worker's blocking reads; RQ bounds its own waits. Any
    # REDIS_CONN_STRING form: with Sentinel, a master_for() client that RQ uses as it is.
    return redis_connect(url, socket_connect_timeout=5, health_check_interval=30)


def run_one(settings: Settings, *, burst: bool = False, name: str | None = None) -> bool:
    """Run a worker in this process until stopped (or, in burst mode, until idle).

    A worker is a daemon: when Redis or the database is down, at start or later, it logs,
    waits (backing off to 10 s) and carries on; it does not exit. SIGTERM or SIGINT while
    it waits stops it. Returns whether it processed any job.
    """
    redis = connect(settings)
    ctx = _wait_for(lambda: WorkerContext.build(settings, redis), "database")
    install(ctx)
    if settings.worker.metrics_port:
        from prometheus_client import start_http_server

        from mes.metrics import register_queue_collector
        from mes.queue import queue_figures
        from mes.worker.brake import figures as braked

        name = settings.queue.queue_name
        start_http_server(settings.worker.metrics_port, addr="0.0.0.0")
        # and mes_queue_braked_{batches,events}: what the poison brake holds for a replay
        register_queue_collector(
            lambda: {
                **queue_figures(redis, name),
                **{f"braked_{k}": v for k, v in braked(redis, name).items()},
            }
        )
        log.info("metrics_listening", port=settings.worker.metrics_port)
    try:
        attempt = 0
        while True:
            worker_name = name if attempt == 0 or name is None else f"{name}-{attempt}"
            try:
                worker = MESWorker.for_context(ctx, name=worker_name)  # RQ talks to Redis here already
                # What start-up built (modules, the tables' metadata, pools) lives as long as
                # the process: out of the collector's sight, a batch's garbage is collected
                # without walking all of it again each time.
                gc.freeze()
                log.info("worker_started", worker=worker.name, queue=settings.queue.queue_name,
                         database=settings.database.db.describe(), pid=os.getpid())  # fmt: skip
                return bool(
                    worker.work(
                        burst=burst, with_scheduler=False, logging_level="DEBUG" if settings.debug else "INFO"
                    )
                )
            except (RedisConnectionError, RedisTimeoutError) as exc:
                if burst:
                    raise
                attempt += 1
                pause_before_retry("redis", exc, attempt)
    finally:
        install(None)
        ctx.close()
        redis.close()


def pause_before_retry(what: str, exc: BaseException, attempt: int) -> None:
    """Wait before trying again; SIGTERM / SIGINT during the wait end the process cleanly."""
    delay = min(0.5 * 2 ** min(attempt, 5), 10.0)
    log.warning(f"{what}_unavailable", error=str(exc).splitlines()[0][:200], retry_in_s=delay)
    previous = {sig: signal.signal(sig, _exit_now) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        time.sleep(delay)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _exit_now(_signum: int, _frame: Any) -> None:
    raise SystemExit(0)


def _wait_for(build: Any, what: str) -> Any:
    attempt = 0
    while True:
        try:
            return build()
        except (DatabaseUnavailable, RedisConnectionError, RedisTimeoutError) as exc:
            attempt += 1
            pause_before_retry(what, exc, attempt)


def supervise(processes: int, argv: list[str], *, metrics_port: int = 0) -> int:
    """Run ``processes`` single workers as children; restart any that exits unasked.

    SIGTERM/SIGINT are passed on (each child finishes its batch); returns when all exited.
    """
    children: dict[int, subprocess.Popen[Any]] = {}
    stopping = False

    def spawn(slot: int) -> None:
        env = dict(os.environ)
        if metrics_port:
            env["MES_METRICS_PORT"] = str(metrics_port + slot)  # one metrics port per process
        cmd = [sys.executable, "-m", "mes", "worker", "--processes", "1", *argv]
        children[slot] = subprocess.Popen(cmd, env=env)

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for slot in range(processes):
        spawn(slot)
    log.info("workers_started", processes=processes, pids=[c.pid for c in children.values()])
    restarts: dict[int, float] = {}
    while True:
        time.sleep(0.5)
        alive = 0
        for slot, child in list(children.items()):
            code = child.poll()
            if code is None:
                alive += 1
            elif not stopping:
                wait = restarts.get(slot, 0.5)
                log.error("worker_exited", pid=child.pid, code=code, restart_in_s=wait)
                time.sleep(wait)
                restarts[slot] = min(wait * 2, 30.0)
                spawn(slot)
                alive += 1
        if stopping and not alive:
            return 0
