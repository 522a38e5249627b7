"""What every route depends on: the app's services and the authenticated caller."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import orjson
from fastapi import Depends, Header, Request
from fastapi import responses as _responses

from mes.api.auth import Principal

if TYPE_CHECKING:
    from mes.api.services import Services

__all__ = ["Caller", "JSONResponse", "principal", "services_of"]


def services_of(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def principal(
    request: Request,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    new_api_user: Annotated[str | None, Header(alias="New-Api-User", include_in_schema=False)] = None,
) -> Principal:
    """The caller. Its headers are described as security schemes (``openapi.SECURITY_SCHEMES``),
    not as parameters: OpenAPI ignores a parameter named ``Authorization``."""
    return services_of(request).auth.authenticate(authorization, new_api_user)


Caller = Annotated[Principal, Depends(principal)]


class JSONResponse(_responses.JSONResponse):
    """JSON rendered by orjson (fast, and it keeps non-ASCII text as UTF-8). A subclass of
    FastAPI's, so that the OpenAPI description types a route's answer by its
    ``response_model`` (for any other class, FastAPI calls a 200 a string)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
