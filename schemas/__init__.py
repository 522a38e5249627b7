"""The event contract, version 1: models, validation, ids, and the exported JSON Schema files.

A gateway in any language can produce valid events from ``event.v1.schema.json`` and
``CONTRACT.md`` in this folder.
"""

from .decode import decode_event, validate_event
from .events import SCHEMA_VERSION, ChatEvent, ErrorEvent, Event
from .ids import new_event_id

__all__ = [
    "SCHEMA_VERSION",
    "ChatEvent",
    "ErrorEvent",
    "Event",
    "decode_event",
    "new_event_id",
    "validate_event",
]
