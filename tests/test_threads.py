"""``finish_in_thread``: a cancelled caller still waits for its thread (which may hold a
database connection) before the cancellation goes on."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from townsquare.threads import finish_in_thread


async def test_a_cancelled_caller_waits_for_its_thread_then_is_cancelled() -> None:
    started, finished = threading.Event(), threading.Event()

    def work() -> str:
        started.set()
        time.sleep(0.3)
        finished.set()
        return "done"

    task = asyncio.ensure_future(finish_in_thread(work))
    await asyncio.to_thread(started.wait, 5)
    task.cancel()
    await asyncio.sleep(0)
    task.cancel()  # a second cancel does not cut the wait short either
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished.is_set()


async def test_results_and_errors_come_back() -> None:
    assert await finish_in_thread(sum, [1, 2, 3]) == 6

    def fail() -> None:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        await finish_in_thread(fail)
