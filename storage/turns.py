"""Turn identity: how the writer stores each message of a multi-turn chat once.

Every request of a chat re-sends the earlier turns. The Go version stored them again
each time, so a conversation read back showed its first question once per request.
MES gives each message a *chain id*: a hash of the message and of every message before
it in the same (user, conversation). The same turn re-sent at the same place in the
same history gets the same id, so the unique key ``(conversation_id, message_id)`` of
the history tables recognises it; an edited earlier message starts a new branch, whose
ids all differ, and is stored as what it is: new.

An event *owns* the messages after the last assistant message of its request (the new
question, tool results) and its response; what comes before belongs to earlier events.
The first event MES sees of a conversation owns its whole request, so history a client
brought along (few-shot examples, a chat begun before MES was deployed) is kept.

Only the parts of a message that define the turn enter the hash: role, content (text
parts folded to a string), name, tool calls (id, name, arguments) and tool_call_id.
Fields a client drops when it sends an answer back (``refusal: null``,
``reasoning_content``, ``annotations``) do not break the match.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from hashlib import blake2b
from typing import Any

import orjson

__all__ = ["chain_ids", "chain_seed", "content_column", "owned_start", "turn_digest", "turn_key"]

_SORT = orjson.OPT_SORT_KEYS


def chain_seed(user_id: int, conversation_id: str) -> bytes:
    """The hash state before the first message: chains never cross users or conversations."""
    return blake2b(f"mes/1|{user_id}|{conversation_id}".encode(), digest_size=16).digest()


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
    """Chain digests already computed, for messages with a string content and no tool calls
    (most of a chat's history).

    Every request of a chat re-sends the turns before it, and a worker usually meets a
    chat's next request in the same or the next batch: the digest of a re-sent turn (an
    answer first seen as a response included) is found here by the previous digest and the
    fields of the turn (a dict lookup: one pass over the text to hash it, one to compare
    it) instead of serialising and hashing the text again. Equal keys give equal
    ``turn_key``s, so a hit is exactly what the definition gives. Two generations bounded
    by the text they hold: a few MB whatever the message sizes.
    """

    __slots__ = ("chars", "limit", "new", "old")

    def __init__(self, limit: int = 4_000_000) -> None:
        self.limit = limit
        self.new: dict[tuple[Any, ...], bytes] = {}
        self.old: dict[tuple[Any, ...], bytes] = {}
        self.chars = 0

    def digest(self, prev: bytes, message: Mapping[str, Any]) -> bytes:
        get = message.get
        content = get("content")
        if type(content) is not str:
            return blake2b(prev + turn_key(message), digest_size=16).digest()
        role = get("role")
        if role is not None and len(message) == 2:  # role and text, nothing else: most turns
            key: tuple[Any, ...] = (prev, role, content)
        elif get("tool_calls"):
            return blake2b(prev + turn_key(message), digest_size=16).digest()
        else:
            key = (prev, role, content, get("name"), get("tool_call_id"))
        found = self.new.get(key)
        if found is None:
            found = self.old.get(key)
            if found is None:
                found = blake2b(prev + turn_key(message), digest_size=16).digest()
            self.chars += len(content)
            if self.chars > self.limit:  # a new generation; the one before it is dropped
                self.old, self.new, self.chars = self.new, {}, len(content)
            self.new[key] = found
        return found


_MEMO = _Memo()


def turn_digest(prev: bytes, message: Mapping[str, Any]) -> bytes:
    """``H(prev || turn_key(message))``: the chain id of ``message`` after ``prev``."""
    return _MEMO.digest(prev, message)


def chain_ids(seed: bytes, messages: Sequence[Mapping[str, Any]]) -> list[bytes]:
    """The chain digest of each message: ``h[i] = H(h[i-1] || turn_key(m[i]))``."""
    out: list[bytes] = []
    prev = seed
    digest = _MEMO.digest
    for message in messages:
        prev = digest(prev, message)
        out.append(prev)
    return out


def owned_start(messages: Sequence[Mapping[str, Any]]) -> int:
    """Index of the first message the event owns: the one after the last assistant message."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "assistant":
            return i + 1
    return 0


def content_column(content: Any) -> tuple[str | None, bool]:
    """What the ``content`` column holds, and whether it is JSON (a list of parts).

    A string stays a string; ``None`` stays NULL; a list of parts (text, image_url, ...)
    is stored as its JSON text and flagged so the reader restores the list, never a
    string that happens to look like JSON.
    """
    if content is None or isinstance(content, str):
        return content, False
    return orjson.dumps(content).decode(), True
