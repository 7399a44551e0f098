"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from townsquare.api.deps import ServicesDep, authenticate
from townsquare.errors import Forbidden, Unauthorized

router = APIRouter(tags=["health"])


async def _guard(request: Request, services: ServicesDep) -> None:
    """Public by default; a path removed from server.public_paths needs an admin key.

    A public probe touches neither the database nor a worker thread, so it answers even when
    every thread is busy.
    """
    if request.url.path in services.settings.server.public_paths:
        return

    def lookup() -> Any:
        with services.sessions() as db:
            return authenticate(request, db)

    user = await run_in_threadpool(lookup)
    if user is None:
        raise Unauthorized(f"{request.url.path} is not public here: send an admin's API key.")
    if user.role != "admin":
        raise Forbidden(f"{request.url.path} is for admins only on this server.")


@router.get("/healthz", openapi_extra={"x-access": "public"})
async def healthz(request: Request, services: ServicesDep) -> dict[str, str]:
    """The process is up."""
    await _guard(request, services)
    return {"status": "ok"}


@router.get("/readyz", openapi_extra={"x-access": "public"})
async def readyz(request: Request, services: ServicesDep) -> JSONResponse:
    """Ready when what this pod itself needs answers: the database. The text model's health
    is reported in the body (``text_model``) and in ``townsquare_text_model_ready``, not in
    the status: a model server that is down makes generation routes answer 503 while search,
    pages and ingestion keep serving, instead of taking every replica out of the balancer."""
    await _guard(request, services)
    database = await run_in_threadpool(services.database_ok)
    model = await services.text.ready()
    services.metrics.text_model_ready.set(1 if model else 0)
    status = "ready" if database and model else "degraded" if database else "unavailable"
    return JSONResponse(
        {"status": status, "checks": {"database": database, "text_model": model}},
        200 if database else 503,
    )


@router.get(
    "/metrics",
    openapi_extra={"x-access": "public"},
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request, services: ServicesDep) -> Response:
    """Prometheus metrics of this app."""
    await _guard(request, services)
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
