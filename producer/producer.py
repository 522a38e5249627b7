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
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime as dt
import json
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from mes.config.settings import ProducerSettings
from mes.log import get_logger
from mes.producer.batcher import Batcher
from mes.producer.spool import Spool
from mes.schemas.ids import new_event_id
from mes.schemas.limits import MAX_EVENT_BYTES

if TYPE_CHECKING:
    from redis import Redis

__all__ = ["Producer", "ProducerStats"]

log = get_logger("mes.producer")

_LIVE: weakref.WeakSet[Producer] = weakref.WeakSet()


@dataclasses.dataclass(frozen=True)
class ProducerStats:
    """Counters since the producer started (events, not batches)."""

    recorded: int
    enqueued: int
    spooled: int
    resent: int
    dropped: int
    buffered: int


def _default(obj: Any) -> Any:
    """orjson's fallback for objects gateways pass (OpenAI SDK models, pydantic, ...)."""
    for name in ("model_dump", "to_dict", "dict"):
        method = getattr(obj, name, None)
        if callable(method):
            try:
                return method(mode="json") if name == "model_dump" else method()
            except TypeError:
                return method()
    if isinstance(obj, bytes | bytearray):
        return obj.decode("utf-8", "replace")
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    raise TypeError(f"cannot serialize {type(obj).__name__}")


def serialize(event: Mapping[str, Any]) -> bytes:
    """Event → JSON bytes. Never raises: what orjson refuses (lone surrogates, huge ints)
    is written by the standard library instead, and the worker's validation then
    dead-letters it with a reason, where an operator can see it."""
    try:
        return orjson.dumps(event, default=_default)
    except Exception:  # whatever the gateway passed, the call must not raise
        pass
    try:
        # NaN and infinities become null, as orjson writes them; validation says which field
        return json.dumps(_finite(event), default=str, ensure_ascii=True, allow_nan=False).encode()
    except Exception:  # last resort: keep a trace of the event for the dead letters
        return json.dumps({"unserializable_event": repr(event)[:100_000]}).encode()


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _occurred_ms(value: Any) -> Any:
    if value is None:
        return time.time_ns() // 1_000_000
    if isinstance(value, dt.datetime):
        try:
            return int(value.timestamp() * 1000)  # naive: local time, as Python's timestamp() reads it
        except (OverflowError, ValueError, OSError):
            return None  # out of range: dead-lettered by the worker with a reason
    if isinstance(value, float):
        if not math.isfinite(value):
            return None  # NaN / inf: the worker dead-letters "occurred_at" with a reason
        return int(value * 1000)  # seconds, as time.time() gives
    return value  # int: unix ms; anything else is the worker's validation's business


def _envelope(
    kind: str,
    event_id: str | None,
    occurred_at: Any,
    conversation_id: Any,
    messages: Any,
    model_name: Any,
    user_id: Any,
    token_id: Any,
    channel_id: Any,
    ip: Any,
    is_stream: Any,
    request_id: Any,
    metadata: Any,
) -> dict[str, Any]:
    """The fields both kinds of event share (contract v1, ``mes.schemas.events``)."""
    return {
        "schema_version": 1,
        "kind": kind,
        "event_id": event_id or new_event_id(),
        "occurred_at": _occurred_ms(occurred_at),
        "conversation_id": conversation_id,
        "model_name": model_name,
        "user_id": user_id,
        "token_id": token_id,
        "channel_id": channel_id,
        "messages": messages,
        "ip": ip,
        "is_stream": is_stream,
        "request_id": request_id,
        "metadata": metadata,
    }


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
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._batcher = self._new_batcher()
        self._spool = Spool(settings.spool_dir)
        self._spill_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._closed = False
        self._flushing = 0  # batches taken from the buffer and not yet pushed or spooled
        self._flush_waiters = 0  # callers inside flush(): while any waits, the buffer is due
        self._down_until = 0.0
        self._backoff = 0.5
        self._next_resend = 0.0
        self._spool_backlog = False  # more ready spool files than one round re-sends
        # Built now (it only imports rq and redis; no connection is made until the first
        # flush): at interpreter exit the flusher may not import modules any more.
        self._transport: Any = None
        if redis is not None or settings.queue.redis_url:
            from mes.producer.transport import Transport

            self._transport = Transport(settings, redis)
        self._recorded = self._enqueued = self._spooled = self._resent = self._dropped = 0
        _LIVE.add(self)

    def _new_batcher(self) -> Batcher:
        s = self.settings
        return Batcher(
            max_events=s.batch_max_events,
            max_bytes=s.batch_max_bytes,
            max_age=s.linger_ms / 1000,
            clock=self._clock,
        )

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
    ) -> str:
        """Record a finished request (the seed's ``SaveChatCompletion``); returns the event id.

        ``occurred_at``: when the request finished: a datetime (naive means local time),
        unix milliseconds (int) or seconds (float); default now. Never blocks on I/O and
        never raises on a Redis or disk fault.
        """
        event = _envelope("chat", event_id, occurred_at, conversation_id, messages, model_name, user_id,
                          token_id, channel_id, ip, is_stream, request_id, metadata)  # fmt: skip
        event["response"] = response
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
    ) -> str:
        """Record a failed request (the seed's ``SaveErrorConversation``); returns the event id."""
        event = _envelope("error", event_id, occurred_at, conversation_id, messages, model_name, user_id,
                          token_id, channel_id, ip, is_stream, request_id, metadata)  # fmt: skip
        event["error_code"] = error_code
        event["error_message"] = error_message
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
        with self._lock:
            self._recorded += len(items)
            if self._thread is None and not self._closed:
                self._start_thread()  # it re-sends the spool
        transport = self._transport
        if transport is not None and self._clock() >= self._down_until:
            try:
                transport.push(items)  # redis-py clients are thread-safe
            except Exception as exc:
                self._redis_failed(exc)
            else:
                with self._lock:
                    self._enqueued += len(items)
                return "queued"
        self._spool.write_batch(items)
        with self._lock:
            self._spooled += len(items)
        return "spooled"

    # -- recording ---------------------------------------------------------------------
    def _record(self, event: Mapping[str, Any]) -> None:
        data = serialize(event)
        if len(data) > MAX_EVENT_BYTES:
            self._refuse(data, event.get("event_id"))
            return
        self._record_bytes(data)

    def _record_bytes(self, data: bytes) -> None:
        s = self.settings
        with self._lock:
            self._recorded += 1
            if not self._closed and (
                len(self._batcher) < s.buffer_max_events
                and self._batcher.size_bytes + len(data) <= s.buffer_max_bytes
            ):
                first = not len(self._batcher)
                # Wake the flusher when a batch is full, and on the first event into an
                # empty buffer: an idle flusher sleeps up to a second, and this event must
                # leave within MES_LINGER_MS, not then.
                if self._batcher.append(data) or first:
                    self._wake.notify()
                if self._thread is None:
                    self._start_thread()
                return
        self._spill(data)

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
        with self._lock:
            self._recorded += 1
            self._dropped += 1
        log.error("event_dropped", reason="too large", event_id=event_id if isinstance(event_id, str) else None,
                  size=len(data), max_bytes=MAX_EVENT_BYTES)  # fmt: skip

    def _spill(self, data: bytes) -> None:
        """The buffer is full (or the producer closed): the caller's thread writes to disk."""
        with self._spill_lock:
            try:
                self._spool.append_overflow(data)
            except OSError as exc:
                with self._lock:
                    self._dropped += 1
                log.error(
                    "event_dropped", reason="spool not writable", error=str(exc), spool=self._spool.directory
                )
                return
        with self._lock:
            self._spooled += 1

    def _start_thread(self) -> None:
        thread = threading.Thread(target=self._run, name="mes-producer-flusher", daemon=True)
        self._thread = thread
        thread.start()

    # -- flushing (background thread) --------------------------------------------------
    def _due(self) -> bool:
        """Called with the lock held: the buffer should go now. Forced while ``flush()``
        waits or ``close()`` runs; the batcher's bounds are never touched for that."""
        return self._batcher.ready(force=self._closing or self._flush_waiters > 0)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._closing and not self._due():
                    # A spool backlog (Redis is back after an outage) is re-sent round
                    # after round, between flushes, not 20 files a second.
                    self._wake.wait(0.0 if self._spool_backlog else self._batcher.seconds_until_due() or 1.0)
                    if not self._due():
                        break  # idle tick: go see whether the spool can be re-sent
                batches = self._batcher.drain() if self._due() or self._closing else []
                self._flushing += len(batches)
                closing = self._closing
            for batch in batches:
                self._send(batch)
                with self._lock:
                    self._flushing -= 1
                    self._wake.notify_all()
            if closing:
                return
            self._maybe_resend()

    def _send(self, batch: list[bytes]) -> None:
        transport = self._transport
        if transport is not None and self._clock() >= self._down_until:
            try:
                transport.push(batch)
            except Exception as exc:  # any Redis failure: spool, back off, never raise
                self._redis_failed(exc)
            else:
                self._backoff = 0.5
                with self._lock:
                    self._enqueued += len(batch)
                return
        self._to_spool(batch)

    def _redis_failed(self, exc: BaseException) -> None:
        self._down_until = self._clock() + self._backoff
        log.warning("redis_unavailable", error=str(exc)[:200], retry_in_s=self._backoff)
        self._backoff = min(self._backoff * 2, 10.0)

    def _to_spool(self, batch: list[bytes]) -> None:
        try:
            self._spool.write_batch(batch)
        except OSError as exc:
            with self._lock:
                self._dropped += len(batch)
            log.error("events_dropped", events=len(batch), reason="spool not writable", error=str(exc))
            return
        with self._lock:
            self._spooled += len(batch)

    def _maybe_resend(self, *, force: bool = False) -> None:
        now = self._clock()
        if not force and (now < self._next_resend or now < self._down_until):
            return
        self._next_resend = now + 1.0
        transport = self._transport
        if transport is None:
            return
        with self._spill_lock:
            self._spool.rotate_overflow()
        s = self.settings
        ready = self._spool.ready_files()
        self._spool_backlog = False
        for file in ready[:20]:
            try:
                # Streamed in batches within the usual bounds: a spool file can hold
                # thousands of events, and one job of them would hold a worker and a
                # transaction for long (and the whole file this process's memory).
                count = self._spool.resend(
                    file, transport.push, max_events=s.batch_max_events, max_bytes=s.batch_max_bytes
                )
            except Exception as exc:  # Redis went away again: keep the file
                self._redis_failed(exc)
                return
            if count:
                with self._lock:
                    self._resent += count
                log.info("spool_resent", events=count, file=os.path.basename(file.path))
        if len(ready) > 20:
            self._spool_backlog = True
            self._next_resend = now  # the next round at once

    # -- control -----------------------------------------------------------------------
    def flush(self, timeout: float | None = 10.0) -> bool:
        """Push everything buffered now and wait until it is in Redis or the spool.

        Returns False if ``timeout`` passed first (what remains is still on its way, and
        later events wait their usual ``MES_LINGER_MS`` again: the force ends with the call).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._flush_waiters += 1  # the flusher's _due() is true while this call waits
            try:
                if len(self._batcher):
                    if self._thread is None:
                        self._start_thread()
                    self._wake.notify_all()
                while len(self._batcher) or self._flushing:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._wake.wait(left)
            finally:
                self._flush_waiters -= 1
        return True

    def resend_spool(self) -> None:
        """Re-send ready spool files now (normally done once a second by the flusher)."""
        self._maybe_resend(force=True)

    def close(self, timeout: float = 5.0) -> None:
        """Flush and stop the background thread. Later calls go straight to the spool."""
        with self._lock:
            if self._closed:
                return
            self._closing = True
            self._wake.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        with self._lock:
            self._closed = True
            leftovers = self._batcher.drain()
        for batch in leftovers:  # the thread did not finish in time: keep them on disk
            self._to_spool(batch)
        with self._spill_lock:
            self._spool.rotate_overflow()
        if self._transport is not None:
            self._transport.close()

    def stats(self) -> ProducerStats:
        with self._lock:
            return ProducerStats(
                recorded=self._recorded,
                enqueued=self._enqueued,
                spooled=self._spooled,
                resent=self._resent,
                dropped=self._dropped,
                buffered=len(self._batcher) + self._flushing,
            )

    def _after_fork_in_child(self) -> None:
        # The parent still holds (and will flush) what was buffered; a copy here would only
        # be sent twice. Threads do not survive fork: start afresh on first use.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._spill_lock = threading.Lock()
        self._batcher = self._new_batcher()
        self._thread = None
        self._flushing = 0
        self._flush_waiters = 0
        if self._transport is not None:
            self._transport.after_fork()
        self._spool.forget_overflow_after_fork()


def _after_fork() -> None:
    for producer in list(_LIVE):
        producer._after_fork_in_child()


def _at_exit() -> None:
    for producer in list(_LIVE):
        try:
            producer.close(timeout=5.0)
        except Exception as exc:  # never turn interpreter exit into a crash
            log.error("producer_close_failed", error=str(exc))


os.register_at_fork(after_in_child=_after_fork)
atexit.register(_at_exit)
