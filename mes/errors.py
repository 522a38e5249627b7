"""The errors MES raises, typed by what the caller should do about them.

::

    MESError
    ├── ConfigError          fix the configuration; retrying changes nothing
    ├── RetryableError       a backend is down or busy; the same call can succeed later
    │   ├── DatabaseUnavailable
    │   │   └── ConnectionLost        (storage.writer) the server hung up mid-batch: if it
    │   │                             still answers, one event may be at fault: isolate it
    │   └── QueueUnavailable
    └── InvalidEvent         the event itself is bad; never retry it, dead-letter it
        └── EventTooLarge    (schemas.limits) larger than the MES database accepts

The producer never raises any of these into the gateway's request path: it turns
infrastructure faults into spooling. Workers let ``RetryableError`` fail the job (RQ
retries it) and dead-letter ``InvalidEvent``. The HTTP API maps ``InvalidEvent`` to a 4xx.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DatabaseUnavailable",
    "InvalidEvent",
    "MESError",
    "QueueUnavailable",
    "RetryableError",
]


class MESError(Exception):
    """Base of every error MES raises on purpose."""


class ConfigError(MESError):
    """A setting is missing or malformed. The message names the variable, never a password."""


class RetryableError(MESError):
    """A backend is unavailable; the operation may succeed if repeated later."""


class DatabaseUnavailable(RetryableError):
    """The MES database cannot be reached or refused the transaction for a transient reason."""


class QueueUnavailable(RetryableError):
    """Redis cannot be reached."""


class InvalidEvent(MESError):
    """An event failed validation or cannot be stored; ``reason`` says why in words a person can act on."""

    def __init__(self, reason: str, event_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.event_id = event_id
