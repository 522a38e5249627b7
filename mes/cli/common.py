"""What every ``mes`` command shares: the settings read once at the edge, the one-line
answer to MES's expected errors (exit 2: a setting to fix, 3: a dependency down), and
the parsers of days and sizes."""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from mes.config.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


def load_settings() -> Settings:
    """Settings from the environment. With REDIS_CONN_STRING unset, the embedded Redis of
    a ``mes up`` running on the same data folder, if there is one."""
    import os

    from mes.config.settings import Settings
    from mes.embedded import runtime_redis_url

    settings = Settings.from_env(os.environ)
    if not settings.queue.redis_url:
        url = runtime_redis_url(settings.data_dir)
        if url:
            settings = settings.with_redis_url(url)
    return settings


def handle_errors(func: F) -> F:
    """Turn MES's expected errors into one line on stderr and a non-zero exit, no traceback."""
    import functools

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from mes.errors import ConfigError, MESError, RetryableError

        try:
            return func(*args, **kwargs)
        except MESError as exc:  # mes.errors maps each class to its exit code
            what = {ConfigError: "configuration error", RetryableError: "unavailable"}
            kind = next((w for cls, w in what.items() if isinstance(exc, cls)), "error")
            click.echo(f"mes: {kind}: {exc}", err=True)
            sys.exit(exc.exit_code)
        except Exception as exc:
            line = dependency_error(exc)
            if line is None:
                raise
            click.echo(f"mes: unavailable: {line}", err=True)
            sys.exit(3)

    return wrapper  # type: ignore[return-value]


def dependency_error(exc: BaseException) -> str | None:
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


def open_storage(settings: Any) -> Any:
    from mes.storage import Storage

    return Storage.open(settings.database)


def parse_day(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a day: use YYYY-MM-DD") from None


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)
