"""What operators and orchestrators call, without credentials: ``/healthz`` (liveness),
``/readyz`` (readiness) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from mes import __version__
from mes.api import models as m
from mes.api.deps import JSONResponse, services_of
from mes.api.routing import RenderedRoute
from mes.log import get_logger

__all__ = ["router"]

log = get_logger("mes.api")


def _described(exc: BaseException) -> str:
    """An exception in one line for the log (some have no message, some have many lines)."""
    lines = str(exc).splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


def router() -> APIRouter:
    router = APIRouter(route_class=RenderedRoute)

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
        svc = services_of(request)
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

    return router
