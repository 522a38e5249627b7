"""An event, turned into bytes once, on the caller's thread.

``envelope`` builds the fields both kinds of event share (contract v1,
``mes.schemas.events``); ``serialize`` turns the event into JSON bytes at once, so that
later changes to the caller's objects (a gateway may reuse its message lists once the
call returns) do not leak into what is stored. Neither raises on what a gateway passes:
what cannot be written as the contract wants is written so that the worker's validation
dead-letters it with a reason.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections.abc import Mapping
from typing import Any

import orjson

from mes.schemas.ids import new_event_id

__all__ = ["envelope", "serialize"]


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


def envelope(
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
