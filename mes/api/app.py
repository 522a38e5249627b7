"""The HTTP API's app: the seed's four routes, error history, ingest, health and metrics.

``create_app`` composes the services, the error handlers (``handlers``), the middleware
(``middleware``) and the routers of ``mes.api.routes``. Every answer is JSON; what goes
wrong is answered as ``handlers`` says: a 4xx or a 503, never a 500 for what a caller sends.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI

from mes import __version__
from mes.api import docs, openapi
from mes.api.deps import JSONResponse
from mes.api.handlers import install_error_handlers
from mes.api.middleware import install_metrics
from mes.api.routes import audit, conversations, errors, ingest, operations, stats, users
from mes.api.services import Services
from mes.config.settings import Settings
from mes.metrics import register_queue_collector

__all__ = ["create_app"]


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
    install_error_handlers(app)
    install_metrics(app)
    for router in _routers():
        app.include_router(router)
    openapi.install(app)
    docs.install(app)
    return app


def _routers() -> list[APIRouter]:
    """The routers, in the order requests are matched against them (and the OpenAPI
    document lists the paths): the routes with a conversation id in the path after the
    other read routes, since a ``ConversationRoute`` takes any path under
    ``/api/v1/conversations/``."""
    return [
        conversations.list_router(),
        errors.router(),
        stats.router(),
        operations.router(),
        audit.router(),
        users.router(),
        conversations.id_router(),
        ingest.router(),
    ]
