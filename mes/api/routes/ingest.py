"""``POST /api/v1/events``: any gateway that speaks HTTP can record events.

The body is ``{"events": [event, ...]}`` (v1 events, see ``schemas/CONTRACT.md``;
``event_id``, ``schema_version`` and ``occurred_at`` may be left out and are filled in).
Each event is checked on its own: the answer lists, per event, ``accepted`` or
``rejected`` with the reason, so one bad event does not fail the others (200 when all
are accepted, 207 otherwise). An event larger than the MES database can store (MES's
limit, or less: MySQL's ``max_allowed_packet``) is rejected with ``"code": 413``; when
every event is, the answer is 413. Accepted events are durable before the answer: pushed to
Redis, or written and fsynced to the API's spool when Redis refuses (re-sent later).
A user's token records only that user's events; admins and the operator key record any.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from mes.api.auth import Principal
from mes.api.deps import Caller, JSONResponse, services_of
from mes.api.models import ErrorBody, IngestResult
from mes.api.openapi import AUTH_STATUSES, responses, secured
from mes.api.params import ApiError
from mes.errors import InvalidEvent
from mes.log import get_logger
from mes.schemas import decode_event, new_event_id
from mes.schemas.limits import CONTRACT_LIMIT, EventTooLarge, SizeLimit
from mes.storage.engine import event_limit

__all__ = ["prepare_events", "router"]

log = get_logger("mes.api.ingest")

_BODY_SCHEMA = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["events"],
                "properties": {
                    "events": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "description": "a v1 event (schemas/event.v1.schema.json)",
                        },
                    }
                },
            }
        }
    },
}


def prepare_events(
    events: list[Any], caller: Principal, now_ms: int, *, limit: SizeLimit = CONTRACT_LIMIT
) -> tuple[list[bytes], list[dict[str, Any]]]:
    """Check each event; returns the accepted ones serialized, and a result per event.
    An event larger than ``limit`` (what the database takes) is rejected with ``code`` 413."""
    accepted: list[bytes] = []
    results: list[dict[str, Any]] = []
    for index, event in enumerate(events):
        result: dict[str, Any] = {"index": index}
        if not isinstance(event, dict):
            result.update(
                status="rejected", reason=f"an event must be a JSON object, got {type(event).__name__}"
            )
            results.append(result)
            continue
        event = {"schema_version": 1, **event}
        event.setdefault("event_id", new_event_id())
        if event.get("occurred_at") is None:
            event["occurred_at"] = now_ms
        result["event_id"] = event["event_id"]
        try:
            data = orjson.dumps(event)
            decode_event(data, limit=limit)  # exactly the check the worker makes
        except EventTooLarge as exc:
            result.update(status="rejected", reason=exc.reason, code=413)
        except InvalidEvent as exc:
            result.update(status="rejected", reason=exc.reason)
        except (TypeError, orjson.JSONEncodeError) as exc:
            result.update(status="rejected", reason=f"cannot be encoded as JSON: {exc}")
        else:
            user = event.get("user_id")
            if not caller.is_admin and user != caller.user_id:
                result.update(
                    status="rejected",
                    reason=f"user_id {user!r} is not the token's user: a token records only its own user's events",
                )
            else:
                result["status"] = "accepted"
                accepted.append(data)
        results.append(result)
    return accepted, results


def _parse(body: bytes | bytearray) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None


def router() -> APIRouter:
    router = APIRouter()

    @router.post(
        "/api/v1/events",
        tags=["ingest"],
        response_model=IngestResult,
        responses=responses(
            *AUTH_STATUSES,
            s207={
                "model": IngestResult,
                "description": "Some events rejected: `results` says which and why.",
            },
            s413={
                "model": ErrorBody | IngestResult,
                "description": "The body is too large (an error), or every event is larger than the MES "
                "database can store (the per-event results, each with `code` 413).",
            },
        ),
        openapi_extra=secured(requestBody=_BODY_SCHEMA),
    )
    async def ingest(request: Request, caller: Caller) -> JSONResponse:
        """Record a batch of events; per-event results (207 when some are rejected)."""
        svc = services_of(request)
        limits = svc.settings.api
        if svc.producer is None:
            raise ApiError(503, "ingest needs a queue: this MES has no REDIS_CONN_STRING", "unavailable")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.ingest_max_bytes:
            raise ApiError(413, f"the body is larger than {limits.ingest_max_bytes} bytes", "too_large")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.ingest_max_bytes:
                raise ApiError(413, f"the body is larger than {limits.ingest_max_bytes} bytes", "too_large")
        # Parsing and checking a body of megabytes takes CPU for as long as it is large:
        # in the thread pool, so the event loop keeps serving every other request.
        payload = await run_in_threadpool(_parse, body)
        events = payload.get("events") if isinstance(payload, dict) else None
        if not isinstance(events, list):
            raise ApiError(400, 'the body must be {"events": [event, ...]}')
        if len(events) > limits.ingest_max_events:
            raise ApiError(
                413, f"{len(events)} events: at most {limits.ingest_max_events} per request", "too_large"
            )
        limit = await run_in_threadpool(event_limit, svc.reader.storage.engine)  # cached: asks rarely
        accepted, results = await run_in_threadpool(
            prepare_events, events, caller, int(time.time() * 1000), limit=limit
        )
        durable = None
        if accepted:
            try:
                durable = await run_in_threadpool(svc.producer.send_now, accepted)
            except OSError as exc:
                log.error("ingest_not_durable", events=len(accepted), error=str(exc))
                raise ApiError(
                    503, "cannot store events now (queue and spool unavailable); retry", "unavailable"
                ) from None
        n_ok = len(accepted)
        body_out = {
            "accepted": n_ok,
            "rejected": len(results) - n_ok,
            "stored_in": durable,
            "results": results,
        }
        too_large = not n_ok and all(r.get("code") == 413 for r in results)
        status = 200 if n_ok == len(results) else 413 if too_large else 207
        return JSONResponse(body_out, status_code=status)

    return router
