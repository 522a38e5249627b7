"""Rows back into OpenAI-format messages and error records.

The writer stores a message's role and content in their columns and everything else
it was given (``name``, ``tool_calls``, ``tool_call_id``, ``reasoning_content``, ...) in
``other``, with a flag when ``content`` holds a list of parts. This module undoes that:
structured content comes back as JSON, never as a string of JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

__all__ = ["error_record", "message_from_row"]

# Keys MES itself puts in ``other``; everything else there belongs to the message.
_INTERNAL = frozenset({"content_json", "response", "choice", "request_id", "metadata"})


def _other(row: Mapping[str, Any]) -> dict[str, Any]:
    raw = row.get("other")
    if not raw:
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _content(row: Mapping[str, Any], other: Mapping[str, Any]) -> Any:
    content = row.get("content")
    if content is not None and other.get("content_json"):
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError:
            return content
    return content


def message_from_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """One history row as an OpenAI chat message, with MES's id, time and model."""
    other = _other(row)
    message: dict[str, Any] = {"id": row["message_id"], "role": row["role"], "content": _content(row, other)}
    for key, value in other.items():
        if key not in _INTERNAL:
            message[key] = value
    message["created_at"] = row["created_at"]
    message["model"] = row["model_name"]
    if row.get("is_response"):
        message["finish_reason"] = row.get("finish_reason")
        usage = row.get("usage")
        message["usage"] = orjson.loads(usage) if usage else None
        if other.get("request_id"):
            message["request_id"] = other["request_id"]
        # The request this answers: its exact context is read with this id
        # (``HistoryReader.get_request_context``, ``GET ...?request=``).
        message["event_id"] = row.get("event_id")
    return message


def error_record(event_id: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The rows of one failed request as one record: the error and the messages it carried."""
    first = rows[0]
    other = _other(first)
    record: dict[str, Any] = {
        "id": event_id,
        "conversation_id": first["conversation_id"],
        "user_id": first["user_id"],
        "model": first["model_name"],
        "error_code": first["error_code"],
        "error_message": first["error_message"],
        "created_at": first["created_at"],
        "created_at_ms": first["created_at_ms"],
        "messages": [],
    }
    if other.get("request_id"):
        record["request_id"] = other["request_id"]
    for row in sorted(rows, key=lambda r: r["seq"]):
        if not row["role"] and row.get("content") is None:
            continue  # the placeholder row of a request that carried no messages
        message = {"role": row["role"], "content": _content(row, _other(row))}
        message.update((k, v) for k, v in _other(row).items() if k not in _INTERNAL)
        record["messages"].append(message)
    return record
