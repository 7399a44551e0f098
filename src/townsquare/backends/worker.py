"""One dedicated thread per local model, behind a bounded FIFO queue.

llama.cpp contexts are not thread-safe: two threads in one ``Llama`` abort the process. So every
call into a local model goes through a ``ModelWorker``: a single-thread executor (FIFO by
construction) with an admission count. When ``max_queue`` requests already wait behind the one
running, ``admit`` raises ``Busy`` at once, so the API can answer 429 with Retry-After instead
of letting latency grow without bound.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from townsquare.errors import Busy

T = TypeVar("T")
_DONE = object()


class ModelWorker:
    """Runs blocking model calls one at a time on its own thread."""

    def __init__(
        self,
        name: str,
        *,
        max_queue: int,
        retry_after_s: int,
        on_wait: Callable[[float], None] | None = None,
        on_busy: Callable[[], None] | None = None,
    ) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{name}")
        self._capacity = max_queue + 1  # the running request plus the waiting ones
        self._retry_after_s = retry_after_s
        self.on_wait = on_wait
        self.on_busy = on_busy
        self._lock = threading.Lock()
        self._admitted = 0

    @property
    def depth(self) -> int:
        """Requests admitted and not finished (running + waiting)."""
        return self._admitted

    def _admit(self) -> float:
        with self._lock:
            if self._admitted >= self._capacity:
                if self.on_busy is not None:
                    self.on_busy()
                raise Busy(
                    f"The model is busy: {self._admitted - 1} requests are already waiting "
                    f"(limit text.max_queue={self._capacity - 1}). Retry in "
                    f"{self._retry_after_s} s.",
                    retry_after=self._retry_after_s,
                )
            self._admitted += 1
        return time.perf_counter()

    def _release(self) -> None:
        with self._lock:
            self._admitted -= 1

    def _started(self, admitted_at: float) -> None:
        if self.on_wait is not None:
            self.on_wait(time.perf_counter() - admitted_at)

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the model thread and return its result."""
        admitted_at = self._admit()

        def job() -> T:
            try:
                self._started(admitted_at)
                return fn()
            finally:
                self._release()

        try:
            future = self._executor.submit(job)
        except BaseException:
            self._release()
            raise
        return await asyncio.wrap_future(future)

    async def stream(self, make_iter: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
        """Iterate ``make_iter()`` on the model thread, handing items over as they come.

        Admission happens on the first ``__anext__``. If the consumer stops early (client gone),
        the thread stops at the next item and closes the iterator, freeing the model.
        """
        admitted_at = self._admit()
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[object] = asyncio.Queue()
        cancelled = threading.Event()

        def put(item: object) -> None:
            loop.call_soon_threadsafe(items.put_nowait, item)

        def job() -> None:
            outcome: object = _DONE
            try:
                self._started(admitted_at)
                iterator = make_iter()
                try:
                    for item in iterator:
                        if cancelled.is_set():
                            break
                        put(item)
                finally:
                    close = getattr(iterator, "close", None)
                    if close is not None:
                        close()
            except BaseException as exc:  # handed to the consumer, raised there
                outcome = exc
            finally:
                # free the slot before the consumer learns the stream ended, so a request
                # sent right after never sees a queue that is not really full
                self._release()
                put(outcome)

        try:
            self._executor.submit(job)
        except BaseException:
            self._release()
            raise
        try:
            while True:
                item = await items.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            cancelled.set()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
