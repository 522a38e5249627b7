"""Checking what callers send: ids, times, and who may read whose history."""

from __future__ import annotations

import datetime as dt

from mes.api.auth import Principal

__all__ = ["ApiError", "check_text", "parse_day", "parse_time_ms", "scope_user"]

MAX_ID = 191  # the id columns' length
# Times a caller may name: 1970 to the end of 9998 (UTC). Not to datetime's own end: the
# reader turns a time into its day in TZ (up to 14 h ahead) and takes the next day's
# midnight, which has to be a date too.
MAX_TIME_S = 253_370_764_799  # 9998-12-31T23:59:59Z
_RANGE = "from 1970-01-01T00:00:00Z to 9998-12-31T23:59:59Z (unix seconds 0 to 253370764799)"


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class ApiError(Exception):
    """A request MES will not serve: a 4xx with a message the caller can act on."""

    def __init__(self, status: int, message: str, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def check_text(name: str, value: str | None, *, max_len: int = MAX_ID) -> str | None:
    """An id or filter as the databases can compare it: not too long, no control characters."""
    if value is None:
        return None
    if len(value) > max_len:
        raise ApiError(400, f"{name} is longer than {max_len} characters")
    if "\x00" in value or any(0xD800 <= ord(ch) <= 0xDFFF for ch in value):
        raise ApiError(400, f"{name} contains a NUL or an unpaired surrogate character")
    return value


def parse_time_ms(name: str, value: str | None) -> int | None:
    """``since`` / ``until``: unix seconds, or an ISO 8601 date or date-time (UTC if no zone).

    Raises:
        ApiError: 400 for what is not a time, or a time outside ``MAX_TIME_S``'s range
            (``0001-01-01T00:00:00+01:00`` is a valid ISO string, but a year 0 in UTC).
    """
    if value is None or value == "":
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    if seconds is None:
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ApiError(
                400, f"{name}={value!r} is not a time: use unix seconds or ISO 8601 (2026-01-15T08:00:00Z)"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        # a difference of aware datetimes, which (unlike a conversion to UTC) cannot
        # leave datetime's range: the range is checked below, on plain numbers
        seconds = (moment - _EPOCH).total_seconds()
    if not (0 <= seconds <= MAX_TIME_S):  # NaN fails both comparisons
        raise ApiError(400, f"{name}={value!r} is out of range: times go {_RANGE}")
    return int(seconds * 1000)


def parse_day(name: str, value: str | None) -> dt.date | None:
    """A day ``YYYY-MM-DD`` (the days of the stats, in MES's ``TZ``)."""
    if value is None or value == "":
        return None
    try:
        return dt.date.fromisoformat(value.strip())
    except ValueError:
        raise ApiError(400, f"{name}={value!r} is not a day: use YYYY-MM-DD") from None


def scope_user(principal: Principal, user_id: int | None, *, required: bool = True) -> int | None:
    """Whose history a call reads. A user reads their own; an admin may name anyone.

    ``required``: an operator key (no user of its own) must name a user.
    """
    if user_id is None:
        if principal.user_id is None and required:
            raise ApiError(400, "the operator key reads on behalf of a user: pass user_id")
        return principal.user_id
    if principal.is_admin or user_id == principal.user_id:
        return user_id
    raise ApiError(403, "only admins may read or change another user's history", "forbidden")
