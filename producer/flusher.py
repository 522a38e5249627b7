"""The producer's buffer and the background thread that empties it.

``add`` appends a serialized event to the buffer (a :class:`~mes.producer.batcher.Batcher`)
under one lock, or, when the buffer is full (``MES_BUFFER_MAX_EVENTS`` / ``_BYTES``) or
the producer closed, appends it to the spool's overflow file on the calling thread. The
thread, started on first use, wakes when a batch is full, on the first event into an
empty buffer and when ``MES_LINGER_MS`` has passed, and hands each batch to the
:class:`~mes.producer.transport.Transport`.

When Redis fails, the batch goes to the spool, and Redis is left alone for a backoff
(0.5 s, doubling to 10 s); about once a second the thread re-sends ready spool files
(20 a round, more rounds at once while a backlog remains). An event is lost only when
the spool cannot be written: it is counted in ``dropped`` and logged as an error.

After a ``fork`` the child starts with an empty buffer and its own thread (started on
first use); the parent flushes what it held. At interpreter exit every live flusher is
closed, which flushes its buffer.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from mes.config.settings import ProducerSettings
from mes.log import get_logger
from mes.producer.batcher import Batcher
from mes.producer.spool import Spool

if TYPE_CHECKING:
    from mes.producer.transport import Transport

__all__ = ["Flusher", "ProducerStats"]

log = get_logger("mes.producer")

_LIVE: weakref.WeakSet[Flusher] = weakref.WeakSet()


@dataclasses.dataclass(frozen=True)
class ProducerStats:
    """Counters since the producer started (events, not batches)."""

    recorded: int
    enqueued: int
    spooled: int
    resent: int
    dropped: int
    buffered: int


class Flusher:
    """A producer's buffer, counters and background thread. Safe from many threads: one
    lock guards the buffer and the counters; the thread does its I/O outside it.

    ``transport`` (None: no Redis configured, everything goes to the spool) and
    ``down_until`` (the clock's time before which Redis is not tried) may be set by the
    owner.
    """

    def __init__(
        self,
        settings: ProducerSettings,
        spool: Spool,
        transport: Transport | None,
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.transport = transport
        self.down_until = 0.0
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._batcher = self._new_batcher()
        self._spill_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._closed = False
        self._flushing = 0  # batches taken from the buffer and not yet pushed or spooled
        self._flush_waiters = 0  # callers inside flush(): while any waits, the buffer is due
        self._backoff = 0.5
        self._next_resend = 0.0
        self._spool_backlog = False  # more ready spool files than one round re-sends
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

    @property
    def thread(self) -> threading.Thread | None:
        """The background thread, once started (None before the first event, and in a
        forked child until its first)."""
        return self._thread

    # -- the calling thread ------------------------------------------------------------
    def add(self, data: bytes) -> None:
        """Record one serialized event: into the buffer, or, when it is full (or the
        producer closed), into the spool on the calling thread. Never raises on a fault."""
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

    def count_refused(self) -> None:
        """An event recorded and dropped on arrival (the owner refused it)."""
        with self._lock:
            self._recorded += 1
            self._dropped += 1

    def _spill(self, data: bytes) -> None:
        """The buffer is full (or the producer closed): the caller's thread writes to disk."""
        with self._spill_lock:
            try:
                self.spool.append_overflow(data)
            except OSError as exc:
                with self._lock:
                    self._dropped += 1
                log.error(
                    "event_dropped", reason="spool not writable", error=str(exc), spool=self.spool.directory
                )
                return
        with self._lock:
            self._spooled += 1

    def send_now(self, items: list[bytes]) -> str:
        """Push ``items`` to Redis on the calling thread (``"queued"``) or, when Redis
        refuses, write and fsync them to the spool (``"spooled"``).

        Raises:
            OSError: Redis refused and the spool could not be written (nothing was kept).
        """
        with self._lock:
            self._recorded += len(items)
            if self._thread is None and not self._closed:
                self._start_thread()  # it re-sends the spool
        transport = self.transport
        if transport is not None and self._clock() >= self.down_until:
            try:
                transport.push(items)  # redis-py clients are thread-safe
            except Exception as exc:
                self._redis_failed(exc)
            else:
                with self._lock:
                    self._enqueued += len(items)
                return "queued"
        self.spool.write_batch(items)
        with self._lock:
            self._spooled += len(items)
        return "spooled"

    def _start_thread(self) -> None:
        thread = threading.Thread(target=self._run, name="mes-producer-flusher", daemon=True)
        self._thread = thread
        thread.start()

    # -- the background thread ---------------------------------------------------------
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
            self.maybe_resend()

    def _send(self, batch: list[bytes]) -> None:
        transport = self.transport
        if transport is not None and self._clock() >= self.down_until:
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
        self.down_until = self._clock() + self._backoff
        log.warning("redis_unavailable", error=str(exc)[:200], retry_in_s=self._backoff)
        self._backoff = min(self._backoff * 2, 10.0)

    def _to_spool(self, batch: list[bytes]) -> None:
        try:
            self.spool.write_batch(batch)
        except OSError as exc:
            with self._lock:
                self._dropped += len(batch)
            log.error("events_dropped", events=len(batch), reason="spool not writable", error=str(exc))
            return
        with self._lock:
            self._spooled += len(batch)

    def maybe_resend(self, *, force: bool = False) -> None:
        """Re-send ready spool files, at most once a second and not while Redis is
        backed off (``force``: now, whatever the last round or failure was)."""
        now = self._clock()
        if not force and (now < self._next_resend or now < self.down_until):
            return
        self._next_resend = now + 1.0
        transport = self.transport
        if transport is None:
            return
        with self._spill_lock:
            self.spool.rotate_overflow()
        s = self.settings
        ready = self.spool.ready_files()
        self._spool_backlog = False
        for file in ready[:20]:
            try:
                # Streamed in batches within the usual bounds: a spool file can hold
                # thousands of events, and one job of them would hold a worker and a
                # transaction for long (and the whole file this process's memory).
                count = self.spool.resend(
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
        """Push everything buffered now and wait until it is in Redis or the spool; False
        if ``timeout`` passed first."""
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

    def close(self, timeout: float = 5.0) -> None:
        """Flush and stop the thread; later events go straight to the spool."""
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
            self.spool.rotate_overflow()
        if self.transport is not None:
            self.transport.close()

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

    # -- fork and exit -----------------------------------------------------------------
    def after_fork_in_child(self) -> None:
        # The parent still holds (and will flush) what was buffered; a copy here would only
        # be sent twice. Threads do not survive fork: start afresh on first use.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._spill_lock = threading.Lock()
        self._batcher = self._new_batcher()
        self._thread = None
        self._flushing = 0
        self._flush_waiters = 0
        if self.transport is not None:
            self.transport.after_fork()
        self.spool.forget_overflow_after_fork()


def _after_fork() -> None:
    for flusher in list(_LIVE):
        flusher.after_fork_in_child()


def _at_exit() -> None:
    for flusher in list(_LIVE):
        try:
            flusher.close(timeout=5.0)
        except Exception as exc:  # never turn interpreter exit into a crash
            log.error("producer_close_failed", error=str(exc))


os.register_at_fork(after_in_child=_after_fork)
atexit.register(_at_exit)
