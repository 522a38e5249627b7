"""Batching as a pure object: no threads, no I/O, time from an injected clock.

A batch is ready when it holds ``max_events`` events, or ``max_bytes`` bytes, or when
its *oldest* event has waited ``max_age`` seconds. The age clock starts when an event
enters an empty buffer (not at the previous flush): so ``max_age`` bounds how long any
event waits in the gateway's memory, which is what a crash of the gateway would lose.

``drain`` hands out everything buffered, cut into batches that respect both size
bounds, so a flusher that fell behind catches up in one pass.

A forced flush (``flush()``, ``close()``) is an argument, ``ready(force=True)``, never a
change of the bounds: a caller that set ``max_age`` to "now" and had to restore it would
leave every later event due at once if it never got there (a flush that timed out did,
and the gateway pushed each event alone from then on).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Batcher", "split"]


class Batcher:
    """Not thread-safe: the producer holds its lock around every call."""

    __slots__ = ("_bytes", "_clock", "_first_at", "_items", "max_age", "max_bytes", "max_events")

    def __init__(
        self, *, max_events: int, max_bytes: int, max_age: float, clock: Callable[[], float]
    ) -> None:
        if max_events < 1 or max_bytes < 1 or max_age <= 0:
            raise ValueError("batch bounds must be positive")
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._clock = clock
        self._items: list[bytes] = []
        self._bytes = 0
        self._first_at: float | None = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def append(self, item: bytes) -> bool:
        """Add one serialized event; True when a full batch is now waiting."""
        if self._first_at is None:
            self._first_at = self._clock()
        self._items.append(item)
        self._bytes += len(item)
        return len(self._items) >= self.max_events or self._bytes >= self.max_bytes

    def ready(self, *, force: bool = False) -> bool:
        """A batch should be flushed now: full, or its oldest event is ``max_age`` old, or
        ``force`` (someone asked for a flush) and anything is buffered. Changes nothing."""
        if not self._items:
            return False
        if force or len(self._items) >= self.max_events or self._bytes >= self.max_bytes:
            return True
        return self._clock() - self._first_at >= self.max_age  # type: ignore[operator]

    def seconds_until_due(self) -> float | None:
        """How long until ``ready`` turns true by age; None when empty."""
        if self._first_at is None:
            return None
        return max(0.0, self._first_at + self.max_age - self._clock())

    def drain(self) -> list[list[bytes]]:
        """Take everything, as batches within both bounds (an item larger than
        ``max_bytes`` travels alone)."""
        items, self._items, self._bytes, self._first_at = self._items, [], 0, None
        return split(items, self.max_events, self.max_bytes)


def split(items: list[bytes], max_events: int, max_bytes: int) -> list[list[bytes]]:
    """``items`` in order, cut into batches within both bounds (an item larger than
    ``max_bytes`` travels alone)."""
    batches: list[list[bytes]] = []
    current: list[bytes] = []
    size = 0
    for item in items:
        if current and (len(current) >= max_events or size + len(item) > max_bytes):
            batches.append(current)
            current, size = [], 0
        current.append(item)
        size += len(item)
    if current:
        batches.append(current)
    return batches
