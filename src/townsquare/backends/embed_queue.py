"""One embedding model shared fairly: a priority queue in front of it.

A search embeds one short query and a member waits for it; indexing a batch or a client's
``/v1/embeddings`` with hundreds of inputs can keep the model busy for seconds. So:

- interactive jobs (at most ``interactive_max_texts`` texts) always go first;
- bulk jobs are cut into micro-batches of at most ``max_batch_tokens`` estimated tokens and
  take turns, so a query waits for at most one micro-batch, and one client's bulk job cannot
  hold the model for the length of the whole job;
- interactive jobs waiting together are embedded in one batch (one forward pass for many
  queries costs little more than for one: the model's per-call overhead is shared);
- vectors of short texts are kept in an LRU cache (``cache_size``): popular searches repeat;
- at most ``max_queued_texts`` texts are admitted (running or waiting); beyond that ``Busy``
  (429 with Retry-After) at once.

``concurrency`` threads work the queue: 1 for an in-process model (it already uses every core
for one batch), more for a remote server.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from typing_extensions import override

from townsquare.admission import Admission
from townsquare.backends.base import EmbeddingBackend
from townsquare.errors import BackendUnavailable

Vectors = npt.NDArray[np.float32]


def estimate_tokens(text: str) -> int:
    """A cheap upper estimate of a text's tokens (4 characters a token), for batching."""
    return len(text) // 4 + 2


@dataclass(eq=False)
class _Job:
    texts: list[str]
    future: Future[Vectors]
    order: list[int]  # texts sorted by length (less padding per micro-batch)
    done: int = 0
    started: bool = False
    abandoned: bool = False
    parts: dict[int, Vectors] = field(default_factory=dict)


class QueuedEmbeddings(EmbeddingBackend):
    """``inner`` behind a priority queue (see the module docstring)."""

    def __init__(
        self,
        inner: EmbeddingBackend,
        *,
        concurrency: int = 1,
        max_batch_tokens: int = 2048,
        max_queued_texts: int = 4096,
        interactive_max_texts: int = 8,
        retry_after_s: int = 2,
        cache_size: int = 0,
        cache_max_chars: int = 200,
    ) -> None:
        self.inner = inner
        self.backend_id = inner.backend_id  # type: ignore[misc]
        self.model_id = inner.model_id
        self.dimensions = inner.dimensions
        self.max_batch_tokens = max_batch_tokens
        self.interactive_max_texts = interactive_max_texts
        self.admission = Admission(
            "The embedding model",
            capacity=max_queued_texts,
            retry_after_s=retry_after_s,
            setting="embed.max_queued_texts",
        )
        self.cache_size = cache_size
        self.cache_max_chars = cache_max_chars
        self._cache: OrderedDict[str, Vectors] = OrderedDict()
        self._cache_lock = threading.Lock()
        self.cache_hits = 0
        self._heap: list[tuple[int, int, _Job]] = []
        self._sequence = itertools.count()
        self._cv = threading.Condition()
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._work, name=f"embed-{n}", daemon=True)
            for n in range(concurrency)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def depth(self) -> int:
        """Texts admitted and not yet embedded."""
        return self.admission.depth

    def submit(self, texts: Sequence[str], *, bulk: bool | None = None) -> _Job:
        """Queue ``texts``; raises ``Busy`` when the queue is full."""
        if self._stopping:
            raise BackendUnavailable("The embedding model is shutting down. Retry in a moment.")
        items = list(texts)
        job = _Job(items, Future(), sorted(range(len(items)), key=lambda i: len(items[i])))
        if not items:
            job.future.set_result(np.zeros((0, self.dimensions), dtype=np.float32))
            return job
        priority = int(len(items) > self.interactive_max_texts if bulk is None else bulk)
        self.admission.acquire(len(items))
        with self._cv:
            heapq.heappush(self._heap, (priority, next(self._sequence), job))
            self._cv.notify()
        return job

    def clear_cache(self) -> None:
        """Forget every cached vector (benchmarks measuring a cold start)."""
        with self._cache_lock:
            self._cache.clear()

    def _cached(self, texts: Sequence[str]) -> Vectors | None:
        """All of ``texts`` from the cache, or None."""
        if not self.cache_size or not texts:
            return None
        with self._cache_lock:
            found = [self._cache.get(t) for t in texts]
            if any(v is None for v in found):
                return None
            for text in texts:
                self._cache.move_to_end(text)
            self.cache_hits += len(texts)
        return np.stack(found).astype(np.float32)  # type: ignore[arg-type]

    def _remember(self, texts: Sequence[str], vectors: Vectors) -> None:
        if not self.cache_size:
            return
        with self._cache_lock:
            for text, vector in zip(texts, vectors, strict=True):
                if len(text) <= self.cache_max_chars:
                    self._cache[text] = vector
                    self._cache.move_to_end(text)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    @override
    def embed_sync(self, texts: Sequence[str], *, bulk: bool | None = None) -> Vectors:
        hit = self._cached(texts) if len(texts) <= self.interactive_max_texts else None
        if hit is not None:
            return hit
        return self.submit(texts, bulk=bulk).future.result()

    @override
    async def embed(self, texts: Sequence[str]) -> Vectors:
        hit = self._cached(texts) if len(texts) <= self.interactive_max_texts else None
        if hit is not None:
            return hit
        job = self.submit(texts)
        try:
            return await asyncio.wrap_future(job.future)
        except asyncio.CancelledError:
            job.abandoned = True  # the caller left: stop at the next micro-batch
            raise

    def _next_batch(self, job: _Job) -> list[int]:
        batch: list[int] = []
        budget = self.max_batch_tokens
        while job.done + len(batch) < len(job.texts):
            index = job.order[job.done + len(batch)]
            cost = estimate_tokens(job.texts[index])
            if batch and cost > budget:
                break
            batch.append(index)
            budget -= cost
        return batch

    def _take(self) -> list[tuple[int, _Job]] | None:
        """The next job (and, for an interactive one, the other interactive jobs waiting, to
        embed together); None when stopping. Cancelled jobs are dropped here."""
        with self._cv:
            while True:
                while not self._heap and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return None
                taken: list[tuple[int, _Job]] = []
                budget = self.max_batch_tokens
                while self._heap:
                    priority, _, job = self._heap[0]
                    if taken and (priority != 0 or taken[0][0] != 0):
                        break  # bulk jobs go one micro-batch at a time
                    cost = sum(estimate_tokens(t) for t in job.texts[job.done :])
                    if taken and cost > budget:
                        break
                    heapq.heappop(self._heap)
                    if job.abandoned or (
                        not job.started and not job.future.set_running_or_notify_cancel()
                    ):
                        self.admission.release(len(job.texts) - job.done)
                        continue
                    job.started = True
                    taken.append((priority, job))
                    budget -= cost
                if taken:
                    return taken

    def _work(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            if taken[0][0] == 0:  # interactive: every waiting query in one forward pass
                jobs = [job for _, job in taken]
                parts = [(job, list(range(job.done, len(job.texts)))) for job in jobs]
            else:
                job = taken[0][1]
                parts = [(job, self._next_batch(job))]
            texts = [job.texts[i] for job, batch in parts for i in batch]
            try:
                vectors = self.inner.embed_sync(texts)
            except BaseException as exc:  # handed to the waiting callers
                for job, _ in parts:
                    self.admission.release(len(job.texts) - job.done)
                    job.future.set_exception(exc)
                continue
            if taken[0][0] == 0:
                self._remember(texts, vectors)
            at = 0
            for job, batch in parts:
                for index in batch:
                    job.parts[index] = vectors[at]
                    at += 1
                job.done += len(batch)
                self.admission.release(len(batch))
                if job.done == len(job.texts):
                    job.future.set_result(
                        np.stack([job.parts[i] for i in range(len(job.texts))]).astype(np.float32)
                    )
                else:  # back in line behind the jobs of its priority: bulk jobs take turns
                    with self._cv:
                        heapq.heappush(self._heap, (taken[0][0], next(self._sequence), job))
                        self._cv.notify()

    @override
    async def aclose(self) -> None:
        with self._cv:
            self._stopping = True
            pending = [job for _, _, job in self._heap]
            self._heap.clear()
            self._cv.notify_all()
        for job in pending:
            self.admission.release(len(job.texts) - job.done)
            if not job.future.done():
                job.future.set_exception(
                    BackendUnavailable("The embedding model shut down. Retry in a moment.")
                )
        for thread in self._threads:
            thread.join(timeout=10)
        await self.inner.aclose()
