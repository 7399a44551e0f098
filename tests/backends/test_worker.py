import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from townsquare.backends.worker import ModelWorker
from townsquare.errors import Busy


async def test_calls_run_one_at_a_time_in_order() -> None:
    worker = ModelWorker("t", max_queue=8, retry_after_s=1)
    running, seen, order = 0, [], []
    lock = threading.Lock()

    def job(i: int) -> int:
        nonlocal running
        with lock:
            running += 1
            seen.append(running)
        time.sleep(0.01)
        order.append(i)
        with lock:
            running -= 1
        return i

    results = await asyncio.gather(*(worker.run(lambda i=i: job(i)) for i in range(5)))
    assert results == [0, 1, 2, 3, 4]
    assert order == [0, 1, 2, 3, 4]
    assert max(seen) == 1
    worker.shutdown()


async def test_full_queue_raises_busy_with_retry_after() -> None:
    worker = ModelWorker("t", max_queue=1, retry_after_s=7)
    gate = threading.Event()
    first = asyncio.ensure_future(worker.run(gate.wait))
    second = asyncio.ensure_future(worker.run(lambda: True))
    await asyncio.sleep(0.05)
    assert worker.depth == 2
    with pytest.raises(Busy) as info:
        await worker.run(lambda: True)
    assert info.value.retry_after == 7
    assert "text.max_queue=1" in info.value.message
    gate.set()
    assert await first is True and await second is True
    assert worker.depth == 0
    worker.shutdown()


async def test_abandoned_stream_frees_the_model() -> None:
    worker = ModelWorker("t", max_queue=0, retry_after_s=1)
    closed = threading.Event()

    def endless() -> Iterator[int]:
        try:
            n = 0
            while True:
                n += 1
                time.sleep(0.005)
                yield n
        finally:
            closed.set()

    stream = worker.stream(endless)
    assert await anext(stream) == 1
    await stream.aclose()
    assert await asyncio.to_thread(closed.wait, 5)
    for _ in range(100):
        if worker.depth == 0:
            break
        await asyncio.sleep(0.01)
    assert await worker.run(lambda: "free") == "free"
    worker.shutdown()


async def test_errors_in_the_thread_reach_the_consumer_and_wait_is_reported() -> None:
    waits: list[float] = []
    worker = ModelWorker("t", max_queue=2, retry_after_s=1, on_wait=waits.append)

    def broken() -> Iterator[int]:
        yield 1
        raise ValueError("boom")

    items = []
    with pytest.raises(ValueError, match="boom"):
        async for item in worker.stream(broken):
            items.append(item)
    assert items == [1]
    assert len(waits) == 1 and waits[0] >= 0
    assert worker.depth == 0
    worker.shutdown()
