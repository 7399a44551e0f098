"""Maps exceptions to responses: OpenAI-shaped bodies on /v1, ``{"error": {code, message}}``
elsewhere. Every message says what to do next."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DataError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from townsquare.errors import (
    Busy,
    ContentBlocked,
    InvalidBatch,
    InvalidField,
    TownsquareError,
    Unauthorized,
)
from townsquare.observability import request_id_var

log = logging.getLogger("townsquare.api")

_OPENAI_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
}


def error_payload(
    path: str, status: int, code: str, message: str, *, param: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The error body for ``path``; also used for errors sent inside an SSE stream."""
    if path.startswith("/v1"):
        kind = _OPENAI_TYPES.get(
            status, "invalid_request_error" if status < 500 else "server_error"
        )
        body: dict[str, Any] = {"message": message, "type": kind, "param": param, "code": code}
    else:
        body = {"code": code, "message": message}
        if param is not None:
            body["field"] = param
    body.update(extra)
    return {"error": body}


def internal_error(path: str) -> dict[str, Any]:
    """The body of a 500: says it is our fault and gives the request id to quote."""
    message = (
        f"Something went wrong on our side (request id {request_id_var.get()}). "
        "Try again; if it keeps happening, the server log has the details."
    )
    return error_payload(path, 500, "internal_error", message)


def exception_payload(path: str, exc: TownsquareError) -> dict[str, Any]:
    """The error body for a townsquare error on ``path`` (with hazards, rows or the field to
    fix)."""
    extra: dict[str, Any] = {}
    if isinstance(exc, ContentBlocked):
        extra["hazards"] = exc.hazards
        if exc.support:
            extra["support"] = exc.support
    if isinstance(exc, InvalidBatch):
        extra["rows"] = exc.rows
    param = exc.field if isinstance(exc, InvalidField) else None
    return error_payload(path, exc.status_code, exc.code, exc.message, param=param, **extra)


def _headers(exc: TownsquareError) -> dict[str, str]:
    if isinstance(exc, Busy):
        return {"Retry-After": str(exc.retry_after)}
    if isinstance(exc, Unauthorized):
        return {"WWW-Authenticate": "Bearer"}
    return {}


def _field(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def _page(request: Request, status: int, message: str) -> Response | None:
    """The web pages' HTML answer for an error on one of their paths (None elsewhere)."""
    render = getattr(request.app.state, "html_error", None)
    return render(request, status, message) if render is not None else None


def install(app: FastAPI) -> None:
    """Register the exception handlers: townsquare errors, validation errors, HTTP errors and a
    busy database pool. On a web page's path the same errors are answered as HTML."""

    @app.exception_handler(TownsquareError)
    async def townsquare_error(request: Request, exc: TownsquareError) -> Response:
        if exc.status_code >= 500:  # the model or a dependency failed: operators must see it
            log.warning("%s %s: %s", exc.status_code, exc.code, exc.message)
        page = _page(request, exc.status_code, exc.message)
        if page is not None:
            page.headers.update(_headers(exc))
            return page
        return JSONResponse(
            exception_payload(request.url.path, exc), exc.status_code, headers=_headers(exc)
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems = []
        for error in exc.errors():
            where = _field(tuple(error.get("loc", ())))
            if error.get("type") == "json_invalid":
                problems.append(f"the body is not valid JSON ({error.get('msg')})")
            elif error.get("type") == "extra_forbidden":
                problems.append(f"{where}: unknown field, remove it")
            else:
                problems.append(f"{where}: {error.get('msg')}")
        first = _field(tuple(exc.errors()[0].get("loc", ()))) if exc.errors() else None
        message = "Fix these fields and send again: " + "; ".join(problems) + "."
        page = _page(request, 422, message)
        if page is not None:
            return page
        return JSONResponse(
            error_payload(request.url.path, 422, "invalid_field", message, param=first), 422
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            message = f"There is no {request.url.path}. The API is described at /docs."
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}. See /docs."
        else:
            message = str(exc.detail)
        page = _page(request, exc.status_code, message)
        if page is not None:
            return page
        return JSONResponse(
            error_payload(request.url.path, exc.status_code, "http_error", message),
            exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(PoolTimeout)
    async def database_busy(request: Request, exc: PoolTimeout) -> JSONResponse:
        log.warning("no database connection became free in time: %s", exc)
        message = (
            "The database is busy: no connection became free in time "
            "(database_pool_timeout_s). Retry in a few seconds."
        )
        return JSONResponse(
            error_payload(request.url.path, 503, "database_busy", message),
            503,
            headers={"Retry-After": "2"},
        )

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        # the connection dropped (a restart, a failover) or SQLite stayed locked: nothing was
        # committed by this request, and the next one gets a fresh connection (pre-ping)
        log.warning("the database did not answer: %s", str(exc).splitlines()[0][:300])
        message = (
            "The database did not answer (it may be restarting). Send the request again in a "
            "few seconds."
        )
        return JSONResponse(
            error_payload(request.url.path, 503, "database_unavailable", message),
            503,
            headers={"Retry-After": "2"},
        )

    @app.exception_handler(DataError)
    async def value_refused(request: Request, exc: DataError) -> JSONResponse:
        # the database refused a value the schemas let through (PostgreSQL: a NUL character in
        # text); the transaction was rolled back, so nothing already stored changed
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else "a value is invalid"
        message = (
            f"The database refused a value in this request: {reason}. Remove the offending "
            "characters (text may not contain NUL, \\u0000) and send it again."
        )
        return JSONResponse(error_payload(request.url.path, 422, "invalid_value", message), 422)

    # Any other exception is answered by RequestContextMiddleware (``internal_error``), inside
    # the request's context, so the 500 keeps its request id and the connection stays open.
