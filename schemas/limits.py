"""How large an event may be: MES's contract limit, and what a database can store.

Two bounds apply to one serialized event:

* MES's contract, :data:`MAX_EVENT_BYTES` (``schemas/CONTRACT.md``): no MES stores more,
  whatever its database. The producer knows it without asking anyone.
* the MES database's own: MySQL and MariaDB refuse a statement longer than
  ``max_allowed_packet`` (16 MiB by default: a 16 MiB event does not fit in its INSERT);
  SQLite refuses a value or row longer than ``SQLITE_LIMIT_LENGTH`` (10^9 by default);
  PostgreSQL's 1 GB field limit is far above the contract. ``storage.engine.event_limit``
  asks the server at start-up and builds a :class:`SizeLimit`.

Every door checks the same object: the HTTP ingest answers 413, the worker dead-letters
the event (bounded) without sending it to the database.

Light on purpose: the producer imports this module inside the gateway.
"""

from __future__ import annotations

import dataclasses

from mes.errors import EventTooLarge

__all__ = ["CONTRACT_LIMIT", "MAX_EVENT_BYTES", "EventTooLarge", "SizeLimit"]

MAX_EVENT_BYTES = 16 << 20


@dataclasses.dataclass(frozen=True)
class SizeLimit:
    """The largest event a door lets through: MES's contract, and the database's bound.

    ``db_max_bytes`` is measured as the database receives the event: with
    ``quotes_escaped`` (MySQL/MariaDB, whose driver sends each ``'`` as ``\\'``) every
    single quote counts twice; every other character a MySQL string escapes is escaped
    in JSON too, so the JSON bytes already count it. ``db_source`` says where the bound
    comes from, in words an operator can act on.
    """

    db_max_bytes: int | None = None
    db_source: str = ""
    quotes_escaped: bool = False

    @property
    def max_bytes(self) -> int:
        """Above this many bytes every event is refused (fewer may be: see quotes)."""
        if self.db_max_bytes is None:
            return MAX_EVENT_BYTES
        return min(MAX_EVENT_BYTES, self.db_max_bytes)

    def refusal(self, data: bytes) -> tuple[int, str] | None:
        """None if ``data`` fits; else the bound it breaks and why, as one sentence."""
        size = len(data)
        if size > MAX_EVENT_BYTES:
            return MAX_EVENT_BYTES, (
                f"the event is {size} bytes; MES stores events of at most {MAX_EVENT_BYTES} bytes "
                "(schemas/CONTRACT.md): send smaller events"
            )
        bound = self.db_max_bytes
        if bound is None or size * (2 if self.quotes_escaped else 1) <= bound:
            return None  # the common case: no need to count anything
        sent = size + data.count(b"'") if self.quotes_escaped else size
        if sent <= bound:
            return None
        as_sent = f" ({sent} as the database receives it, each ' escaped)" if sent != size else ""
        return bound, (
            f"the event is {size} bytes{as_sent}; {self.db_source} takes at most {bound}: "
            "raise that limit on the server, or send smaller events"
        )

    def check(self, data: bytes, event_id: str | None = None) -> None:
        """Raises:
        EventTooLarge: ``data`` is over a bound; the reason says which and what to do."""
        refused = self.refusal(data)
        if refused is not None:
            raise EventTooLarge(refused[1], event_id, size=len(data), max_bytes=refused[0])


CONTRACT_LIMIT = SizeLimit()
