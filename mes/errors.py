"""The errors MES raises, typed by what the caller should do about them, each with the one
HTTP status the API answers and the one exit code the ``mes`` command ends with.

::

    class                      HTTP  exit  what to do
    MESError                    503    1   (the base; a bug if raised as such)
    ├── ConfigError             503    2   fix the configuration; retrying changes nothing
    ├── RetryableError          503    3   a backend is down or busy; the same call can succeed later
    │   ├── DatabaseUnavailable 503    3
    │   │   └── ConnectionLost  503    3   the server hung up mid-batch: if it still answers,
    │   │                                  one event may be at fault: isolate it
    │   └── QueueUnavailable    503    3   Redis does not answer
    ├── InvalidEvent            400    1   the event itself is bad; never retry it, dead-letter it
    │   └── EventTooLarge       413    1   larger than a door (MES's contract, the database) takes
    ├── BatchDataError          400    1   the database refused a value of this batch: split it
    ├── PoisonBatchError        400    1   most of a batch is invalid: its job fails without retries
    ├── ForeignJobError         400    1   a job MES did not make: failed without running anything
    └── ReadError               400    1   a read MES will not answer as asked
        ├── BadCursor           400    1   ``after`` names nothing this caller can see
        └── AmbiguousConversation 409  1   several users have a conversation with this id

The producer never raises any of these into the gateway's request path: it turns
infrastructure faults into spooling. Workers let ``RetryableError`` fail the job (RQ
retries it) and dead-letter ``InvalidEvent``. The HTTP API answers ``http_status`` with
the error body of DESIGN.md (a ``RetryableError`` or ``ConfigError`` with a generic line:
their text may name hosts); the CLI prints one line and exits ``exit_code``.

Outside the tree, on purpose: ``mes.api``'s ``ApiError`` (a 4xx for one request, with the
status it carries) and ``AuthError`` (401, 403, 429), which exist only inside the API; and
``mes.producer.transport.NotReplicated``, a ``redis.ConnectionError`` so that redis-py's
retries treat a write Redis did not replicate as a lost connection.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AmbiguousConversation",
    "BadCursor",
    "BatchDataError",
    "ConfigError",
    "ConnectionLost",
    "DatabaseUnavailable",
    "EventTooLarge",
    "ForeignJobError",
    "InvalidEvent",
    "MESError",
    "PoisonBatchError",
    "QueueUnavailable",
    "ReadError",
    "RetryableError",
]


class MESError(Exception):
    """Base of every error MES raises on purpose."""

    http_status: ClassVar[int] = 503
    exit_code: ClassVar[int] = 1


class ConfigError(MESError):
    """A setting is missing or malformed. The message names the variable, never a password."""

    exit_code = 2


class RetryableError(MESError):
    """A backend is unavailable; the operation may succeed if repeated later."""

    exit_code = 3


class DatabaseUnavailable(RetryableError):
    """The MES database cannot be reached or refused the transaction for a transient reason."""


class ConnectionLost(DatabaseUnavailable):
    """The connection broke in the middle of the batch's statements.

    Either the database went away, or it dropped this connection because of what was
    sent (MySQL/MariaDB close the connection after a statement over ``max_allowed_packet``,
    and the driver may report that as "server has gone away"). ``write_isolating`` tells
    the two apart by asking the database whether it answers.
    """


class QueueUnavailable(RetryableError):
    """Redis cannot be reached."""


class InvalidEvent(MESError):
    """An event failed validation or cannot be stored; ``reason`` says why in words a person can act on."""

    http_status = 400

    def __init__(self, reason: str, event_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.event_id = event_id


class EventTooLarge(InvalidEvent):
    """The event is larger than a door takes: never retry it as it is (HTTP 413)."""

    http_status = 413

    def __init__(self, reason: str, event_id: str | None, *, size: int, max_bytes: int) -> None:
        super().__init__(reason, event_id)
        self.size = size
        self.max_bytes = max_bytes


class BatchDataError(MESError):
    """The database refused a value of this batch (too long, bad encoding, ...).

    Tied to one event, not to the database's health: split the batch to find it.
    """

    http_status = 400


class PoisonBatchError(MESError):
    """Most of the batch is invalid (see ``mes.worker.brake``). Its valid events are written;
    the job fails without retries and its invalid events wait in Redis, shown by ``mes
    stats``, until ``mes replay failed`` releases them into the dead letters."""

    http_status = 400


class ForeignJobError(MESError):
    """The job is not one MES made; it is failed without running anything."""

    http_status = 400


class ReadError(MESError, ValueError):
    """A read MES will not answer as asked (a ``ValueError`` too, as it always was)."""

    http_status = 400


class BadCursor(ReadError):
    """``after`` names nothing this caller can see."""


class AmbiguousConversation(ReadError):
    """Several users have a conversation with this id; say which (``user_id``)."""

    http_status = 409
