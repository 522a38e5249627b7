"""The HTTP API: the seed's four routes, error history, health and metrics.

Every answer is JSON. A request MES will not serve gets a 4xx with
``{"error": {"message", "type", "code"}}``; a database that is down gets a 503 with the
same shape. Nothing a caller sends produces a 500.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import inspect
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any
from urllib.parse import unquote

import structlog
from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from mes import __version__
from mes.api import docs, openapi
from mes.api import models as m
from mes.api.auth import AuthError, Principal
from mes.api.deps import Caller, JSONResponse
from mes.api.deps import services_of as _svc
from mes.api.openapi import AUTH_STATUSES, responses, secured
from mes.api.params import ApiError, check_text, parse_day, parse_time_ms, scope_user
from mes.api.services import Services
from mes.config.settings import Settings
from mes.errors import MESError
from mes.log import get_logger
from mes.metrics import observe_api_request, register_queue_collector
from mes.reader import BadCursor
from mes.storage.delete import delete_conversation as delete_user_conversation

__all__ = ["create_app"]

log = get_logger("mes.api")

MAX_LIST = 100
MAX_MESSAGES = 1000
MAX_OFFSET = 1_000_000
MAX_USER_ID = 2_147_483_647

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 409: "conflict_error",
          413: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable"}  # fmt: skip


def error_response(status: int, message: str, code: str | None = None, **headers: str) -> JSONResponse:
    body = {
        "error": {"message": message, "type": _TYPES.get(status, "api_error"), "code": code or str(status)}
    }
    return JSONResponse(body, status_code=status, headers=headers or None)


def create_app(settings: Settings | None = None, *, services: Services | None = None) -> FastAPI:
    """The ASGI app. With ``services`` (tests, embedding) nothing is opened or closed here."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        opened = services is None
        svc = services or Services.open(settings or Settings.from_env())
        app.state.services = svc
        if svc.redis is not None:
            from mes.queue import queue_figures

            register_queue_collector(lambda: queue_figures(svc.redis, svc.settings.queue.queue_name))
        if opened:
            # Start-up built what lives as long as the process, a year of daily tables'
            # metadata among it: out of the collector's sight, a full collection no longer
            # walks it (with 365 days of tables, such pauses were the slowest requests).
            gc.freeze()
        try:
            yield
        finally:
            if opened:
                svc.close()

    app = FastAPI(
        title="MES",
        version=__version__,
        summary="Chat history of an LLM API gateway (New API / One API)",
        default_response_class=JSONResponse,
        lifespan=lifespan,
        docs_url=None,  # served offline instead: see docs.install
        redoc_url=None,
    )
    if services is not None:
        app.state.services = services  # usable without running the lifespan
    _install_error_handlers(app)
    _install_metrics(app)
    app.include_router(_routes())
    from mes.api.ingest import ingest_router

    app.include_router(ingest_router())
    openapi.install(app)
    docs.install(app)
    return app


# -- errors --------------------------------------------------------------------------------
def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "path", "header", "body"))
        parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_r: Request, exc: ApiError) -> Response:
        return error_response(exc.status, exc.message, exc.code)

    @app.exception_handler(AuthError)
    async def _auth_error(_r: Request, exc: AuthError) -> Response:
        if exc.status == 401:
            return error_response(401, str(exc), "invalid_api_key", **{"WWW-Authenticate": "Bearer"})
        if exc.status == 429:
            return error_response(429, str(exc), "rate_limited", **{"Retry-After": "1"})
        return error_response(exc.status, str(exc), "unavailable")

    @app.exception_handler(RequestValidationError)
    async def _validation(_r: Request, exc: RequestValidationError) -> Response:
        return error_response(400, _describe_validation(exc), "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, exc: StarletteHTTPException) -> Response:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(DBAPIError)
    async def _database(_r: Request, exc: DBAPIError) -> Response:
        log.error("database_error", error=str(exc).splitlines()[0][:300])
        return error_response(503, "the history database is unavailable; try again shortly", "unavailable")

    @app.exception_handler(MESError)
    async def _mes(_r: Request, exc: MESError) -> Response:
        # mes.errors maps each class to its status; a 5xx's text may name hosts: not shown
        if exc.http_status >= 500:
            log.error("mes_error", error=str(exc)[:300], error_type=type(exc).__name__)
            return error_response(exc.http_status, "MES is unavailable; try again shortly", "unavailable")
        code = re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()  # BadCursor: bad_cursor
        return error_response(exc.http_status, str(exc)[:500], code)


class _Observe:
    """Plain ASGI middleware (cheaper than ``BaseHTTPMiddleware``): latency by route for
    Prometheus (labels from a bounded set: see ``observe_api_request``), and a request id
    bound to every log line of the request and returned as ``X-Request-ID`` (the
    caller's, if it sent a sane one)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]
        given = next((v for k, v in scope.get("headers", ()) if k == b"x-request-id"), b"").decode("latin-1")
        request_id = given if 0 < len(given) <= 64 and given.isprintable() else uuid.uuid4().hex[:16]
        structlog.contextvars.bind_contextvars(request_id=request_id)

        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            structlog.contextvars.unbind_contextvars("request_id")
            route = scope.get("route")  # the template, never the path (an id is not a label)
            template = getattr(route, "path_format", None) or getattr(route, "path", None)
            observe_api_request(scope.get("method", ""), template, status[0], time.perf_counter() - start)


def _install_metrics(app: FastAPI) -> None:
    app.add_middleware(_Observe)


# -- routes --------------------------------------------------------------------------------
UserId = Annotated[int | None, Query(ge=0, le=MAX_USER_ID, description="admins: whose history")]
ConversationId = Annotated[
    str, Path(max_length=191, description="the gateway's conversation id, percent-encoded (`/` as `%2F`)")
]
Since = Annotated[str | None, Query(description="from this time: unix seconds or ISO 8601")]
Until = Annotated[str | None, Query(description="before this time: unix seconds or ISO 8601")]
Model = Annotated[str | None, Query(max_length=191, description="only conversations that used this model")]
After = Annotated[str | None, Query(max_length=191, description="cursor: the last id of the previous page")]


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


def _described(exc: BaseException) -> str:
    """An exception in one line for the log (some have no message, some have many lines)."""
    lines = str(exc).splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


def _not_found() -> ApiError:
    return ApiError(404, "conversation not found", "not_found")


def _rendered(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """The endpoint, returning its dict as a rendered ``JSONResponse`` (a ``Response`` as is).

    FastAPI would otherwise validate and re-serialize the dict against the route's
    ``response_model`` (there for the OpenAPI description: see ``models``), in a second trip
    through the thread pool for a plain ``def`` route, walking every message and day of
    the answer in Python: a cost that grows with the answer, which orjson renders in C."""
    if inspect.iscoroutinefunction(endpoint):
        return endpoint

    @functools.wraps(endpoint)
    def run(*args: Any, **kwargs: Any) -> Any:
        out = endpoint(*args, **kwargs)
        return out if isinstance(out, Response) else JSONResponse(out)

    return run


class _RenderedRoute(APIRoute):
    """Every route of the router renders its own answer (see ``_rendered``)."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, _rendered(endpoint), **kwargs)


_CONVERSATIONS = "/api/v1/conversations/"
_SUFFIXES = ("/errors",)  # what follows an id in a route: never the end of an id sent raw


class _ConversationRoute(_RenderedRoute):
    """A route ``/api/v1/conversations/{conversation_id:path}[/errors]``, matched on the
    path as the client sent it (``raw_path``), so that an id may hold any character.

    Servers decode ``%2F`` to ``/`` before routing (Starlette's test client even decodes
    twice), so on the decoded path ``x%2Ferrors`` would read as the errors of ``x``. On
    the raw path the rule is: the id is everything after ``/api/v1/conversations/``,
    percent-decoded, except that a raw path ending in a literal ``/errors`` is the errors
    route of the id before it (GET; other methods get 405). An id that itself ends in
    ``/errors`` sends that slash encoded, as any client that encodes the id as one path
    segment does; an unencoded ``/`` elsewhere is part of the id. (A ``.`` or ``..``
    segment sent raw is rewritten by the client's own URL library: encode dots as
    ``%2E`` there.) Without a usable ``raw_path``, the same rule runs on the decoded path.
    Invalid UTF-8 in the escapes decodes to lone surrogates, which ``check_text``
    refuses with a 400 rather than reading another id (U+FFFD) into them."""

    def matches(self, scope: Any) -> tuple[Match, Any]:
        raw = _raw_path(scope)
        if raw is None:
            return self._checked(*super().matches(scope), decode=False)
        return self._checked(*super().matches({**scope, "path": raw}), decode=True)

    def _checked(self, match: Match, child: Any, *, decode: bool) -> tuple[Match, Any]:
        if match is Match.NONE:
            return match, child
        sent = child["path_params"]["conversation_id"]
        if not sent or (self.path.endswith("}") and sent.endswith(_SUFFIXES)):
            return Match.NONE, {}  # no id (redirect_slashes may help), or another route's path
        if decode:
            child["path_params"]["conversation_id"] = unquote(sent, errors="surrogateescape")
        return match, child


def _raw_path(scope: Any) -> str | None:
    """The request's path as sent (still percent-encoded), when it is under the
    conversations' prefix (a middleware that rewrote ``path`` leaves ``raw_path`` elsewhere)."""
    raw = scope.get("raw_path")
    if raw is None:
        return None
    text: str = raw.decode("latin-1")
    return text if text.startswith(scope.get("root_path", "") + _CONVERSATIONS) else None


def _routes() -> Any:
    from fastapi import APIRouter

    router = APIRouter(route_class=_RenderedRoute)
    ids = APIRouter(route_class=_ConversationRoute)  # the routes with an id in the path

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
        svc = _svc(request)
        uid = scope_user(caller, user_id)
        assert uid is not None
        try:
            page = svc.reader.get_user_conversations(
                uid,
                limit,
                offset,
                after=check_text("after", after),
                order=order,
                model=check_text("model", model),
                since_ms=parse_time_ms("since", since),
                until_ms=parse_time_ms("until", until),
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

    # Declared before the others: a path ending in "/errors" is this route's (see _ConversationRoute).
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
        svc = _svc(request)
        owner = _owner_of(svc, caller, conversation_id, user_id)
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
        svc = _svc(request)
        owner = _owner_of(svc, caller, conversation_id, user_id)
        if owner is None:
            raise _not_found()
        if request_id is not None:
            check_text("request", request_id)
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
        svc = _svc(request)
        owner = _owner_of(svc, caller, conversation_id, user_id)
        if owner is None or not delete_user_conversation(svc.reader.storage, owner, conversation_id):
            raise _not_found()
        log.info("conversation_deleted", conversation_id=conversation_id, user_id=owner, by=caller.user_id)
        return {"message": "conversation deleted", "conversation_id": conversation_id, "deleted": True}

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
        svc = _svc(request)
        uid = scope_user(caller, user_id)
        assert uid is not None
        try:
            page = svc.reader.get_user_errors(
                uid,
                limit,
                offset,
                after=check_text("after", after),
                model=check_text("model", model),
                since_ms=parse_time_ms("since", since),
                until_ms=parse_time_ms("until", until),
            )
        except BadCursor as exc:
            raise ApiError(400, str(exc), "bad_cursor") from None
        return {"object": "list", "errors": page.items, "first_id": page.first_id, "last_id": page.last_id,
                "has_more": page.has_more, "limit": limit, "offset": offset, "user_id": uid}  # fmt: skip

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
        svc = _svc(request)
        uid = scope_user(caller, user_id)
        assert uid is not None
        result = svc.reader.get_conversation_stats(
            uid, since=parse_day("since", since), until=parse_day("until", until)
        )
        return {**result, "user_id": uid}

    @router.get("/healthz", tags=["operations"], response_model=m.Health)
    def healthz() -> dict[str, Any]:
        """The process answers (liveness)."""
        return {"status": "ok", "version": __version__}

    @router.get(
        "/readyz",
        tags=["operations"],
        response_model=m.Ready,
        responses={503: {"model": m.NotReady, "description": "What is down (never why)."}},
    )
    def readyz(request: Request) -> Response:
        """The database (and Redis, when configured) answer (readiness): 200, or 503 with
        ``{"status": "unavailable", "down": [...]}`` naming what is down. The route needs no
        credentials, so the answer never holds the error itself (a driver's message names
        hosts, ports and users): that goes to the log, ``readiness_check_failed``."""
        svc = _svc(request)
        checks: dict[str, str] = {}
        try:
            with svc.reader.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # any failure means "not ready"; what it was goes to the log
            log.warning("readiness_check_failed", dependency="database", error=_described(exc))
            checks["database"] = "unavailable"
        if svc.redis is not None:
            try:
                svc.redis.ping()
                checks["redis"] = "ok"
            except Exception as exc:
                log.warning("readiness_check_failed", dependency="redis", error=_described(exc))
                checks["redis"] = "unavailable"
        down = [name for name, state in checks.items() if state != "ok"]
        if down:
            return JSONResponse({"status": "unavailable", "down": down, "checks": checks}, status_code=503)
        return JSONResponse({"status": "ready", "checks": checks})

    @router.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    def metrics() -> Response:
        """Prometheus metrics."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    router.include_router(ids)
    return router
