"""The event contract, version 1: models, validation, ids, and the exported JSON Schema files.

A gateway in any language can produce valid events from ``event.v1.schema.json`` and
``CONTRACT.md`` in this folder.

The models need pydantic; the producer, which runs inside the gateway, needs only
``new_event_id``. Names are therefore loaded on first use, so ``import mes.schemas.ids``
stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = [
    "SCHEMA_VERSION",
    "ChatEvent",
    "ErrorEvent",
    "Event",
    "decode_event",
    "new_event_id",
    "validate_event",
]

_WHERE = {
    "SCHEMA_VERSION": "events",
    "ChatEvent": "events",
    "ErrorEvent": "events",
    "Event": "events",
    "decode_event": "decode",
    "validate_event": "decode",
    "new_event_id": "ids",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'mes.schemas' has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
