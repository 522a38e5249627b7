"""Logging: libraries log, applications configure.

Every MES module gets its logger from :func:`get_logger`, which binds ``mes=True`` so a
line MES writes says so even in a gateway that configured structlog its own way
(operators ``grep mes``). Only entry points (``mes worker``, ``mes serve``, the CLI) call
:func:`configure_logging`: JSON lines by default, a readable console with ``DEBUG=true``,
and the standard library's records (RQ, SQLAlchemy, uvicorn) rendered the same way and
tagged ``mes`` too, since in a MES process they are MES's lines.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, cast

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

__all__ = ["configure_logging", "get_logger"]


def get_logger(name: str, **context: Any) -> FilteringBoundLogger:
    """A structlog logger whose every line carries ``mes=True`` (and ``logger=name`` once configured).

    Lazy: it takes the configuration in force when it first logs, so module-level
    loggers made at import follow a later :func:`configure_logging`."""
    # structlog.get_logger returns Any: a lazy proxy to the configured wrapper_class, which
    # configure_logging makes a filtering bound logger.
    logger = structlog.get_logger(name, mes=True, **context)  # add_logger_name adds "logger"
    return cast(FilteringBoundLogger, logger)


def _tag_mes(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    event_dict.setdefault("mes", True)
    return event_dict


def configure_logging(*, debug: bool = False, json: bool | None = None, level: int | None = None) -> None:
    """Configure structlog and the standard library for a MES process (call once, at start).

    Args:
        debug: verbose, human-readable console output (``DEBUG=true``).
        json: force JSON lines (default: JSON unless ``debug``).
        level: minimum level (default DEBUG with ``debug``, else INFO).
    """
    use_json = (not debug) if json is None else json
    level = level if level is not None else (logging.DEBUG if debug else logging.INFO)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _tag_mes,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if use_json else _identity,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # SQLAlchemy's engine log is per statement: far too loud even for DEBUG.
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)


def _identity(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    return event_dict
