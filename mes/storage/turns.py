"""Turn identity: how the writer recognises a re-sent message, whatever its place.

Every request of a chat re-sends the earlier turns, and histories change between
requests: a system prompt added later, an agent's compacted summary, a sliding window
that drops the oldest turns, an edited or regenerated turn. MES stores each message the
gateway sent once: a message is a *re-send* when it matches, in order, the
conversation's stored messages; every other message is new (see ``storage.transcript``).

Two messages match when their *turn digests* are equal: a hash of the parts of a message
that define the turn: role, content (text parts folded to a string), name, tool calls
(id, name, arguments) and tool_call_id. Fields a client drops when it sends an answer
back (``refusal: null``, ``reasoning_content``, ``annotations``) do not break the match.
A digest depends on the message alone, not on what comes before it, so a turn re-sent
after an inserted system prompt or a compaction is still recognised.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from hashlib import blake2b
from typing import Any

import orjson

__all__ = [
    "content_column",
    "message_digest",
    "message_digests",
    "sequence_digest",
    "stored_message",
    "turn_key",
]

_SORT = orjson.OPT_SORT_KEYS


def _fold_content(content: Any) -> Any:
    if content is None:
        return ""
    if isinstance(content, list):
        if all(isinstance(p, Mapping) and p.get("type") == "text" for p in content):
            return "".join(str(p.get("text") or "") for p in content)
        return content
    return content


def turn_key(message: Mapping[str, Any]) -> bytes:
    """The bytes that identify a message as a turn (see the module docstring)."""
    key: list[Any] = [message.get("role") or "", _fold_content(message.get("content"))]
    name = message.get("name")
    if name:
        key.append(["n", name])
    tool_call_id = message.get("tool_call_id")
    if tool_call_id:
        key.append(["t", tool_call_id])
    calls = message.get("tool_calls")
    if calls:
        folded = []
        for call in calls:
            if isinstance(call, Mapping):
                fn = call.get("function")
                fn = fn if isinstance(fn, Mapping) else {}
                folded.append([call.get("id"), fn.get("name"), fn.get("arguments")])
            else:
                folded.append(call)
        key.append(["c", folded])
    return orjson.dumps(key, option=_SORT)


class _Memo:
    """Digests already computed for plain turns (a role and a string, nothing else): most
    of a chat's history, re-sent with every request.

    A hit is a dict lookup (one pass over the text to hash it, one to compare it) instead
    of serialising and hashing the text again. Equal keys give equal ``turn_key``s, so a
    hit is exactly what the definition gives. Two generations bounded by the text they
    hold: a few MB whatever the message sizes.
    """

    __slots__ = ("chars", "limit", "new", "old")

    def __init__(self, limit: int = 4_000_000) -> None:
        self.limit = limit
        self.new: dict[tuple[Any, str], bytes] = {}
        self.old: dict[tuple[Any, str], bytes] = {}
        self.chars = 0

    def digest(self, message: Mapping[str, Any]) -> bytes:
        content = message.get("content")
        role = message.get("role")
        if type(content) is not str or role is None or len(message) != 2:
            return blake2b(turn_key(message), digest_size=16).digest()
        key = (role, content)
        found = self.new.get(key)
        if found is None:
            found = self.old.get(key)
            if found is None:
                found = blake2b(turn_key(message), digest_size=16).digest()
            self.chars += len(content)
            if self.chars > self.limit:  # a new generation; the one before it is dropped
                self.old, self.new, self.chars = self.new, {}, len(content)
            self.new[key] = found
        return found


_MEMO = _Memo()


def message_digest(message: Mapping[str, Any]) -> bytes:
    """``H(turn_key(message))``: equal for two messages exactly when they are the same turn."""
    return _MEMO.digest(message)


def message_digests(messages: Sequence[Mapping[str, Any]]) -> list[bytes]:
    """The digest of each message, in order."""
    digest = _MEMO.digest
    return [digest(m) for m in messages]


def sequence_digest(digests: Sequence[bytes]) -> bytes:
    """One digest of a whole sequence of turns (the conversation's *tail*: what the latest
    request sent and its answer): a request that starts with the same turns, in the same
    order, starts with the same sequence digest."""
    return blake2b(b"".join(digests), digest_size=16).digest()


def content_column(content: Any) -> tuple[str | None, bool]:
    """What the ``content`` column holds, and whether it is JSON (a list of parts).

    A string stays a string; ``None`` stays NULL; a list of parts (text, image_url, ...)
    is stored as its JSON text and flagged so the reader restores the list, never a
    string that happens to look like JSON.
    """
    if content is None or isinstance(content, str):
        return content, False
    return orjson.dumps(content).decode(), True


def stored_message(role: str, content: str | None, other: str | None) -> dict[str, Any]:
    """A stored row's columns as the message its turn digest is computed from: the inverse
    of the writer's ``content``/``other`` split, for the parts ``turn_key`` reads."""
    extra: dict[str, Any] = {}
    if other:
        with contextlib.suppress(orjson.JSONDecodeError):
            loaded = orjson.loads(other)
            extra = loaded if isinstance(loaded, dict) else {}
    message: dict[str, Any] = {"role": role, "content": content}
    if content is not None and extra.get("content_json"):
        with contextlib.suppress(orjson.JSONDecodeError):
            message["content"] = orjson.loads(content)
    for key in ("name", "tool_call_id", "tool_calls"):
        if key in extra:
            message[key] = extra[key]
    return message
