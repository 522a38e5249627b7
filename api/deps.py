"""What every route depends on: the app's services and the authenticated caller."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import orjson
from fastapi import Depends, Header, Request, Response

from .auth import Principal

if TYPE_CHECKING:
    from .app import Services

__all__ = ["Caller", "JSONResponse", "principal", "services_of"]


def services_of(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def principal(
    request: Request,
    authorization: Annotated[str | None, Header(description="`Bearer sk-…` (New API token), an access token, or the operator key")] = None,
    new_api_user: Annotated[str | None, Header(alias="New-Api-User", description="with an access token: its user id")] = None,
) -> Principal:  # fmt: skip
    return services_of(request).auth.authenticate(authorization, new_api_user)


Caller = Annotated[Principal, Depends(principal)]


class JSONResponse(Response):
    """JSON rendered by orjson (fast, and it keeps non-ASCII text as UTF-8)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
