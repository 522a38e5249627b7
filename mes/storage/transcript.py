"""A conversation's transcript: its stored messages in conversation order, and where the
messages of a new request go. Pure: no I/O.

Each stored chat row carries three keys of its own:

* ``ordinal``: its number in the conversation, in the order rows were stored (1, 2, ...).
  Never reused; a request's context is the list of the ordinals it sent
  (:func:`encode_context`: ``"1-24,31"``), so the exact context the model saw can be
  rebuilt for any request, in a few bytes in the common case.
* ``position``: its place in the transcript. Appended rows are ``GAP`` apart, so a message
  a later request puts before stored ones (a system prompt added, a compaction summary)
  gets a position between its neighbours: stored rows are never rewritten.
* ``digest``: its turn digest (``storage.turns``), to recognise it when it is re-sent.

How a request's messages are matched (:func:`align`): the longest runs of the request's
turns that appear, in order, among the transcript's (``difflib.SequenceMatcher`` over
digests, junk heuristics off) are re-sends; every other message is new. A new message
goes where the request puts it: right before the re-sent message that follows it in the
request; new messages after the last re-sent one (and all of them when none is re-sent)
go at the end.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
from collections.abc import Iterable, Sequence
from difflib import SequenceMatcher

__all__ = [
    "GAP",
    "STEP",
    "Entry",
    "Transcript",
    "align",
    "decode_context",
    "encode_context",
    "join_context",
]

GAP = 1 << 40  # between appended rows: 2**23 appends per conversation before BIGINT ends
STEP = 1 << 20  # between rows inserted into one gap: 2**20 inserts into the same gap


@dataclasses.dataclass(slots=True)
class Entry:
    """One stored chat row, as matching and placement need it."""

    position: int
    ordinal: int
    digest: bytes
    is_response: bool
    message_id: str
    model: str
    created_at_ms: int
    table_day: dt.date | None
    planned: bool = False  # added by the batch being planned (not in a table yet)

    @property
    def order(self) -> tuple[int, int]:
        return (self.position, self.ordinal)


class Transcript:
    """One conversation's entries in transcript order (position, then ordinal)."""

    __slots__ = ("_keys", "entries")

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self.entries = sorted(entries, key=lambda e: e.order)
        self._keys = [e.order for e in self.entries]

    def add(self, entry: Entry) -> None:
        at = bisect.bisect_right(self._keys, entry.order)
        self._keys.insert(at, entry.order)
        self.entries.insert(at, entry)

    def digests(self) -> list[bytes]:
        return [e.digest for e in self.entries]

    def place(self, matches: Sequence[int | None], end: int) -> list[int]:
        """Positions for the unmatched request messages (in request order).

        ``matches[i]`` is the transcript index message ``i`` re-sends, or None; ``end`` is
        the conversation's highest position so far."""
        out: list[int] = []
        i, n = 0, len(matches)
        while i < n:
            if matches[i] is not None:
                i += 1
                continue
            j = i
            while j < n and matches[j] is None:
                j += 1
            k = j - i
            following = matches[j] if j < n else None
            if following is None:  # after the last re-sent message: at the end
                out.extend(end + GAP * (m + 1) for m in range(k))
                end += GAP * k
            else:
                out.extend(self._between(following, k))
            i = j
        return out

    def _between(self, following: int, k: int) -> list[int]:
        hi = self.entries[following].position
        if following == 0:  # before the first row: room without limit below
            return [hi - GAP * (k - m) for m in range(k)]
        lo = self.entries[following - 1].position
        step = min(STEP, (hi - lo) // (k + 1))
        # No room left (2**20 inserts into one gap): ties at ``lo`` still sort after it,
        # by ordinal, and before ``hi``.
        return [lo + step * (m + 1) for m in range(k)]


def align(stored: Sequence[bytes], request: Sequence[bytes]) -> list[int | None]:
    """For each request digest, the index in ``stored`` it re-sends, or None (new)."""
    out: list[int | None] = [None] * len(request)
    if not stored or not request:
        return out
    matcher = SequenceMatcher(None, stored, request, autojunk=False)
    for a, b, size in matcher.get_matching_blocks():
        for k in range(size):
            out[b + k] = a + k
    return out


def encode_context(ordinals: Sequence[int]) -> str:
    """``[1, 2, 3, 7, 9, 10]`` → ``"1-3,7,9-10"`` (runs of consecutive ordinals)."""
    parts: list[str] = []
    i, n = 0, len(ordinals)
    while i < n:
        j = i
        while j + 1 < n and ordinals[j + 1] == ordinals[j] + 1:
            j += 1
        parts.append(str(ordinals[i]) if i == j else f"{ordinals[i]}-{ordinals[j]}")
        i = j + 1
    return ",".join(parts)


def join_context(head: str, tail: str) -> str:
    """``encode_context(a + b)`` from ``encode_context(a)`` and ``encode_context(b)``, without
    decoding either: the common request re-sends its conversation's tail (an encoded
    context as long as the history) and adds two messages, and this costs the same
    whatever the history's length."""
    if not head or not tail:
        return head or tail
    cut = head.rfind(",") + 1
    last = head[cut:]
    start, _, end = last.partition("-")
    first, _, rest = tail.partition(",")
    p, _, q = first.partition("-")
    if int(p) != int(end or start) + 1:
        return f"{head},{tail}"
    merged = f"{start}-{q or p}"
    return head[:cut] + merged + ("," + rest if rest else "")


def decode_context(text: str | None) -> list[int]:
    """The inverse of :func:`encode_context`."""
    out: list[int] = []
    for part in (text or "").split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        if last:
            out.extend(range(int(first), int(last) + 1))
        else:
            out.append(int(first))
    return out
