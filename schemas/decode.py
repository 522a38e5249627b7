"""Bytes to a validated event, or an :class:`~mes.errors.InvalidEvent` with a reason.

The worker calls :func:`decode_event` on every item it takes from Redis, whoever wrote
it. Rules that JSON Schema cannot say are checked here and written down in
``schemas/CONTRACT.md``: the size limit (MES's, and the database's when the caller
passes what it learned: see ``limits``), no NUL character (PostgreSQL cannot store it, so
no backend accepts it), and ``occurred_at`` at most a day in the future.

The dict returned is the event exactly as sent (so storage is lossless); the rules of
the models in ``events`` (as the TypedDicts of ``check``) only check it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import orjson
from pydantic import ValidationError

from mes.errors import InvalidEvent
from mes.schemas.check import EVENT_CHECK
from mes.schemas.limits import CONTRACT_LIMIT, MAX_EVENT_BYTES, SizeLimit

__all__ = ["MAX_EVENT_BYTES", "decode_event", "validate_event"]

FUTURE_SLACK_MS = 24 * 3600 * 1000
_ADAPTER = EVENT_CHECK  # the models' rules as TypedDicts: same verdicts, ~2/3 of the cost (see check)
# An escaped NUL (\u0000) preceded by an even number of backslashes is a real NUL;
# after an odd number it is the text "\u0000".
_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def _clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _event_id_of(data: Any) -> str | None:
    if isinstance(data, dict):
        value = data.get("event_id")
        if isinstance(value, str) and len(value) <= 64:
            return value
    return None


def _event_id_of_large(data: bytes) -> str | None:
    """The event id of an event refused for its size, for its dead letter (parsing a
    few tens of MB costs tens of ms: rare enough; beyond that, none)."""
    if len(data) > 4 * MAX_EVENT_BYTES:
        return None
    try:
        return _event_id_of(orjson.loads(data))
    except orjson.JSONDecodeError:
        return None


_TYPE_NAME = re.compile(r"^(str|int|bool|float|none|list\[.*\]|dict\[.*\]|function-.*|[A-Z]\w*)$")


def _describe(exc: ValidationError) -> str:
    """Pydantic's errors as one line a person can act on: ``messages[2].role: Field required``."""
    by_loc: dict[str, list[str]] = {}
    for error in exc.errors(include_url=False):
        if error["type"] in ("union_tag_not_found", "union_tag_invalid"):
            by_loc.setdefault("kind", []).append("must be 'chat' or 'error'")
            continue
        loc = ""
        for item in error["loc"]:
            if isinstance(item, int):
                loc += f"[{item}]"
            elif (item in ("chat", "error") and not loc) or _TYPE_NAME.match(str(item)):
                continue  # the union's tag or one branch of a union: not a field name
            else:
                loc += f".{item}" if loc else str(item)
        messages = by_loc.setdefault(loc or "event", [])
        if error["msg"] not in messages:
            messages.append(error["msg"])
    parts = [f"{loc}: {' or '.join(msgs)}" for loc, msgs in by_loc.items()]
    more = len(parts) - 3
    return "; ".join(parts[:3]) + (f" (and {more} more)" if more > 0 else "")


def validate_event(data: Any, *, now_ms: Callable[[], int] = _clock_ms) -> dict[str, Any]:
    """Check a decoded event; returns it unchanged.

    Raises:
        InvalidEvent: the reason names the field and the problem.
    """
    if not isinstance(data, dict):
        raise InvalidEvent(f"an event must be a JSON object, got {type(data).__name__}")
    try:
        _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise InvalidEvent(_describe(exc), _event_id_of(data)) from None
    if data["occurred_at"] > now_ms() + FUTURE_SLACK_MS:
        raise InvalidEvent(
            "occurred_at is more than a day in the future: check the gateway's clock", data["event_id"]
        )
    return data


def decode_event(
    raw: bytes | str, *, now_ms: Callable[[], int] = _clock_ms, limit: SizeLimit = CONTRACT_LIMIT
) -> dict[str, Any]:
    """Decode one event from JSON bytes and validate it; ``limit`` is the size the
    database takes (``storage.engine.event_limit``), MES's contract limit by default.

    Raises:
        EventTooLarge: (an ``InvalidEvent``) over ``limit``; nothing else is checked.
        InvalidEvent: not JSON, contains NUL, or fails the contract.
    """
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if limit.refusal(data) is not None:
        limit.check(data, _event_id_of_large(data))
    try:
        decoded = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"not valid JSON: {exc}") from None
    if b"\\u0000" in data and _NUL.search(data):
        raise InvalidEvent(
            "contains a NUL character (\\u0000), which the databases cannot store", _event_id_of(decoded)
        )
    return validate_event(decoded, now_ms=now_ms)
