"""The embedding queue: interactive first, bulk in turns and micro-batches, bounded."""

import asyncio
import contextlib
import threading
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from townsquare.backends.embed_queue import QueuedEmbeddings
from townsquare.backends.fake import FakeEmbeddings
from townsquare.errors import Busy


class Recording(FakeEmbeddings):
    """Records each batch it embeds; ``gate`` holds the first batch until the test opens it."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def embed_sync(self, texts: Sequence[str]) -> np.ndarray:
        self.entered.set()
        self.gate.wait(10)
        self.batches.append(list(texts))
        return super().embed_sync(texts)


def test_results_match_the_model_in_order() -> None:
    inner = FakeEmbeddings()
    queue = QueuedEmbeddings(inner, max_batch_tokens=20)
    texts = [f"text number {n} " * (n % 4 + 1) for n in range(30)]
    np.testing.assert_allclose(queue.embed_sync(texts), inner.embed_sync(texts))
    assert queue.embed_sync([]).shape == (0, inner.dimensions)
    assert queue.depth == 0
    asyncio.run(queue.aclose())


def test_a_query_goes_before_the_rest_of_a_bulk_job() -> None:
    inner = Recording()
    queue = QueuedEmbeddings(inner, max_batch_tokens=16, interactive_max_texts=2)
    inner.gate.clear()
    bulk = [f"bulk document {n}" for n in range(12)]
    bulk_job = queue.submit(bulk)
    assert inner.entered.wait(10)  # the worker is inside the first micro-batch
    query_job = queue.submit(["kids bike"])
    inner.gate.set()
    query_job.future.result(10)
    bulk_job.future.result(10)
    position = next(i for i, b in enumerate(inner.batches) if b == ["kids bike"])
    assert position == 1  # right after the micro-batch that was running
    assert sum(len(b) for b in inner.batches) == len(bulk) + 1
    assert max(len(b) for b in inner.batches if b != ["kids bike"]) < len(bulk)  # cut up
    asyncio.run(queue.aclose())


def test_bulk_jobs_take_turns() -> None:
    inner = Recording()
    queue = QueuedEmbeddings(inner, max_batch_tokens=12, interactive_max_texts=1)
    inner.gate.clear()
    first = queue.submit([f"a{n} a" for n in range(6)])
    second = queue.submit([f"b{n} b" for n in range(6)])
    inner.gate.set()
    first.future.result(10)
    second.future.result(10)
    owners = [b[0][0] for b in inner.batches]
    assert owners[:4] == ["a", "b", "a", "b"]  # interleaved, not one job then the other
    asyncio.run(queue.aclose())


def test_beyond_the_bound_is_busy_and_nothing_leaks() -> None:
    inner = Recording()
    queue = QueuedEmbeddings(inner, max_queued_texts=10, retry_after_s=5)
    inner.gate.clear()
    held = queue.submit([f"t{n}" for n in range(8)])
    with pytest.raises(Busy) as info:
        queue.submit([f"u{n}" for n in range(5)])
    assert info.value.retry_after == 5 and "embed.max_queued_texts" in info.value.message
    small = queue.submit(["one", "two"])  # still fits
    inner.gate.set()
    held.future.result(10)
    small.future.result(10)
    assert queue.depth == 0


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)


async def test_a_cancelled_caller_gives_its_place_back() -> None:
    inner = Recording()
    queue = QueuedEmbeddings(inner, max_queued_texts=20)
    inner.gate.clear()
    running = asyncio.ensure_future(queue.embed([f"r{n}" for n in range(10)]))
    await until(lambda: queue.depth == 10)  # polled, not slept: the suite's load varies
    waiting = asyncio.ensure_future(queue.embed([f"w{n}" for n in range(10)]))
    await until(lambda: queue.depth == 20)
    assert queue.depth == 20
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting  # the caller has left (its cancellation ran) before the model frees up
    inner.gate.set()
    await running
    for _ in range(100):
        if queue.depth == 0:
            break
        await asyncio.sleep(0.01)
    assert queue.depth == 0
    assert not any(b[0].startswith("w") for b in inner.batches)  # never embedded
    await queue.aclose()


def test_waiting_queries_are_embedded_together() -> None:
    inner = Recording()
    queue = QueuedEmbeddings(inner, interactive_max_texts=2)
    inner.gate.clear()
    first = queue.submit(["first query"])
    assert inner.entered.wait(10)  # the model is busy with the first one
    waiting = [queue.submit([f"query {n}"]) for n in range(5)]
    inner.gate.set()
    vectors = [job.future.result(10) for job in waiting]
    first.future.result(10)
    assert [len(b) for b in inner.batches] == [1, 5]  # one forward pass for the five
    np.testing.assert_allclose(
        np.concatenate(vectors), FakeEmbeddings().embed_sync([f"query {n}" for n in range(5)])
    )
    asyncio.run(queue.aclose())


def test_repeated_queries_come_from_the_cache() -> None:
    inner = Recording()
    queue = QueuedEmbeddings(inner, cache_size=2)
    a = queue.embed_sync(["kids bike"])
    queue.embed_sync(["oak table"])
    again = queue.embed_sync(["kids bike"])  # cached: the model is not asked again
    assert len(inner.batches) == 2 and queue.cache_hits == 1
    np.testing.assert_allclose(a, again)
    queue.embed_sync(["lamp"])  # evicts the least recently used ("oak table")
    queue.embed_sync(["oak table"])
    assert len(inner.batches) == 4
    queue.embed_sync([f"doc {n}" for n in range(20)])  # bulk work is never cached
    assert queue.cache_hits == 1 and len(queue._cache) == 2
    asyncio.run(queue.aclose())
