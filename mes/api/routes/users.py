"""A user's whole history: ``DELETE /api/v1/users/{id}/history`` (erasure)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from mes.api import models as m
from mes.api.deps import Caller, services_of
from mes.api.openapi import AUTH_STATUSES, responses, secured
from mes.api.params import scope_user
from mes.api.routes.audit import record_access
from mes.api.routing import MAX_USER_ID, RenderedRoute
from mes.log import get_logger
from mes.worker.erasure import erase

__all__ = ["router"]

log = get_logger("mes.api")


def router() -> APIRouter:
    """``DELETE /api/v1/users/{user_id}/history``."""
    users = APIRouter(route_class=RenderedRoute)

    @users.delete(
        "/api/v1/users/{user_id}/history",
        tags=["history"],
        response_model=m.Erasure,
        responses=responses(*AUTH_STATUSES, 403),
        openapi_extra=secured(),
    )
    def erase_history(
        request: Request,
        caller: Caller,
        user_id: Annotated[int, Path(ge=0, le=MAX_USER_ID, description="whose history")],
        dry_run: Annotated[bool, Query(description="count what would be removed; change nothing")] = False,
    ) -> dict[str, Any]:
        """Erase a user's history (admins: anyone's; a user: their own): every day's
        history and error tables, the index, the rollups, the dead letters, their events
        waiting in Redis and in this server's spool folder. Events of theirs from before
        the erasure that arrive later are not stored. Repeating it resumes an erasure
        that was cut short. Answers what was removed."""
        svc = services_of(request)
        uid = scope_user(caller, user_id)
        assert uid is not None
        # recorded before it happens, as every audited call (routes.audit); a dry run of
        # another user reads their counts
        record_access(request, caller, uid, action="read" if dry_run else "erase", resource="user",
                      detail={"dry_run": True} if dry_run else None)  # fmt: skip
        report = erase(
            svc.reader.storage,
            uid,
            dry_run=dry_run,
            redis=svc.redis,
            queue_name=svc.settings.queue.queue_name,
            spool_dir=svc.settings.producer.spool_dir if svc.producer is not None else None,
        )
        if not dry_run:
            log.info(
                "user_erased", user_id=uid, by=caller.user_id, via=caller.via, **_counts(report.as_dict())
            )
        return {"object": "erasure", **report.as_dict()}

    return users


def _counts(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k not in ("user_id", "dry_run")}
