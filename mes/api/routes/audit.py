"""The audit: ``GET /api/v1/audit`` lists who read or deleted another user's history, and
:func:`record_access` is how the other routes record it.

What is recorded: a call of the history routes (a conversation list, a conversation, a
request's context, a conversation's errors, the error list, the stats, a deletion) whose
user, once resolved, is not the caller's own: an admin naming someone else, or the
operator key (which has no user of its own). It is recorded once that user is known and
before anything of theirs is read or deleted, so an entry is an attempt: a read that
then answers 404 (no such conversation of that user) is recorded, as is a deletion that
found nothing. A call refused before (401, 403, a 400, a 409, or an admin's conversation
id that nobody has) names no user and records nothing. A user reading their own history
records nothing. When the entry cannot be written the call answers 503 and reads nothing:
no read goes unaudited. Reading the audit itself is not audited (it holds no history).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from mes.api import models as m
from mes.api.auth import Principal
from mes.api.deps import Caller, services_of
from mes.api.openapi import AUTH_STATUSES, responses, secured
from mes.api.params import ApiError, check_text, parse_time_ms
from mes.api.routing import MAX_LIST, RenderedRoute, Since, Until, UserId
from mes.storage import audit

__all__ = ["actor_of", "record_access", "router"]

_MAX_ID = 2**63 - 1


def actor_of(caller: Principal) -> str:
    """``operator`` for the operator key, ``user:<id>`` for anyone else."""
    return "operator" if caller.via == "operator" else f"user:{caller.user_id}"


def record_access(
    request: Request,
    caller: Principal,
    target_user_id: int,
    *,
    action: str,
    resource: str,
    detail: dict[str, Any] | None = None,
) -> None:
    """Record ``caller``'s ``action`` on ``target_user_id``'s history, unless it is the
    caller's own (then nothing). Call it before reading or deleting.

    Raises:
        DatabaseUnavailable: the entry could not be written (503): do not go on.
    """
    if caller.via != "operator" and caller.user_id == target_user_id:
        return
    audit.record(
        services_of(request).reader.storage,
        actor=actor_of(caller),
        actor_user_id=caller.user_id,
        action=action,
        target_user_id=target_user_id,
        resource=resource,
        client=request.client.host if request.client else None,
        detail=detail,
    )


def router() -> APIRouter:
    router = APIRouter(route_class=RenderedRoute)

    @router.get(
        "/api/v1/audit",
        tags=["audit"],
        response_model=m.AuditList,
        responses=responses(*AUTH_STATUSES, 403),
        openapi_extra=secured(),
    )
    def list_audit(
        request: Request,
        caller: Caller,
        user_id: UserId = None,
        actor: Annotated[
            str | None, Query(max_length=64, description="who: `user:<id>`, `operator` or `cli`")
        ] = None,
        action: Annotated[str | None, Query(pattern="^(read|delete|erase)$")] = None,
        since: Since = None,
        until: Until = None,
        after: Annotated[
            int | None, Query(ge=1, le=_MAX_ID, description="cursor: the last id of the previous page")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 50,
    ) -> dict[str, Any]:
        """Admins and the operator key: who read or deleted whose history, newest first
        (`user_id`: whose history was touched)."""
        if not caller.is_admin:
            raise ApiError(403, "only admins may read the audit", "forbidden")
        entries = audit.list_entries(
            services_of(request).reader.storage,
            target_user_id=user_id,
            actor=check_text("actor", actor),
            action=action,
            since_ms=parse_time_ms("since", since),
            until_ms=parse_time_ms("until", until),
            before_id=after,
            limit=limit + 1,
        )
        page = [{**e, "object": "audit.entry", "at": e["at_ms"] // 1000} for e in entries[:limit]]
        return {"object": "list", "entries": page, "has_more": len(entries) > limit,
                "last_id": page[-1]["id"] if page else None, "limit": limit}  # fmt: skip

    return router
