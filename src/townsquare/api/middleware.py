"""Pure ASGI middleware (safe with streaming): request ids, body limit, metrics, access log."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from townsquare.api.errors import error_payload, internal_error
from townsquare.errors import PayloadTooLarge
from townsquare.observability import Metrics, request_id_var

log = logging.getLogger("townsquare.access")
_VALID_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestContextMiddleware:
    """Gives every request an id (``X-Request-ID``, echoed back), enforces the body limit,
    and records a log line and metrics per request."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        max_body_bytes: int,
        upload_limits: dict[str, tuple[int, str]] | None = None,
        content_security_policy: str = "default-src 'self'",
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        # path -> (limit, setting name): uploads that may exceed the general body limit
        self.upload_limits = upload_limits or {}
        self.security_headers = [
            (b"content-security-policy", content_security_policy.encode()),
            (b"x-content-type-options", b"nosniff"),
        ]

    def _limit(self, path: str) -> tuple[int, str]:
        return self.upload_limits.get(path, (self.max_body_bytes, "limits.max_body_bytes"))

    def _too_large(self, size: str, limit: tuple[int, str]) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"The request body is {size}; the limit is {limit[0]} bytes "
            f"({limit[1]}). Send less, or split it into several requests."
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI request: request id, body limit, security headers, log line, metrics, and
        a 500 answered here for an unexpected exception."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        incoming = headers.get("x-request-id", "")
        request_id = incoming if _VALID_ID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        state: dict[str, Any] = {"status": 500, "started": False, "received": 0, "rejected": False}
        limit = self._limit(scope["path"])

        async def send_with_id(message: Message) -> None:
            if state["rejected"]:
                return  # the 413 has been sent; whatever the app says after it is dropped
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["started"] = True
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                    *self.security_headers,
                ]
            await send(message)

        async def limited_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request" and not state["rejected"]:
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit[0] and not state["started"]:
                    # Answer now and tell the app the client left, so it stops reading.
                    await self._send_error(
                        scope, send_with_id, self._too_large("larger than that", limit)
                    )
                    state["rejected"] = True
                    return {"type": "http.disconnect"}
            return message

        try:
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > limit[0]:
                await self._send_error(
                    scope, send_with_id, self._too_large(f"{length} bytes", limit)
                )
                return
            try:
                await self.app(scope, limited_receive, send_with_id)
            except Exception:
                if state["rejected"]:
                    return
                # Answered here, inside the request's context: the 500 carries the request id
                # (header, body and log line) and the connection stays open for the next request.
                log.exception("unhandled error", extra={"route": scope["path"]})
                if not state["started"]:
                    await self._send_json(scope, send_with_id, 500, internal_error(scope["path"]))
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(route, scope["method"], str(state["status"])).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            log.log(
                logging.WARNING if state["status"] >= 500 else logging.INFO,
                "%s %s %s",
                scope["method"],
                scope["path"],
                state["status"],
                extra={"route": route, "status": state["status"], "ms": round(elapsed * 1000, 1)},
            )
            request_id_var.reset(token)

    async def _send_error(self, scope: Scope, send: Send, exc: PayloadTooLarge) -> None:
        payload = error_payload(scope["path"], 413, exc.code, exc.message)
        await self._send_json(scope, send, 413, payload, close=True)

    async def _send_json(
        self, scope: Scope, send: Send, status: int, payload: Any, *, close: bool = False
    ) -> None:
        headers = [(b"content-type", b"application/json")]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps(payload).encode()})
