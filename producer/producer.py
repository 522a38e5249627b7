"""The producer: what the gateway calls. A call records an event in microseconds.

``save_chat_completion`` and ``save_error_conversation`` mirror the seed's MESHelper.
A call serializes the event (so later changes to the caller's objects do not leak in),
appends it to an in-memory buffer and returns its event id. It does no network I/O and
never raises on an infrastructure fault. A background thread, started on first use,
flushes the buffer: every ``MES_LINGER_MS`` (default 50 ms: the most an event waits in
the gateway's memory) or sooner when a batch is full. A flush pushes small batches onto
the staging list (workers cut it into large jobs), and large ones straight into their
own RQ job.

When Redis fails, batches go to the on-disk spool and are re-sent when Redis answers.
When the buffer itself is full (``MES_BUFFER_MAX_EVENTS`` / ``_BYTES``), the calling
thread appends the event to the spool itself. An event is lost only when the spool
cannot be written (disk full) or the event is over MES's size limit (``MAX_EVENT_BYTES``,
which no MES stores): it is counted in ``dropped`` and logged as an error.

Safe from many threads and from asyncio code (a call never blocks on I/O). After a
``fork`` the child starts with an empty buffer and its own thread; the parent flushes
what it held. At interpreter exit the buffer is flushed (gunicorn and uvicorn reach
that on a graceful shutdown); MES installs no signal handler of its own.

The parts, each in its module: ``serializer`` (the event's envelope and bytes, once),
``batcher`` (when a batch is full or old enough), ``flusher`` (the buffer and its
thread: sending, the spool when Redis fails, re-sending it, fork and exit), ``spool``
(the files on disk) and ``transport`` (the push to Redis).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from mes.config.settings import ProducerSettings
from mes.log import get_logger
from mes.producer.flusher import Flusher, ProducerStats
from mes.producer.serializer import envelope, serialize
from mes.producer.spool import Spool
from mes.schemas.limits import MAX_EVENT_BYTES

if TYPE_CHECKING:
    from redis import Redis

    from mes.producer.transport import Transport

__all__ = ["Producer", "ProducerStats"]

log = get_logger("mes.producer")


class Producer:
    """Buffers events and hands them to Redis in batches. See the module docstring."""

    def __init__(
        self,
        settings: ProducerSettings,
        *,
        redis: Redis | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        spool = Spool(settings.spool_dir)
        # Built now (it only imports rq and redis; no connection is made until the first
        # flush): at interpreter exit the flusher may not import modules any more.
        transport = None
        if redis is not None or settings.queue.redis_url:
            from mes.producer.transport import Transport

            transport = Transport(settings, redis)
        self._flusher = Flusher(settings, spool, transport, clock)
        # Where each serialized event goes: the flusher's buffer, bound once (no extra
        # call per event); a test may put its own here (no thread, no disk).
        self._record_bytes: Callable[[bytes], None] = self._flusher.add

    # The transport and Redis's backoff live in the flusher; tests reach them here.
    @property
    def _transport(self) -> Transport | None:
        return self._flusher.transport

    @_transport.setter
    def _transport(self, transport: Transport | None) -> None:
        self._flusher.transport = transport

    @property
    def _down_until(self) -> float:
        return self._flusher.down_until

    @_down_until.setter
    def _down_until(self, when: float) -> None:
        self._flusher.down_until = when

    # -- the gateway's API -------------------------------------------------------------
    def save_chat_completion(
        self,
        conversation_id: str,
        messages: Any,
        response: Any,
        model_name: str,
        user_id: int,
        token_id: int,
        channel_id: int,
        *,
        ip: str | None = None,
        is_stream: bool = False,
        occurred_at: dt.datetime | int | float | None = None,
        request_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        event_id: str | None = None,
        capture: str | None = None,
    ) -> str:
        """Record a finished request (the seed's ``SaveChatCompletion``); returns the event id.

        ``occurred_at``: when the request finished: a datetime (naive means local time),
        unix milliseconds (int) or seconds (float); default now. Never blocks on I/O and
        never raises on a Redis or disk fault.
        """
        event = envelope("chat", event_id, occurred_at, conversation_id, messages, model_name, user_id,
                         token_id, channel_id, ip, is_stream, request_id, metadata)  # fmt: skip
        event["response"] = response
        if capture is not None:  # "metadata" or "none": keep less of this one (README: Privacy)
            event["capture"] = capture
        self._record(event)
        return str(event["event_id"])

    def save_error_conversation(
        self,
        conversation_id: str,
        messages: Any,
        error_code: int,
        error_message: str,
        model_name: str,
        user_id: int,
        token_id: int,
        channel_id: int,
        *,
        ip: str | None = None,
        is_stream: bool = False,
        occurred_at: dt.datetime | int | float | None = None,
        request_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        event_id: str | None = None,
        capture: str | None = None,
    ) -> str:
        """Record a failed request (the seed's ``SaveErrorConversation``); returns the event id."""
        event = envelope("error", event_id, occurred_at, conversation_id, messages, model_name, user_id,
                         token_id, channel_id, ip, is_stream, request_id, metadata)  # fmt: skip
        event["error_code"] = error_code
        event["error_message"] = error_message
        if capture is not None:
            event["capture"] = capture
        self._record(event)
        return str(event["event_id"])

    def record_serialized(self, data: bytes) -> None:
        """Record an event already serialized as JSON (the HTTP ingest route uses this)."""
        if len(data) > MAX_EVENT_BYTES:
            self._refuse(data, None)
            return
        self._record_bytes(data)

    def send_now(self, items: list[bytes]) -> str:
        """Make serialized events durable before returning, on the calling thread: pushed
        to Redis (``"queued"``) or, when Redis refuses, written and fsynced to the spool
        (``"spooled"``), which this producer's flusher re-sends later. For the HTTP ingest
        route, which answers only once its events are safe.

        Raises:
            OSError: Redis refused and the spool could not be written (nothing was kept).
        """
        return self._flusher.send_now(items)

    # -- recording ---------------------------------------------------------------------
    def _record(self, event: Mapping[str, Any]) -> None:
        data = serialize(event)
        if len(data) > MAX_EVENT_BYTES:
            self._refuse(data, event.get("event_id"))
            return
        self._record_bytes(data)

    def _refuse(self, data: bytes, event_id: Any) -> None:
        """An event over MES's contract limit: no MES database stores it, so it is dropped
        here, counted in ``dropped`` and logged with the reason, instead of crossing
        Redis only to be dead-lettered.

        Why the contract limit and not the database's (MySQL's ``max_allowed_packet`` may
        be lower): the producer has no database access, and the worker's door, which every
        event passes whoever sent it, refuses what the database cannot take and keeps a
        dead letter of it (a prefix, its size, digest and the reason), where ``mes
        doctor`` shows it and the operator who can raise the server's limit looks. A limit
        relayed through Redis would be one more wire key to keep true, and a stale one
        would drop here, with no trace in MES, events the database takes by now.
        """
        self._flusher.count_refused()
        log.error("event_dropped", reason="too large", event_id=event_id if isinstance(event_id, str) else None,
                  size=len(data), max_bytes=MAX_EVENT_BYTES)  # fmt: skip

    # -- control -----------------------------------------------------------------------
    def flush(self, timeout: float | None = 10.0) -> bool:
        """Push everything buffered now and wait until it is in Redis or the spool.

        Returns False if ``timeout`` passed first (what remains is still on its way, and
        later events wait their usual ``MES_LINGER_MS`` again: the force ends with the call).
        """
        return self._flusher.flush(timeout)

    def resend_spool(self) -> None:
        """Re-send ready spool files now (normally done once a second by the flusher)."""
        self._flusher.maybe_resend(force=True)

    def close(self, timeout: float = 5.0) -> None:
        """Flush and stop the background thread. Later calls go straight to the spool."""
        self._flusher.close(timeout)

    def stats(self) -> ProducerStats:
        return self._flusher.stats()
