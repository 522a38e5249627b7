"""Dead letters: events kept aside with the reason they could not be stored.

A :class:`DeadLetter` is what the worker (or the writer, for a value the database
refused) keeps of such an event, bounded so that it is itself always writable; the
writer inserts them in the batch's transaction. ``mes replay dead-letters`` reads them
back (:func:`read_dead_letters`) and removes those it re-sent (:func:`remove_dead_letters`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from hashlib import blake2b
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, delete, select

if TYPE_CHECKING:
    from mes.storage import Storage

__all__ = [
    "DEAD_PAYLOAD_MAX",
    "DeadLetter",
    "StoredDeadLetter",
    "is_truncated",
    "read_dead_letters",
    "remove_dead_letters",
]

DEAD_PAYLOAD_MAX = 64 << 10  # what a dead letter keeps of its payload: writable on every backend
REASON_MAX = 2000
TRUNCATED_MARK = "[payload truncated:"


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """An event kept aside: why it could not be stored, and its raw bytes, bounded.

    A dead letter must itself be writable whatever its event was: it keeps at most
    ``DEAD_PAYLOAD_MAX`` bytes of the payload (a prefix), and ``size`` and ``fingerprint``
    (blake2b-128, the dead letters' unique key) of the whole of it; the reason of a
    truncated one says so, with both. The reason is cut to ``REASON_MAX`` characters of
    valid text without NUL. ``size`` and ``fingerprint`` are given only to copy a dead
    letter (``dataclasses.replace``); by default they are the payload's.
    """

    payload: bytes
    reason: str
    event_id: str | None = None
    source: str = "worker"
    size: int = -1
    fingerprint: str = ""

    def __post_init__(self) -> None:
        raw = bytes(self.payload)
        size = len(raw) if self.size < 0 else self.size
        fingerprint = self.fingerprint or blake2b(raw, digest_size=16).hexdigest()
        kept = raw[:DEAD_PAYLOAD_MAX]
        reason = _clean_text(self.reason)
        if len(kept) < size and TRUNCATED_MARK not in reason:
            note = (
                f" {TRUNCATED_MARK} the first {len(kept)} of {size} bytes kept; "
                f"blake2b-128 of all: {fingerprint}]"
            )
            reason = reason[: REASON_MAX - len(note)] + note
        event_id = self.event_id if isinstance(self.event_id, str) and len(self.event_id) <= 64 else None
        for name, value in (("payload", kept), ("size", size), ("fingerprint", fingerprint),
                            ("reason", reason[:REASON_MAX]), ("event_id", event_id)):  # fmt: skip
            object.__setattr__(self, name, value)

    @property
    def truncated(self) -> bool:
        """Only a prefix of the event is kept: it cannot be replayed."""
        return len(self.payload) < self.size


def is_truncated(payload: bytes, fingerprint: str, reason: str) -> bool:
    """Whether a stored dead letter kept only a prefix of its event (its fingerprint is
    the whole event's, and its reason says so)."""
    return TRUNCATED_MARK in reason and blake2b(bytes(payload), digest_size=16).hexdigest() != fingerprint


def _clean_text(text: str) -> str:
    """Text every backend stores: valid UTF-8 (lone surrogates replaced), no NUL, bounded."""
    cut = text[: REASON_MAX * 2]
    return cut.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\\0")


@dataclasses.dataclass(frozen=True)
class StoredDeadLetter:
    """A row of ``mes_dead_letters`` as replay reads it."""

    id: int
    payload: bytes
    truncated: bool  # only a prefix of the event was kept: it cannot be replayed


def read_dead_letters(storage: Storage, ids: Iterable[int] | None = None) -> list[StoredDeadLetter]:
    """The dead letters (all, or those with the given row ids), oldest first."""
    table = storage.catalog.dead_letters
    query = select(table.c.id, table.c.payload, table.c.fingerprint, table.c.reason).order_by(table.c.id)
    if ids is not None:
        query = query.where(table.c.id.in_(list(ids)))
    with storage.engine.connect() as conn:
        rows = conn.execute(query).fetchall()
    return [
        StoredDeadLetter(r.id, bytes(r.payload), is_truncated(bytes(r.payload), r.fingerprint, r.reason))
        for r in rows
    ]


def remove_dead_letters(storage: Storage, ids: Iterable[int]) -> None:
    """Delete the dead letters with these row ids (replayed: back in the pipeline)."""
    table = storage.catalog.dead_letters
    with storage.engine.begin() as conn:
        conn.execute(
            delete(table).where(table.c.id.in_(bindparam("ids", expanding=True))), {"ids": list(ids)}
        )
