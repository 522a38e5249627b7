"""Shared foundations: settings from the environment, DSN parsing, the error tree, days in ``TZ``."""

from .errors import ConfigError, DatabaseUnavailable, InvalidEvent, MESError, QueueUnavailable, RetryableError
from .settings import Settings

__all__ = [
    "ConfigError",
    "DatabaseUnavailable",
    "InvalidEvent",
    "MESError",
    "QueueUnavailable",
    "RetryableError",
    "Settings",
]
