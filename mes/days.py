"""Which day an instant belongs to, in the ``TZ`` whose midnight separates daily tables.

An event is filed by its own ``occurred_at``, never by the clock of the worker that
writes it, so a batch recorded at 23:59:59.999 and written after midnight, or replayed a
week later, lands in its own day.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

__all__ = ["DayCalendar", "date_of_int", "day_int", "system_clock_ms"]


def system_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def day_int(day: dt.date) -> int:
    """``20260115`` for 15 January 2026: the rollups' day key."""
    return day.year * 10000 + day.month * 100 + day.day


def date_of_int(value: int) -> dt.date:
    """The date of a ``20260115`` day key."""
    return dt.date(value // 10000, value // 100 % 100, value % 100)


class DayCalendar:
    """Maps unix milliseconds to dates in one time zone, caching the current day's bounds.

    Most events of a batch fall on the same day; the cache turns ``day_of`` into two
    integer comparisons for them. DST changes are handled because the bounds are
    computed from real local midnights, not from 86,400,000 ms steps.
    """

    def __init__(self, tz: dt.tzinfo, clock_ms: Callable[[], int] | None = None) -> None:
        self.tz = tz
        self._clock_ms = clock_ms or system_clock_ms
        self._cache: tuple[int, int, dt.date] = (0, 0, dt.date(1970, 1, 1))

    def day_of(self, ms: int) -> dt.date:
        lo, hi, day = self._cache
        if lo <= ms < hi:
            return day
        day = dt.datetime.fromtimestamp(ms / 1000, self.tz).date()
        self._cache = (self.start_ms(day), self.start_ms(day + dt.timedelta(days=1)), day)
        return day

    def start_ms(self, day: dt.date) -> int:
        """Unix ms of local midnight starting ``day``."""
        midnight = dt.datetime(day.year, day.month, day.day, tzinfo=self.tz)
        return int(midnight.timestamp() * 1000)

    def today(self) -> dt.date:
        return self.day_of(self._clock_ms())

    def now_ms(self) -> int:
        return self._clock_ms()
