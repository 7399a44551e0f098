"""``create_app(settings)``: the FastAPI app. Its lifespan builds the Services and closes them."""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import anyio
from fastapi import FastAPI

from townsquare import __version__
from townsquare.api import errors, openapi
from townsquare.api.middleware import RequestContextMiddleware
from townsquare.api.router import router
from townsquare.observability import Metrics
from townsquare.safety.moderation import EmbeddedModerator
from townsquare.services import Services
from townsquare.settings import Settings
from townsquare.web.routes import mount as mount_web

log = logging.getLogger("townsquare.app")


def _reconcile(services: Services) -> None:
    """Bring the search indexes in line with the tables once at start-up: a batch committed
    just before a crash (never indexed), or metadata from before an upgrade, is repaired."""
    if not services.settings.search.index_on_ingest:
        return
    try:
        counts = services.indexer.sync_all()
    except Exception:  # the server keeps serving; `townsquare index rebuild` repairs too
        log.exception("could not reconcile the search indexes at start-up")
        return
    repaired = {c: n for c, n in counts.items() if n["indexed"] or n["updated"] or n["removed"]}
    if repaired:
        log.info("search indexes reconciled at start-up", extra={"repaired": repaired})


def create_app(settings: Settings | None = None, *, services: Services | None = None) -> FastAPI:
    """Build the app. Given ``services``, the app uses them and leaves closing them to the
    caller (tests, embedding); otherwise it builds its own at start-up and closes them at exit."""
    settings = services.settings if services is not None else (settings or Settings())
    # Metrics must exist before the middleware is built; the services adopt them.
    metrics = services.metrics if services is not None else Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # every blocking call (plain-def routes, run_in_threadpool, to_thread) shares this
        # bound; the database pool is sized from it (Settings.resolved_pool_size)
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.server.threads
        if services is not None:
            services.start_background(app)
            try:
                yield
            finally:
                await services.stop_background()
            return
        built = await anyio.to_thread.run_sync(partial(Services.build, settings, metrics=metrics))
        app.state.services = built
        # the watermark key agrees with the other replicas' (or this replica refuses to start)
        await anyio.to_thread.run_sync(built.provenance)
        if isinstance(built.moderator, EmbeddedModerator):  # before the first request, not in it
            await anyio.to_thread.run_sync(built.moderator.warm)
        # The models and libraries loaded above are about half a million long-lived objects: a
        # full garbage collection over them stops every thread for ~250 ms (bench/load.py's
        # p99). Freezing them leaves the collector only what requests allocate.
        gc.collect()
        gc.freeze()
        reconcile = threading.Thread(
            target=_reconcile, args=(built,), name="index-reconcile", daemon=True
        )
        reconcile.start()
        built.start_background(app)
        try:
            yield
        finally:
            await built.stop_background()
            await built.aclose()

    app = FastAPI(
        title="townsquare",
        version=__version__,
        description="A self-hostable AI layer for social, community and marketplace apps.",
        lifespan=lifespan,
        # /docs is served by the web pages from the installed Swagger UI (no CDN); ReDoc has
        # no offline bundle, so it is off
        docs_url=None,
        redoc_url=None,
    )
    if services is not None:
        app.state.services = services
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics,
        max_body_bytes=settings.limits.max_body_bytes,
        content_security_policy=settings.server.content_security_policy,
        upload_limits={
            "/api/provenance/detect": (
                settings.watermark.max_upload_bytes,
                "watermark.max_upload_bytes",
            ),
            # the image and a mask, each within the upload limit
            "/v1/images/edits": (
                2 * settings.watermark.max_upload_bytes + 65_536,
                "watermark.max_upload_bytes",
            ),
        },
    )
    errors.install(app)
    openapi.install(app)
    app.include_router(router)
    mount_web(app)
    return app
