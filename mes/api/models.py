"""The shapes the API answers, as pydantic models: for the OpenAPI description only.

The routes build their answers as dicts and render them with orjson (see
``app._rendered``); nothing here validates or re-serializes an answer at run time. These
models say what those dicts hold, and ``tests/test_api_fuzz.py`` checks every answer of
the real app against them. MES's own objects are closed (``extra="forbid"``: a key the
description does not name fails that check); a message is open, because it carries
whatever OpenAI keys the gateway sent (``name``, ``tool_calls``, ``tool_call_id``, ...).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AuditEntry",
    "AuditList",
    "ConversationErrors",
    "ConversationList",
    "ConversationRead",
    "ConversationSummary",
    "Deleted",
    "ErrorBody",
    "ErrorList",
    "ErrorRecord",
    "Health",
    "IngestResult",
    "Message",
    "NotReady",
    "Ready",
    "RequestContext",
    "Stats",
]

# A message's content: text, a list of OpenAI content parts, or null.
Content = str | list[dict[str, Any]] | None


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- errors --------------------------------------------------------------------------------
class ErrorDetail(_Closed):
    message: str = Field(description="what is wrong, in words the caller can act on")
    type: str = Field(
        description="OpenAI-style class: `invalid_request_error`, `authentication_error`, "
        "`permission_error`, `not_found_error`, `conflict_error`, `rate_limit_error`, "
        "`service_unavailable`"
    )
    code: str = Field(
        description="what to do about it, e.g. `invalid_request`, `bad_cursor`, `invalid_api_key`, "
        "`forbidden`, `not_found`, `ambiguous`, `too_large`, `rate_limited`, `unavailable`"
    )


class ErrorBody(_Closed):
    """Every refusal (4xx) and every outage (503)."""

    error: ErrorDetail


# -- history -------------------------------------------------------------------------------
class ConversationSummary(_Closed):
    """A conversation's index entry (``mes_conversations``): no daily table is read for it."""

    id: str = Field(description="the conversation id (the cursor for `after`)")
    object: Literal["conversation"]
    conversation_id: str
    user_id: int
    title: str = Field(description="from its first user message; may be empty")
    model: str = Field(description="the model of its latest request")
    models: dict[str, int] = Field(description="messages per model")
    message_count: int
    request_count: int
    error_count: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    created_at: int = Field(description="unix seconds of its first request")
    updated_at: int = Field(description="unix seconds of its latest request")
    first_at_ms: int
    last_at_ms: int


class Message(BaseModel):
    """An OpenAI chat message with MES's id, time and model; an answer also carries its
    `finish_reason`, `usage` and the `event_id` of its request (for `?request=`)."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(description="stable per message")
    role: str
    content: Content
    created_at: int = Field(description="unix seconds")
    model: str
    finish_reason: str | None = Field(None, description="answers only")
    usage: dict[str, Any] | None = Field(None, description="answers only")
    request_id: str | None = Field(None, description="answers only, when the gateway sent one")
    event_id: str | None = Field(None, description="answers only: the request's id")


class _Page(_Closed):
    """What every list page says besides its items."""

    object: Literal["list"]
    first_id: str | None
    last_id: str | None
    has_more: bool
    limit: int
    offset: int
    user_id: int


class ConversationList(_Page):
    conversations: list[ConversationSummary]


class ConversationRead(_Closed):
    """The transcript: each message once, in conversation order (its latest `limit`)."""

    object: Literal["conversation"]
    conversation_id: str
    conversation: ConversationSummary
    messages: list[Message]


class RequestContext(_Closed):
    """`?request=<event_id>`: the exact messages that request sent, then its answer."""

    object: Literal["conversation.request"]
    conversation_id: str
    request: str
    messages: list[Message]


ConversationOrRequest = Annotated[ConversationRead | RequestContext, Field(discriminator="object")]


class Deleted(_Closed):
    message: str
    conversation_id: str
    deleted: Literal[True]


class Erasure(_Closed):
    """What erasing a user removed (``dry_run``: would remove)."""

    object: Literal["erasure"]
    user_id: int
    dry_run: bool
    resumed: bool = Field(description="an earlier erasure of this user had not finished")
    before_ms: int = Field(description="events of the user from before this time are not stored (0: dry run)")
    conversations: int
    chat_rows: int
    error_rows: int
    counted_events: int = Field(description="events kept as their counts only (MES_CAPTURE=none)")
    stats_rows: int
    dead_letters: int
    stray_rows: int
    spool_events: int = Field(description="removed from this server's spool folder")
    queued_events: int = Field(description="removed from the batches waiting in Redis")
    left: list[str] = Field(
        description="what could not be cleaned now (the workers drop those events on arrival)"
    )


class Stats(_Closed):
    """Totals from the daily rollups; they equal a recount of the rows."""

    total_conversations: int
    total_messages: int
    total_tokens: int
    models_used: dict[str, int] = Field(description="messages per model")
    daily_message_count: dict[str, int] = Field(description="messages per day (YYYY-MM-DD, in TZ)")
    total_requests: int
    total_errors: int
    total_prompt_tokens: int
    total_completion_tokens: int
    tokens_by_model: dict[str, int]
    daily_error_count: dict[str, int]
    user_id: int


# -- error history -------------------------------------------------------------------------
class ErrorMessage(BaseModel):
    """A message a failed request sent (OpenAI keys as given)."""

    model_config = ConfigDict(extra="allow")

    role: str
    content: Content


class ErrorRecord(_Closed):
    """One failed request: the error and the messages it carried."""

    id: str = Field(description="the request's event id (the cursor for `after`)")
    conversation_id: str
    user_id: int
    model: str
    error_code: int = Field(description="the upstream HTTP status or the gateway's code")
    error_message: str | None
    created_at: int = Field(description="unix seconds")
    created_at_ms: int
    request_id: str | None = Field(None, description="when the gateway sent one")
    messages: list[ErrorMessage]


class ErrorList(_Page):
    errors: list[ErrorRecord]


class ConversationErrors(_Closed):
    object: Literal["list"]
    conversation_id: str
    errors: list[ErrorRecord]


# -- audit ---------------------------------------------------------------------------------
class AuditEntry(_Closed):
    """One read or deletion of a user's history by someone else (``mes_audit``)."""

    id: int = Field(description="the entry's id (the cursor for `after`)")
    object: Literal["audit.entry"]
    at: int = Field(description="unix seconds")
    at_ms: int
    actor: str = Field(description="`user:<id>` (an admin), `operator` (the operator key) or `cli`")
    actor_user_id: int | None
    action: Literal["read", "delete", "erase"]
    target_user_id: int = Field(description="whose history")
    resource: str = Field(description="`conversations`, `conversation:<id>`, `errors`, `stats` or `user`")
    client: str | None = Field(description="the caller's address; `cli` from the command line")
    detail: dict[str, Any] | None = Field(description="what else: a view, a count; never content")


class AuditList(_Closed):
    object: Literal["list"]
    entries: list[AuditEntry]
    has_more: bool
    last_id: int | None
    limit: int


# -- ingest --------------------------------------------------------------------------------
class EventResult(_Closed):
    index: int = Field(description="the event's place in the request's `events`")
    event_id: str | None = Field(None, description="absent when the event is not a JSON object")
    status: Literal["accepted", "rejected"]
    reason: str | None = Field(None, description="rejected only: why")
    code: Literal[413] | None = Field(None, description="413: larger than the MES database can store")


class IngestResult(_Closed):
    """200: every event accepted; 207: some rejected; 413: every event too large."""

    accepted: int
    rejected: int
    stored_in: Literal["queued", "spooled"] | None = Field(
        description="`queued` (pushed to Redis), `spooled` (fsynced to the API's spool), "
        "or null when nothing was accepted"
    )
    results: list[EventResult]


# -- operations ----------------------------------------------------------------------------
class Health(_Closed):
    status: Literal["ok"]
    version: str


class Ready(_Closed):
    status: Literal["ready"]
    checks: dict[str, Literal["ok"]]


class NotReady(_Closed):
    """What is down, never why (that goes to the log: ``readiness_check_failed``)."""

    status: Literal["unavailable"]
    down: list[str]
    checks: dict[str, Literal["ok", "unavailable"]]
