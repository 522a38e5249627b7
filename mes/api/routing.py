"""What the routes share: the route classes, the limits of what a caller may ask, and the
parameters several routes declare.

``RenderedRoute`` renders an endpoint's dict itself (see ``_rendered``);
``ConversationRoute`` matches a conversation id on the path as the client sent it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import unquote

from fastapi import Path, Query
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.routing import Match

from mes.api.deps import JSONResponse

__all__ = [
    "MAX_LIST",
    "MAX_MESSAGES",
    "MAX_OFFSET",
    "MAX_USER_ID",
    "After",
    "ConversationId",
    "ConversationRoute",
    "Model",
    "RenderedRoute",
    "Since",
    "Until",
    "UserId",
]

MAX_LIST = 100
MAX_MESSAGES = 1000
MAX_OFFSET = 1_000_000
MAX_USER_ID = 2_147_483_647

UserId = Annotated[int | None, Query(ge=0, le=MAX_USER_ID, description="admins: whose history")]
ConversationId = Annotated[
    str, Path(max_length=191, description="the gateway's conversation id, percent-encoded (`/` as `%2F`)")
]
Since = Annotated[str | None, Query(description="from this time: unix seconds or ISO 8601")]
Until = Annotated[str | None, Query(description="before this time: unix seconds or ISO 8601")]
Model = Annotated[str | None, Query(max_length=191, description="only conversations that used this model")]
After = Annotated[str | None, Query(max_length=191, description="cursor: the last id of the previous page")]


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


class RenderedRoute(APIRoute):
    """Every route of the router renders its own answer (see ``_rendered``)."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, _rendered(endpoint), **kwargs)


_CONVERSATIONS = "/api/v1/conversations/"
_SUFFIXES = ("/errors",)  # what follows an id in a route: never the end of an id sent raw


class ConversationRoute(RenderedRoute):
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
    refuses with a 400 rather than reading another id (U+FFFD) into them.

    Such a route takes any path under the prefix: its router is included after the other
    read routes (``mes.api.app``), the ``/errors`` route first in it."""

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
