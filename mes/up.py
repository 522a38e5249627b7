"""``mes up``: the whole of MES on one machine, in one command.

With nothing configured: SQLite in the data folder (``MES_SQL_DSN=local``) and an
embedded Redis (see :mod:`mes.embedded`). With ``MES_SQL_DSN`` / ``REDIS_CONN_STRING``
set, those. Then worker processes (``mes worker``) and the HTTP API in this process.

Ctrl-C (SIGINT) or SIGTERM stops it in order, losing nothing: the API stops taking
requests, the workers finish their batch (what is left stays queued in Redis), and
the embedded Redis shuts down last, flushing its append-only file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import click

from mes.config.settings import Settings

__all__ = ["key_file", "operator_key", "run_up", "serve_app"]


def _kept_key(path: str) -> str | None:
    with contextlib.suppress(OSError):
        with open(path, encoding="utf-8") as f:
            key = f.read().strip()
        if len(key) >= 16:
            return key
    return None


def key_file(data_dir: str) -> str | None:
    """The file holding the operator key ``mes up`` uses here (made at its first run), if any."""
    path = os.path.join(data_dir, "api-key")
    return path if _kept_key(path) else None


def operator_key(data_dir: str) -> str:
    """The operator key of this data folder: made once, kept in ``<data>/api-key`` (0600)."""
    path = os.path.join(data_dir, "api-key")
    key = _kept_key(path)
    if key is not None:
        return key
    os.makedirs(data_dir, exist_ok=True)
    key = "mes-" + secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key + "\n")
    return key


def run_up(settings: Settings, *, workers: int, host: str | None, port: int | None) -> int:
    """Start what is missing, check what is configured, then serve; the banner comes once
    every part is up. A part that is not up is one line (a ConfigError or RetryableError
    naming it) and nothing claims to be up."""
    from mes.api.app import create_app
    from mes.embedded import EmbeddedRedis
    from mes.leftovers import Note
    from mes.startup import check_database, check_listen, check_redis

    data_dir = os.path.abspath(settings.data_dir)
    env = dict(os.environ)
    wait = settings.startup_wait
    host = host or settings.api.host
    port = settings.api.port if port is None else port
    check_listen(host, port)
    redis_server = None
    worker: subprocess.Popen[Any] | None = None
    failed: list[str] = []
    if settings.queue.redis_url:
        check_redis(settings, wait)  # before anything is made or started
    note = Note(data_dir)
    for what in note.clear_previous():
        click.echo(f"mes: stopped the {what} a killed mes up left running on this data folder", err=True)
    note.add("up", os.getpid())
    try:
        if not settings.queue.redis_url:
            redis_server = EmbeddedRedis(data_dir, port=settings.embedded_redis_port)
            redis_server.start()
            assert redis_server.process is not None
            note.add("redis", redis_server.process.pid)
            env["REDIS_CONN_STRING"] = redis_server.url
        api_key = settings.api.api_key
        if api_key is None:
            api_key = operator_key(data_dir)
            env["MES_API_KEY"] = api_key
        env.setdefault("MES_DATA_DIR", data_dir)
        settings = Settings.from_env(env)  # the same settings the workers will read
        check_database(settings, wait)  # also creates the database before the workers race to
        # checked: the workers wait out what goes down from now on, as a started worker does
        worker_cmd = [sys.executable, "-m", "mes", "worker", "--processes", str(workers), "--skip-checks"]
        worker = proc = subprocess.Popen(worker_cmd, env=env, start_new_session=True)
        note.add("worker", proc.pid)

        def ready() -> bool:
            code = proc.poll()
            if code is not None:
                failed.append("workers")
                click.echo(f"mes: not up: the workers exited at start (exit code {code}; their log is above)",
                           err=True)  # fmt: skip
                return False
            _banner(settings, redis_server, host, port, api_key)
            return True

        started = serve_app(
            create_app(settings), on_started=ready, host=host, port=port, access_log=settings.debug
        )
        return 0 if started and not failed else 1
    finally:
        if worker is not None:
            click.echo("mes: stopping: workers finish their batch first", err=True)
            _stop(worker)
        if redis_server is not None:
            redis_server.stop()
        note.remove()
        if worker is not None:
            click.echo("mes: stopped; nothing queued was lost", err=True)


def serve_app(app: Any, *, on_started: Callable[[], bool] | None = None, **config: Any) -> bool:
    """Run ``app`` under uvicorn until SIGINT or SIGTERM; a clean stop exits 0.

    uvicorn shuts down on either signal, then raises it again at the handler that was
    there before: so there is one, which does nothing. ``on_started`` runs once the app
    started and listens; False from it stops the server. Returns whether it started."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and on_started is not None and not on_started():
                self.should_exit = True

    server = Server(uvicorn.Config(app, log_config=None, lifespan="on", **config))
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        with contextlib.suppress(KeyboardInterrupt):  # SIGINT comes back as this
            server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return bool(server.started)


def _stop(process: subprocess.Popen[Any], timeout: float = 60.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)  # warm shutdown: the current batch commits
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def _banner(settings: Settings, redis_server: Any, host: str, port: int, api_key: str) -> None:
    base = f"http://{host}:{port}"
    # Set by now (the embedded server's when REDIS_CONN_STRING named none), but typed str | None:
    # `None + " (embedded ...)"` would raise instead of printing the banner.
    redis_line = settings.queue.redis_url or ""
    if redis_server is not None:
        redis_line += f" (embedded, data in MES_DATA_DIR/redis; address in {redis_server.data_dir}/redis.url)"
    moved = []
    if redis_server is not None and redis_server.moved_from:
        moved = [f"  NOTE       the embedded Redis moved: port {redis_server.moved_from} is taken by another "
                 f"program, so it listens on {redis_server.port}; point gateways at {settings.queue.redis_url} "
                 f"(written to {redis_server.data_dir}/redis.url)"]  # fmt: skip
    lines = [
        "",
        "MES is up",
        f"  database   {settings.database.db.describe()}",
        f"  queue      {redis_line}",
        *moved,
        f"  privacy    {settings.privacy.describe()}   (MES_CAPTURE, MES_CAPTURE_RULES, MES_REDACT)",
        f"  read API   {base}   (OpenAPI: {base}/docs, health: {base}/healthz, metrics: {base}/metrics)",
        f"  API key    {api_key}   (operator key; New API tokens work too when SQL_DSN is set)",
        "",
        "Record a first event from another terminal:",
        f"  REDIS_CONN_STRING={settings.queue.redis_url} mes demo",
        "or over HTTP:",
        f"  curl -s -X POST {base}/api/v1/events -H 'Authorization: Bearer {api_key}' \\",
        '    -H \'Content-Type: application/json\' -d \'{"events": [{"kind": "chat", "conversation_id": "hello", '
        '"user_id": 1, "model_name": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], '
        '"response": {"choices": [{"message": {"role": "assistant", "content": "Hello!"}}]}}]}\'',
        f"  curl -s '{base}/api/v1/conversations?user_id=1' -H 'Authorization: Bearer {api_key}'",
        "",
        "Ctrl-C stops it (nothing queued is lost).",
        "",
    ]
    click.echo("\n".join(lines), err=True)
