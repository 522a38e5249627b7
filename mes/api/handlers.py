"""How the API answers what goes wrong: ``{"error": {"message", "type", "code"}}``.

A request MES will not serve gets a 4xx; a database that is down gets a 503 with the
same shape. Nothing a caller sends produces a 500.
"""

from __future__ import annotations

import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from mes.api.auth import AuthError
from mes.api.deps import JSONResponse
from mes.api.params import ApiError
from mes.errors import MESError
from mes.log import get_logger

__all__ = ["error_response", "install_error_handlers"]

log = get_logger("mes.api")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 409: "conflict_error",
          413: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable"}  # fmt: skip


def error_response(status: int, message: str, code: str | None = None, **headers: str) -> JSONResponse:
    body = {
        "error": {"message": message, "type": _TYPES.get(status, "api_error"), "code": code or str(status)}
    }
    return JSONResponse(body, status_code=status, headers=headers or None)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "path", "header", "body"))
        parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
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
