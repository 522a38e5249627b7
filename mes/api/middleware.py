"""The ASGI middleware every request goes through: its latency, by route, for Prometheus,
and its request id in the logs and the answer."""

from __future__ import annotations

import time
import uuid
from typing import Any

import structlog
from fastapi import FastAPI

from mes.metrics import observe_api_request

__all__ = ["install_metrics"]


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


def install_metrics(app: FastAPI) -> None:
    app.add_middleware(_Observe)
