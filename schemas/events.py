"""Version 1 of the event contract: what a gateway hands MES.

Two kinds of event, told apart by ``kind``:

* ``chat``: a finished request, the arguments of the seed's ``SaveChatCompletion``
  (conversation id, messages, the response, model name, user, token, channel);
* ``error``: a failed request, the arguments of ``SaveErrorConversation`` (the messages,
  the error code and message, ...).

Both carry an ``event_id`` made by the producer (never the provider's response id:
providers send empty, ``null`` and reused ids), ``occurred_at`` (unix ms, UTC, when the
request finished: it picks the day table), the client ``ip``, ``is_stream``,
``request_id`` and free ``metadata``.

Messages and responses are OpenAI Chat Completions objects. The models check the shape
MES relies on and let every other field through (``extra="allow"``): vendors add fields
(``reasoning_content``, ``cache_control``, ``annotations``, ...) and MES stores what it is
given, losslessly. The top level is closed (``extra="forbid"``) so a misspelt field
is an error rather than data silently dropped. Types are strict: ``"1"`` is not a
user id, ``true`` is not a number.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

__all__ = [
    "SCHEMA_VERSION",
    "ChatCompletion",
    "ChatEvent",
    "Choice",
    "ContentPart",
    "ErrorEvent",
    "Event",
    "Message",
    "ToolCall",
    "Usage",
]

SCHEMA_VERSION = 1
INT32 = 2**31 - 1
# 2000-01-01 .. 2100-01-01 in unix ms: bounds any real request time. The decoder also
# refuses times more than a day in the future (a clock that is wrong, or garbage).
MIN_OCCURRED_AT = 946_684_800_000
MAX_OCCURRED_AT = 4_102_444_800_000

EventId = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{7,63}$"),
    Field(description="Unique per event, 8-64 chars of [A-Za-z0-9._:-]; a UUIDv7 or ULID is ideal."),
]
Count = Annotated[int, Field(ge=0, le=INT32)]


class _Open(BaseModel):
    """OpenAI objects: the fields MES reads are checked, others are kept as they are."""

    model_config = ConfigDict(extra="allow", strict=True)


class ContentPart(_Open):
    """One part of a message's content: ``{"type": "text", "text": ...}``,
    ``{"type": "image_url", "image_url": {"url": ...}}``, or any other typed part."""

    type: Annotated[str, Field(min_length=1, max_length=64)]
    text: str | None = None


class ToolCallFunction(_Open):
    name: str | None = None
    arguments: str | None = None


class ToolCall(_Open):
    id: str | None = None
    type: str | None = "function"
    function: ToolCallFunction | None = None


class Message(_Open):
    """An OpenAI chat message: ``content`` is a string, a list of parts, or null."""

    role: Annotated[str, Field(min_length=1, max_length=32)]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class Usage(_Open):
    prompt_tokens: Count = 0
    completion_tokens: Count = 0
    total_tokens: Count = 0


class Choice(_Open):
    index: Count = 0
    message: Message | None = None
    finish_reason: Annotated[str, Field(max_length=64)] | None = None


class ChatCompletion(_Open):
    """An OpenAI ``chat.completion`` object (a stream the gateway aggregated included).
    ``id`` may be empty or null: MES never uses it as a key."""

    id: str | None = None
    object: str | None = None
    created: int | None = None
    model: str | None = None
    choices: list[Choice] = Field(default_factory=list, max_length=128)
    usage: Usage | None = None


class _EventBase(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    # An integer constraint, not Literal[1]: a literal would let ``true`` through (True == 1).
    schema_version: Annotated[int, Field(ge=1, le=1, description="Version of this contract: 1.")]
    event_id: EventId
    occurred_at: Annotated[int, Field(ge=MIN_OCCURRED_AT, le=MAX_OCCURRED_AT, description="Unix ms, UTC.")]
    conversation_id: Annotated[str, Field(min_length=1, max_length=191)]
    model_name: Annotated[str, Field(max_length=191)] = ""
    user_id: Count
    token_id: Count = 0
    channel_id: Count = 0
    messages: list[Message] = Field(default_factory=list, max_length=10_000)
    ip: Annotated[str, Field(max_length=64)] | None = None
    is_stream: bool = False
    request_id: Annotated[str, Field(max_length=128)] | None = None
    metadata: dict[str, Any] | None = None
    capture: Annotated[
        Literal["full", "metadata", "none"] | None,
        Field(
            description="At most this much of the event is kept: lowers, never raises, the operator's level."
        ),
    ] = None


class ChatEvent(_EventBase):
    """A finished request (the seed's ``SaveChatCompletion``)."""

    kind: Literal["chat"]
    response: ChatCompletion


class ErrorEvent(_EventBase):
    """A failed request (the seed's ``SaveErrorConversation``)."""

    kind: Literal["error"]
    error_code: Annotated[int, Field(ge=-INT32, le=INT32)]
    error_message: str = ""


Event = Annotated[ChatEvent | ErrorEvent, Field(discriminator="kind")]
