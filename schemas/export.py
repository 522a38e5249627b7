"""Write the JSON Schema files of the event contract next to this module.

``python -m mes.schemas.export`` regenerates them; a test fails when they are stale, so
the files a gateway in another language reads always match what the workers accept.
"""

from __future__ import annotations

import json
import pathlib
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter

from mes.schemas.events import ChatEvent, ErrorEvent, Event

if TYPE_CHECKING:
    from typing_extensions import TypeForm

__all__ = ["FILES", "render", "write"]

HERE = pathlib.Path(__file__).parent
BASE_ID = "https://github.com/mes-history/mes/schemas/"
# name -> (a model, or Event's annotated union, for TypeAdapter; the schema's title)
FILES: dict[str, tuple[TypeForm[Any], str]] = {
    "event.v1.schema.json": (Event, "MES event, v1: a chat or an error event"),
    "chat-event.v1.schema.json": (ChatEvent, "MES chat event, v1 (SaveChatCompletion)"),
    "error-event.v1.schema.json": (ErrorEvent, "MES error event, v1 (SaveErrorConversation)"),
}


def render(name: str) -> str:
    model, title = FILES[name]
    schema: dict[str, Any] = TypeAdapter(model).json_schema(mode="validation")
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": BASE_ID + name,
        "title": title,
        "description": (
            "Validated by MES workers; rules JSON Schema cannot say (events at most 16 MiB, no NUL "
            "character, occurred_at at most a day in the future) are in CONTRACT.md."
        ),
        **{k: v for k, v in schema.items() if k not in ("title", "description")},
    }
    return json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def write(directory: pathlib.Path = HERE) -> list[pathlib.Path]:
    paths = []
    for name in FILES:
        path = directory / name
        path.write_text(render(name), encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write():
        print(written)
