"""The rules of :mod:`mes.schemas.events`, as TypedDicts: what the worker validates with.

The models in ``events`` are the contract's documentation and the source of the exported
JSON Schema files. Checking an event with them builds a model object for every message
and choice, which the worker then throws away (it stores the event's dict as sent). The
same rules written as TypedDicts build plain dicts instead and check an event in about
two thirds of the time (``bench/decode.py``: 6.6 against 10.5 µs for a typical event).

Two definitions of one contract must never drift: ``tests/test_schemas.py`` checks that
the JSON Schema of these equals the models' (the same types, bounds, patterns, required
fields and open or closed objects), and the conformance tests run the exported files and
:func:`mes.schemas.decode_event` over the same accepted and rejected examples.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from pydantic import ConfigDict, Field, StringConstraints, TypeAdapter
from typing_extensions import TypedDict

from .events import INT32, MAX_OCCURRED_AT, MIN_OCCURRED_AT

__all__ = ["EVENT_CHECK"]

_OPEN = ConfigDict(extra="allow", strict=True)
_CLOSED = ConfigDict(extra="forbid", strict=True)

Count = Annotated[int, Field(ge=0, le=INT32)]


class ContentPart(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Annotated[str, Field(min_length=1, max_length=64)]
    text: NotRequired[str | None]


class ToolCallFunction(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    name: NotRequired[str | None]
    arguments: NotRequired[str | None]


class ToolCall(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    id: NotRequired[str | None]
    type: NotRequired[str | None]
    function: NotRequired[ToolCallFunction | None]


class Message(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    role: Annotated[str, Field(min_length=1, max_length=32)]
    content: NotRequired[str | list[ContentPart] | None]
    name: NotRequired[str | None]
    tool_calls: NotRequired[list[ToolCall] | None]
    tool_call_id: NotRequired[str | None]


class Usage(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    prompt_tokens: NotRequired[Count]
    completion_tokens: NotRequired[Count]
    total_tokens: NotRequired[Count]


class Choice(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    index: NotRequired[Count]
    message: NotRequired[Message | None]
    finish_reason: NotRequired[Annotated[str, Field(max_length=64)] | None]


class ChatCompletion(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    id: NotRequired[str | None]
    object: NotRequired[str | None]
    created: NotRequired[int | None]
    model: NotRequired[str | None]
    choices: NotRequired[Annotated[list[Choice], Field(max_length=128)]]
    usage: NotRequired[Usage | None]


class _EventBase(TypedDict):
    __pydantic_config__ = _CLOSED  # type: ignore[misc]
    schema_version: Annotated[int, Field(ge=1, le=1)]
    event_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{7,63}$")]
    occurred_at: Annotated[int, Field(ge=MIN_OCCURRED_AT, le=MAX_OCCURRED_AT)]
    conversation_id: Annotated[str, Field(min_length=1, max_length=191)]
    model_name: NotRequired[Annotated[str, Field(max_length=191)]]
    user_id: Count
    token_id: NotRequired[Count]
    channel_id: NotRequired[Count]
    messages: NotRequired[Annotated[list[Message], Field(max_length=10_000)]]
    ip: NotRequired[Annotated[str, Field(max_length=64)] | None]
    is_stream: NotRequired[bool]
    request_id: NotRequired[Annotated[str, Field(max_length=128)] | None]
    metadata: NotRequired[dict[str, Any] | None]


class ChatEvent(_EventBase):
    kind: Literal["chat"]
    response: ChatCompletion


class ErrorEvent(_EventBase):
    kind: Literal["error"]
    error_code: Annotated[int, Field(ge=-INT32, le=INT32)]
    error_message: NotRequired[str]


Event = Annotated[ChatEvent | ErrorEvent, Field(discriminator="kind")]

EVENT_CHECK: TypeAdapter[Any] = TypeAdapter(Event)
