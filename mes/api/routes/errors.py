"""``GET /api/v1/errors``: the caller's failed requests (a conversation's own are in
``conversations``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from mes.api import models as m
from mes.api.deps import Caller, services_of
from mes.api.openapi import AUTH_STATUSES, responses, secured
from mes.api.params import ApiError, check_text, parse_time_ms, scope_user
from mes.api.routes.audit import record_access
from mes.api.routing import MAX_LIST, After, Model, RenderedRoute, Since, Until, UserId
from mes.reader import BadCursor

__all__ = ["router"]


def router() -> APIRouter:
    router = APIRouter(route_class=RenderedRoute)

    @router.get(
        "/api/v1/errors",
        tags=["errors"],
        response_model=m.ErrorList,
        responses=responses(*AUTH_STATUSES, 403),
        openapi_extra=secured(),
    )
    def list_errors(
        request: Request,
        caller: Caller,
        limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 20,
        offset: Annotated[int, Query(ge=0, le=10_000)] = 0,
        after: After = None,
        model: Model = None,
        since: Since = None,
        until: Until = None,
        user_id: UserId = None,
    ) -> dict[str, Any]:
        """The caller's failed requests (the error and the messages sent), newest first."""
        svc = services_of(request)
        uid = scope_user(caller, user_id)
        assert uid is not None
        cursor, wanted = check_text("after", after), check_text("model", model)
        since_ms, until_ms = parse_time_ms("since", since), parse_time_ms("until", until)
        record_access(request, caller, uid, action="read", resource="errors")  # another user's: audited
        try:
            page = svc.reader.get_user_errors(
                uid, limit, offset, after=cursor, model=wanted, since_ms=since_ms, until_ms=until_ms
            )
        except BadCursor as exc:
            raise ApiError(400, str(exc), "bad_cursor") from None
        return {"object": "list", "errors": page.items, "first_id": page.first_id, "last_id": page.last_id,
                "has_more": page.has_more, "limit": limit, "offset": offset, "user_id": uid}  # fmt: skip

    return router
