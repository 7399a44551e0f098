"""Server-Sent Events in OpenAI's chat streaming format (``data: {...}`` ... ``data: [DONE]``).

``primed`` pulls the first item before the response starts, so everything that fails before
the first token (full queue, prompt too long, blocked input) is a plain HTTP error with the right
status; anything after it is sent as ``data: {"error": ...}``, which OpenAI clients raise.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any, TypeVar

from fastapi.responses import StreamingResponse

from townsquare.api.errors import error_payload, exception_payload
from townsquare.errors import BackendUnavailable, TownsquareError

T = TypeVar("T")
log = logging.getLogger("townsquare.api")


async def primed(source: AsyncIterator[T]) -> AsyncIterator[T]:
    """Return an iterator equivalent to ``source`` whose first item has already been pulled."""
    iterator = aiter(source)
    try:
        first = await anext(iterator)
    except StopAsyncIteration:
        first = None
        empty = True
    else:
        empty = False

    async def chained() -> AsyncIterator[T]:
        if not empty:
            yield first  # type: ignore[misc]
        async for item in iterator:
            yield item

    return chained()


class ShuttingDown(BackendUnavailable):
    """This replica is stopping and its grace period for open streams is over."""

    code = "server_shutting_down"

    def __init__(self) -> None:
        super().__init__(
            "This server is shutting down and ended the reply here. Send the request again: "
            "another server answers it."
        )


class Draining:
    """Set when the server is told to stop (SIGTERM): streams still open one second before the
    grace period ends (server.shutdown_timeout_s) end with a ``server_shutting_down`` error
    event, so a client knows to retry instead of seeing a cut connection."""

    def __init__(self) -> None:
        self.deadline: float | None = None

    def begin(self, grace_s: float) -> None:
        """The server stops in ``grace_s`` seconds."""
        self.deadline = time.monotonic() + max(0.0, grace_s - 1.0)

    def overdue(self) -> bool:
        """Whether open streams should end now."""
        return self.deadline is not None and time.monotonic() >= self.deadline


DRAINING = Draining()  # one server per process


def data(payload: dict[str, Any] | str) -> str:
    """One SSE event in OpenAI's framing: ``data: ...`` and a blank line (``\n``, not ``\r\n``)."""
    text = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {text}\n\n"


def sse_response(path: str, chunks: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    """Stream ``chunks`` as SSE ``data:`` lines, then ``[DONE]``; errors become an error event.

    A plain ``StreamingResponse`` rather than sse-starlette: the stream starts only after the
    first token exists (``primed``), so keep-alive pings buy nothing, and the leaner path costs
    less CPU per token on a machine whose cores the model is using (bench/serving.py).
    Starlette cancels the generator when the client disconnects, which frees the model.
    """

    async def events() -> AsyncIterator[str]:
        async with aclosing(chunks) as items:  # type: ignore[type-var]
            try:
                async for chunk in items:
                    yield data(chunk)
                    if DRAINING.overdue():  # the server is stopping: end with an error event
                        raise ShuttingDown()
            except TownsquareError as exc:
                log.warning("stream ended with an error: %s", exc.message)
                yield data(exception_payload(path, exc))
                return
            except Exception:
                log.exception("stream failed")
                yield data(
                    error_payload(
                        path, 500, "internal_error", "The reply failed on our side. Try again."
                    )
                )
                return
        yield data("[DONE]")

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
