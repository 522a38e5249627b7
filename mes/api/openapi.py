"""The OpenAPI description: the statuses each route answers, and how callers authenticate.

The routes declare their answers with ``responses(...)`` and ``secured(...)``; ``install``
finishes the document FastAPI builds: the security schemes, and no ``422``. FastAPI adds a
``422`` to every route with parameters, but MES answers a request it cannot parse with a
``400`` (``handlers.install_error_handlers``), so the ``422`` would be a status no route returns.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from mes.api.models import ErrorBody

__all__ = ["AUTH_STATUSES", "SECURITY_SCHEMES", "install", "responses", "secured"]

# New API's three ways in (see ``auth``): a token or the operator key as a Bearer
# credential, or a management access token with the user it belongs to. One security
# requirement is one way in: the access token counts only with ``New-Api-User``.
SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "`Authorization: Bearer sk-…`: a New API token (New API's `sk-<key>-<channel>` "
        "form and old 32-character One API keys work), or the operator key `MES_API_KEY`.",
    },
    "accessToken": {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": "New API's management access token (with or without `Bearer `); "
        "it counts only with `New-Api-User`.",
    },
    "newApiUser": {
        "type": "apiKey",
        "in": "header",
        "name": "New-Api-User",
        "description": "with an access token: the id of the user it belongs to.",
    },
}
_WAYS_IN: list[dict[str, list[str]]] = [{"bearer": []}, {"accessToken": [], "newApiUser": []}]

_DESCRIPTIONS = {
    400: "The request is invalid (a parameter, a cursor, an id, the body): `error.message` says which.",
    401: "No credential, or one that is not let in.",
    403: "A user naming another user's history (only admins may).",
    404: "No such conversation for this caller: another user's answers exactly as one that does not exist.",
    409: "An admin without `user_id`, and several users have a conversation with this id: pass `user_id`.",
    413: "The body is larger than `MES_INGEST_MAX_BYTES`, or holds more than `MES_INGEST_MAX_EVENTS` events.",
    429: "Too many unknown credentials to check right now: retry after `Retry-After` seconds.",
    503: "A database MES needs (its own, or New API's to check credentials) or the queue is unavailable.",
}
_HEADERS = {
    401: {"WWW-Authenticate": {"required": True, "schema": {"type": "string", "const": "Bearer"}}},
    429: {"Retry-After": {"required": True, "schema": {"type": "string"}}},
}
AUTH_STATUSES = (400, 401, 429, 503)  # what any authenticated route may answer


def responses(*statuses: int, **override: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses=`` for these error statuses (the error body, its description and
    headers), plus ``override``: ``s413={...}`` replaces what ``413`` would be."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        out[status] = {"model": ErrorBody, "description": _DESCRIPTIONS[status]}
        if status in _HEADERS:
            out[status]["headers"] = _HEADERS[status]
    for key, value in override.items():
        out[int(key.removeprefix("s"))] = value
    return out


def secured(**extra: Any) -> dict[str, Any]:
    """FastAPI ``openapi_extra=`` for a route that needs credentials."""
    return {"security": _WAYS_IN, **extra}


def install(app: FastAPI) -> None:
    """Finish ``app``'s OpenAPI document when it is first built (it is cached after)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _finish(build())
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def _finish(document: dict[str, Any]) -> None:
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            answers = operation.get("responses", {})
            answers.pop("422", None)
            operation["responses"] = dict(sorted(answers.items()))
    components = document.setdefault("components", {})
    schemas = components.get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    components["securitySchemes"] = SECURITY_SCHEMES
