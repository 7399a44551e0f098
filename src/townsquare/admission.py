"""Bounded admission for heavy work: a count of what is running or waiting, and ``Busy`` (429
with Retry-After) the moment it is full, instead of a queue that grows until the server stalls.

``Admission`` is the count alone (the text engine and the embedding queue keep their own
waiting lines and use it for the bound). ``Bounded`` adds a concurrency limit for work that
runs in the caller's thread (image detection): at most ``concurrency`` run at once, at most
``max_waiting`` more wait for a turn, the rest are refused.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from townsquare.errors import Busy

T = TypeVar("T")


class Admission:
    """Counts admitted work; ``acquire`` raises ``Busy`` when ``capacity`` is reached.

    Every successful ``acquire`` must be matched by exactly one ``release``.
    """

    def __init__(
        self,
        what: str,
        *,
        capacity: int,
        retry_after_s: int,
        setting: str,
        on_busy: Callable[[], None] | None = None,
    ) -> None:
        self.what = what
        self.capacity = capacity
        self.retry_after_s = retry_after_s
        self.setting = setting
        self.on_busy = on_busy
        self._lock = threading.Lock()
        self._admitted = 0

    @property
    def depth(self) -> int:
        """Work admitted and not finished (running + waiting)."""
        return self._admitted

    def acquire(self, weight: int = 1) -> None:
        """Admit ``weight`` units, or raise ``Busy`` (with retry_after) when the capacity is used
        up. An empty admission always admits, so one oversized request is never refused forever."""
        with self._lock:
            if self._admitted + weight > self.capacity and self._admitted > 0:
                if self.on_busy is not None:
                    self.on_busy()
                raise Busy(
                    f"{self.what} is busy: {self._admitted} already admitted (limit "
                    f"{self.setting}={self.capacity}). Retry in {self.retry_after_s} s.",
                    retry_after=self.retry_after_s,
                )
            self._admitted += weight

    def release(self, weight: int = 1) -> None:
        """Give back ``weight`` units admitted by ``acquire``."""
        with self._lock:
            self._admitted -= weight
            assert self._admitted >= 0, "released more than was admitted"

    @contextmanager
    def admitted(self, weight: int = 1) -> Iterator[None]:
        """``acquire`` on entry, ``release`` on exit (a context manager)."""
        self.acquire(weight)
        try:
            yield
        finally:
            self.release(weight)


class Bounded:
    """Runs heavy calls in the calling thread, ``concurrency`` at a time, ``max_waiting`` more
    queued; beyond that ``Busy``. Call from worker threads, never from the event loop."""

    def __init__(
        self,
        what: str,
        *,
        concurrency: int,
        max_waiting: int,
        retry_after_s: int,
        setting: str,
    ) -> None:
        self.admission = Admission(
            what, capacity=concurrency + max_waiting, retry_after_s=retry_after_s, setting=setting
        )
        self._slots = threading.Semaphore(concurrency)

    def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` when one of the concurrency slots is free; ``Busy`` if too many wait
        already."""
        with self.admission.admitted(), self._slots:
            return fn()
