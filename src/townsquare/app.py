"""``create_app(settings)``: the FastAPI app. Its lifespan builds the Services and closes them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from townsquare import __version__
from townsquare.api import errors
from townsquare.api.middleware import RequestContextMiddleware
from townsquare.api.router import router
from townsquare.observability import Metrics
from townsquare.services import Services
from townsquare.settings import Settings
from townsquare.web.routes import mount as mount_web


def create_app(settings: Settings | None = None, *, services: Services | None = None) -> FastAPI:
    """Build the app. Given ``services``, the app uses them and leaves closing them to the
    caller (tests, embedding); otherwise it builds its own at start-up and closes them at exit."""
    settings = services.settings if services is not None else (settings or Settings())
    # Metrics must exist before the middleware is built; the services adopt them.
    metrics = services.metrics if services is not None else Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if services is not None:
            yield
            return
        built = Services.build(settings, metrics=metrics)
        app.state.services = built
        try:
            yield
        finally:
            await built.aclose()

    app = FastAPI(
        title="townsquare",
        version=__version__,
        description="A self-hostable AI layer for social, community and marketplace apps.",
        lifespan=lifespan,
    )
    if services is not None:
        app.state.services = services
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics,
        max_body_bytes=settings.limits.max_body_bytes,
        upload_limits={
            "/api/provenance/detect": (
                settings.watermark.max_upload_bytes,
                "watermark.max_upload_bytes",
            )
        },
    )
    errors.install(app)
    app.include_router(router)
    mount_web(app)
    return app
