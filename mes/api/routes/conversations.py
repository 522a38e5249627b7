"""The conversations: the caller's list, and one conversation (its transcript, one
request's context, its failed requests, deleting it).

Another user's history (an admin's, the operator key's) is audited once its user is
known, before it is read or deleted (``routes.audit.record_access``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from mes.api import models as m
from mes.api.auth import Principal
from mes.api.deps import Caller, services_of
from mes.api.openapi import AUTH_STATUSES, responses, secured
from mes.api.params import ApiError, check_text, parse_time_ms, scope_user
from mes.api.routes.audit import record_access
from mes.api.routing import (
    MAX_LIST,
    MAX_MESSAGES,
    MAX_OFFSET,
    After,
    ConversationId,
    ConversationRoute,
    Model,
    RenderedRoute,
    Since,
    Until,
    UserId,
)
from mes.api.services import Services
from mes.log import get_logger
from mes.reader import BadCursor
from mes.storage.delete import delete_conversation as delete_user_conversation

__all__ = ["id_router", "list_router"]

log = get_logger("mes.api")


def _owner_of(svc: Services, caller: Principal, conversation_id: str, user_id: int | None) -> int | None:
    """The user whose conversation a call addresses, or None when there is none to see."""
    check_text("conversation_id", conversation_id)
    if user_id is not None:
        return scope_user(caller, user_id)
    if not caller.is_admin:
        return caller.user_id
    # an admin without user_id: whoever has this conversation, if it is one user
    rows = svc.reader.find_conversations(conversation_id, None)
    if len(rows) > 1:
        raise ApiError(409, f"{len(rows)} users have a conversation with this id: pass user_id", "ambiguous")
    return int(rows[0].user_id) if rows else None


def _not_found() -> ApiError:
    return ApiError(404, "conversation not found", "not_found")


def list_router() -> APIRouter:
    """``GET /api/v1/conversations``."""
    router = APIRouter(route_class=RenderedRoute)

    @router.get(
        "/api/v1/conversations",
        tags=["history"],
        response_model=m.ConversationList,
        responses=responses(*AUTH_STATUSES, 403),
        openapi_extra=secured(),
    )
    def list_conversations(
        request: Request,
        caller: Caller,
        limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 20,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
        after: After = None,
        order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
        model: Model = None,
        since: Since = None,
        until: Until = None,
        user_id: UserId = None,
    ) -> dict[str, Any]:
        """The caller's conversations by last activity, newest first (`order=asc`: oldest)."""
        svc = services_of(request)
        uid = scope_user(caller, user_id)
        assert uid is not None
        cursor, wanted = check_text("after", after), check_text("model", model)
        since_ms, until_ms = parse_time_ms("since", since), parse_time_ms("until", until)
        record_access(request, caller, uid, action="read", resource="conversations")
        try:
            page = svc.reader.get_user_conversations(
                uid,
                limit,
                offset,
                after=cursor,
                order=order,
                model=wanted,
                since_ms=since_ms,
                until_ms=until_ms,
            )
        except BadCursor as exc:
            raise ApiError(400, str(exc), "bad_cursor") from None
        return {
            "object": "list",
            "conversations": page.items,
            "first_id": page.first_id,
            "last_id": page.last_id,
            "has_more": page.has_more,
            "limit": limit,
            "offset": offset,
            "user_id": uid,
        }

    return router


def id_router() -> APIRouter:
    """The routes with a conversation id in the path (``ConversationRoute``): included
    after the other read routes, since they take any path under the prefix."""
    ids = APIRouter(route_class=ConversationRoute)

    # Declared before the others: a path ending in "/errors" is this route's (see ConversationRoute).
    @ids.get(
        "/api/v1/conversations/{conversation_id:path}/errors",
        tags=["errors"],
        response_model=m.ConversationErrors,
        responses=responses(*AUTH_STATUSES, 403, 404, 409),
        openapi_extra=secured(),
    )
    def conversation_errors(
        request: Request,
        caller: Caller,
        conversation_id: ConversationId,
        limit: Annotated[int, Query(ge=1, le=MAX_MESSAGES)] = 100,
        user_id: UserId = None,
    ) -> dict[str, Any]:
        """The conversation's failed requests, newest first."""
        svc = services_of(request)
        owner = _owner_of(svc, caller, conversation_id, user_id)
        if owner is not None:
            record_access(request, caller, owner, action="read", resource=f"conversation:{conversation_id}",
                          detail={"view": "errors"})  # fmt: skip
        errors = (
            svc.reader.get_conversation_errors(conversation_id, user_id=owner, limit=limit)
            if owner is not None
            else None
        )
        if errors is None:
            raise _not_found()
        return {"object": "list", "conversation_id": conversation_id, "errors": errors}

    @ids.get(
        "/api/v1/conversations/{conversation_id:path}",
        tags=["history"],
        response_model=m.ConversationOrRequest,
        responses=responses(*AUTH_STATUSES, 403, 404, 409),
        openapi_extra=secured(),
    )
    def get_conversation(
        request: Request,
        caller: Caller,
        conversation_id: ConversationId,
        limit: Annotated[int, Query(ge=1, le=MAX_MESSAGES)] = 50,
        user_id: UserId = None,
        request_id: Annotated[
            str | None,
            Query(
                alias="request",
                min_length=1,
                max_length=64,
                description="an answer's `event_id`: the exact messages that request sent, then its answer",
            ),
        ] = None,
    ) -> dict[str, Any]:
        """The conversation's transcript (each message once, in conversation order), its
        latest `limit` messages, in OpenAI format; with `request`, one request's exact context."""
        svc = services_of(request)
        owner = _owner_of(svc, caller, conversation_id, user_id)
        if owner is None:
            raise _not_found()
        check_text("request", request_id)
        view = None if request_id is None else {"view": "request", "request": request_id}
        record_access(request, caller, owner, action="read", resource=f"conversation:{conversation_id}",
                      detail=view)  # fmt: skip
        if request_id is not None:
            context = svc.reader.get_request_context(conversation_id, request_id, user_id=owner)
            if context is None:
                raise _not_found()
            return {"object": "conversation.request", "conversation_id": conversation_id,
                    "request": request_id, "messages": context}  # fmt: skip
        found = svc.reader.read_conversation(conversation_id, limit, user_id=owner)
        if found is None:
            raise _not_found()
        meta, messages = found
        return {"object": "conversation", "conversation_id": conversation_id, "conversation": meta,
                "messages": messages}  # fmt: skip

    @ids.delete(
        "/api/v1/conversations/{conversation_id:path}",
        tags=["history"],
        response_model=m.Deleted,
        responses=responses(*AUTH_STATUSES, 403, 404, 409),
        openapi_extra=secured(),
    )
    def delete_conversation(
        request: Request, caller: Caller, conversation_id: ConversationId, user_id: UserId = None
    ) -> dict[str, Any]:
        """Delete a conversation from every day it spans, the index and the rollups. Another
        user's conversation answers 404, exactly as one that does not exist."""
        svc = services_of(request)
        owner = _owner_of(svc, caller, conversation_id, user_id)
        if owner is not None:
            record_access(request, caller, owner, action="delete", resource=f"conversation:{conversation_id}")
        if owner is None or not delete_user_conversation(svc.reader.storage, owner, conversation_id):
            raise _not_found()
        log.info("conversation_deleted", conversation_id=conversation_id, user_id=owner, by=caller.user_id)
        return {"message": "conversation deleted", "conversation_id": conversation_id, "deleted": True}

    return ids
