"""``GET /api/v1/stats/conversations``: the caller's totals by day range."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from mes.api import models as m
from mes.api.deps import Caller, services_of
from mes.api.openapi import AUTH_STATUSES, responses, secured
from mes.api.params import parse_day, scope_user
from mes.api.routes.audit import record_access
from mes.api.routing import RenderedRoute, UserId

__all__ = ["router"]


def router() -> APIRouter:
    router = APIRouter(route_class=RenderedRoute)

    @router.get(
        "/api/v1/stats/conversations",
        tags=["history"],
        response_model=m.Stats,
        responses=responses(*AUTH_STATUSES, 403),
        openapi_extra=secured(),
    )
    def stats(
        request: Request,
        caller: Caller,
        since: Annotated[str | None, Query(description="first day, YYYY-MM-DD (in MES's TZ)")] = None,
        until: Annotated[str | None, Query(description="last day, YYYY-MM-DD, inclusive")] = None,
        user_id: UserId = None,
    ) -> dict[str, Any]:
        """Totals that equal a recount of the rows: conversations, messages, tokens, models, days."""
        svc = services_of(request)
        uid = scope_user(caller, user_id)
        assert uid is not None
        first, last = parse_day("since", since), parse_day("until", until)
        record_access(request, caller, uid, action="read", resource="stats")  # another user's: audited
        result = svc.reader.get_conversation_stats(uid, since=first, until=last)
        return {**result, "user_id": uid}

    return router
