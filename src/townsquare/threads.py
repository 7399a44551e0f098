"""Blocking work in a worker thread that a cancellation waits for.

``anyio.to_thread.run_sync`` is not abandoned on an *anyio* cancellation, but a native
``task.cancel()`` (how the app stops its background tasks) returns at once while the thread
runs on, holding a database connection after the engine is disposed. ``finish_in_thread``
waits for the thread in either case, then lets the cancellation through.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

import anyio.to_thread

T = TypeVar("T")


async def finish_in_thread(func: Callable[..., T], *args: object) -> T:
    """``func(*args)`` in a worker thread; cancelled, it first waits for ``func`` to return."""
    work = asyncio.ensure_future(anyio.to_thread.run_sync(func, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        while not work.done():
            try:
                await asyncio.wait({work})
            except asyncio.CancelledError:  # cancelled again: still wait for the thread
                continue
        if not work.cancelled():
            work.exception()  # retrieved: the cancellation is what the caller sees
        raise
