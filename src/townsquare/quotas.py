"""Per-user and per-group quotas: requests per minute and tokens per day.

Counted in fixed windows (minute, UTC day) in a ``QuotaStore``. The default store lives in the
process; several replicas need a shared store (Redis, the database) behind the same interface.

What is counted:
- every authenticated API request → the user's requests per minute;
- every generation → the user's tokens per day, and, when it runs in a group's context
  (``Context.group_id``), the group's requests per minute and tokens per day.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod

from typing_extensions import override

from townsquare.errors import QuotaExceeded
from townsquare.settings import QuotaSettings

MINUTE, DAY = 60, 86_400


class QuotaStore(ABC):
    """Counters per (key, window)."""

    @abstractmethod
    def add(self, key: str, window_s: int, amount: int, now: float) -> int:
        """Add ``amount`` to the current window of ``key``; return the new total."""

    @abstractmethod
    def get(self, key: str, window_s: int, now: float) -> int:
        """The total of the current window of ``key``."""


class MemoryQuotaStore(QuotaStore):
    """Counters in this process (one replica)."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int, int], int] = {}
        self._lock = threading.Lock()

    @override
    def add(self, key: str, window_s: int, amount: int, now: float) -> int:
        slot = (key, window_s, int(now // window_s))
        with self._lock:
            if len(self._counts) > 100_000:  # drop windows that have ended
                self._counts = {k: v for k, v in self._counts.items() if k[2] >= int(now // k[1])}
            self._counts[slot] = self._counts.get(slot, 0) + amount
            return self._counts[slot]

    @override
    def get(self, key: str, window_s: int, now: float) -> int:
        with self._lock:
            return self._counts.get((key, window_s, int(now // window_s)), 0)


def _retry_after(window_s: int, now: float) -> int:
    return max(1, int(window_s - now % window_s) + 1)


class Quotas:
    """Checks and counts against the limits in ``QuotaSettings``."""

    def __init__(self, settings: QuotaSettings, store: QuotaStore | None = None) -> None:
        self.settings = settings
        self.store = store or MemoryQuotaStore()

    def _exempt(self, role: str | None) -> bool:
        return role == "admin" and self.settings.exempt_admins

    def _count(self, key: str, window_s: int, limit: int, what: str, setting: str) -> None:
        if limit <= 0:
            return
        now = time.time()
        total = self.store.add(key, window_s, 1, now)
        if total > limit:
            period = "minute" if window_s == MINUTE else "day"
            raise QuotaExceeded(
                f"{what} may make {limit} requests per {period} (quotas.{setting}); that is "
                f"used up. Retry in {_retry_after(window_s, now)} s.",
                retry_after=_retry_after(window_s, now),
            )

    def request(self, user_id: int, role: str | None) -> None:
        """Count one API request of a user."""
        if not self._exempt(role):
            limit = self.settings.user_requests_per_minute
            self._count(f"u{user_id}:req", MINUTE, limit, "You", "user_requests_per_minute")

    def before_generation(
        self, user_id: int | None, role: str | None, group_id: int | None
    ) -> None:
        """Refuse a generation whose user or group has no tokens left; count a group request."""
        now = time.time()
        if user_id is not None and not self._exempt(role):
            limit = self.settings.user_tokens_per_day
            if limit and self.store.get(f"u{user_id}:tok", DAY, now) >= limit:
                raise QuotaExceeded(
                    f"You have used your {limit} tokens for today (quotas.user_tokens_per_day). "
                    f"Retry in {_retry_after(DAY, now)} s.",
                    retry_after=_retry_after(DAY, now),
                )
        if group_id is not None:
            limit = self.settings.group_tokens_per_day
            if limit and self.store.get(f"g{group_id}:tok", DAY, now) >= limit:
                raise QuotaExceeded(
                    f"This group has used its {limit} tokens for today "
                    f"(quotas.group_tokens_per_day). Retry in {_retry_after(DAY, now)} s.",
                    retry_after=_retry_after(DAY, now),
                )
            self._count(
                f"g{group_id}:req",
                MINUTE,
                self.settings.group_requests_per_minute,
                "This group",
                "group_requests_per_minute",
            )

    def record_tokens(self, user_id: int | None, group_id: int | None, tokens: int) -> None:
        """Count a generation's tokens against the user's and the group's daily budgets."""
        now = time.time()
        if user_id is not None:
            self.store.add(f"u{user_id}:tok", DAY, tokens, now)
        if group_id is not None:
            self.store.add(f"g{group_id}:tok", DAY, tokens, now)

    def before_images(
        self,
        user_id: int | None,
        role: str | None,
        group_id: int | None,
        n: int,
        *,
        user_limit: int,
        group_limit: int,
    ) -> None:
        """Refuse ``n`` more images when the user's or the group's daily allowance is used up
        (the images are counted by ``record_images`` once they are made)."""
        now = time.time()
        checks = []
        if user_id is not None and not self._exempt(role):
            checks.append((f"u{user_id}:img", user_limit, "You", "user_images_per_day"))
        if group_id is not None:
            checks.append((f"g{group_id}:img", group_limit, "This group", "group_images_per_day"))
        for key, limit, who, setting in checks:
            used = self.store.get(key, DAY, now)
            if limit and used + n > limit:
                raise QuotaExceeded(
                    f"{who} may make {limit} images per day (images.{setting}); {used} are made "
                    f"already and this asks for {n}. Retry in {_retry_after(DAY, now)} s.",
                    retry_after=_retry_after(DAY, now),
                )

    def record_images(self, user_id: int | None, group_id: int | None, n: int) -> None:
        """Count images made against the user's and the group's daily allowances."""
        now = time.time()
        if user_id is not None:
            self.store.add(f"u{user_id}:img", DAY, n, now)
        if group_id is not None:
            self.store.add(f"g{group_id}:img", DAY, n, now)
