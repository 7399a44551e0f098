"""Per-user and per-group quotas: requests per minute, tokens and images per day.

Counted in fixed windows (minute, UTC day) in a ``QuotaStore``, chosen by ``quotas.store``:

- ``MemoryQuotaStore``: this process (one server);
- ``DatabaseQuotaStore``: the ``quota_counters`` table, shared by every replica on the database;
- ``RedisQuotaStore``: Redis, shared by every replica, wrapped in ``FallbackQuotaStore`` so that
  a Redis outage moves counting to the database (or refuses with 503, by setting), logged once.

A limit is taken atomically (``QuotaStore.take``): a count that would pass the limit is refused
and not added, so replicas racing for the last unit never accept one too many.

What is counted:
- every authenticated API request → the user's requests per minute;
- every generation → the user's tokens per day, and, when it runs in a group's context
  (``Context.group_id``), the group's requests per minute and tokens per day (tokens are known
  only afterwards: a generation may start while a budget still has tokens left and overrun it
  by its own length);
- every image → the user's and the group's images per day, reserved before the engine runs
  and given back when it fails.

Quota calls block on the store: callers run them on worker threads, never on the event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from typing_extensions import override

from townsquare.errors import ConfigurationError, QuotaExceeded, QuotasUnavailable
from townsquare.settings import QuotaSettings

if TYPE_CHECKING:
    from sqlalchemy import Table
    from sqlalchemy.orm import Session, sessionmaker

MINUTE, DAY = 60, 86_400
log = logging.getLogger("townsquare.quotas")


def _window(window_s: int, now: float) -> int:
    return int(now // window_s) * window_s


class QuotaStore(ABC):
    """Counters per (key, window)."""

    @abstractmethod
    def add(self, key: str, window_s: int, amount: int, now: float) -> int:
        """Add ``amount`` (negative gives back) to the current window of ``key``; return the
        new total."""

    @abstractmethod
    def get(self, key: str, window_s: int, now: float) -> int:
        """The total of the current window of ``key``."""

    @abstractmethod
    def take(self, key: str, window_s: int, amount: int, limit: int, now: float) -> int | None:
        """Atomically add ``amount`` if the total stays within ``limit``: the new total, or
        ``None`` (nothing added) if it would pass it."""

    def close(self) -> None:
        """Release connections (none by default)."""
        return


class MemoryQuotaStore(QuotaStore):
    """Counters in this process (one replica)."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int, int], int] = {}
        self._lock = threading.Lock()

    def _slot(self, key: str, window_s: int, now: float) -> tuple[str, int, int]:
        if len(self._counts) > 100_000:  # drop windows that have ended
            self._counts = {k: v for k, v in self._counts.items() if k[2] >= int(now // k[1])}
        return (key, window_s, int(now // window_s))

    @override
    def add(self, key: str, window_s: int, amount: int, now: float) -> int:
        with self._lock:
            slot = self._slot(key, window_s, now)
            self._counts[slot] = self._counts.get(slot, 0) + amount
            return self._counts[slot]

    @override
    def get(self, key: str, window_s: int, now: float) -> int:
        with self._lock:
            return self._counts.get((key, window_s, int(now // window_s)), 0)

    @override
    def take(self, key: str, window_s: int, amount: int, limit: int, now: float) -> int | None:
        with self._lock:
            slot = self._slot(key, window_s, now)
            total = self._counts.get(slot, 0) + amount
            if total > limit:
                return None
            self._counts[slot] = total
            return total


class DatabaseQuotaStore(QuotaStore):
    """Counters in the ``quota_counters`` table: one upsert per count, atomic in SQLite and in
    PostgreSQL (``INSERT ... ON CONFLICT DO UPDATE ... WHERE``). Ended windows are deleted now
    and then."""

    PRUNE_EVERY = 1000

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        from townsquare.storage.tables import QuotaCounter

        self.sessions = sessions
        self.table = cast("Table", QuotaCounter.__table__)
        self._writes = 0

    def _insert(self, dialect: str) -> Any:
        return (postgresql if dialect == "postgresql" else sqlite).insert(self.table)

    def _upsert(
        self, key: str, window_s: int, amount: int, now: float, limit: int | None
    ) -> int | None:
        start = _window(window_s, now)
        with self.sessions.begin() as db:
            insert = self._insert(db.get_bind().dialect.name)
            row = {"key": f"{key}/{window_s}", "window_start": start, "total": amount}
            statement = insert.values(**row, expires=start + window_s)
            total = self.table.c.total + statement.excluded.total
            statement = statement.on_conflict_do_update(
                index_elements=["key", "window_start"],
                set_={"total": total},
                where=None if limit is None else total <= limit,
            ).returning(self.table.c.total)
            if limit is not None and amount > limit:
                return None
            found = db.execute(statement).scalar_one_or_none()
            self._writes += 1
            if self._writes % self.PRUNE_EVERY == 0:
                db.execute(delete(self.table).where(self.table.c.expires < int(now)))
        return None if found is None else int(found)

    @override
    def add(self, key: str, window_s: int, amount: int, now: float) -> int:
        total = self._upsert(key, window_s, amount, now, None)
        assert total is not None
        return total

    @override
    def take(self, key: str, window_s: int, amount: int, limit: int, now: float) -> int | None:
        return self._upsert(key, window_s, amount, now, limit)

    @override
    def get(self, key: str, window_s: int, now: float) -> int:
        with self.sessions() as db:
            found = db.execute(
                select(self.table.c.total).where(
                    self.table.c.key == f"{key}/{window_s}",
                    self.table.c.window_start == _window(window_s, now),
                )
            ).scalar_one_or_none()
        return int(found or 0)


# KEYS[1] the counter; ARGV amount, limit (-1: none), seconds until the window ends
_TAKE = """
local total = tonumber(redis.call('GET', KEYS[1]) or '0') + tonumber(ARGV[1])
if tonumber(ARGV[2]) >= 0 and total > tonumber(ARGV[2]) then return nil end
total = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return total
"""


class RedisQuotaStore(QuotaStore):
    """Counters in Redis: one key per (key, window) that expires with its window; a count is
    one server-side script (check and add together)."""

    def __init__(self, url: str, *, timeout_s: float = 0.5) -> None:
        import redis

        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._take = self.client.register_script(_TAKE)

    @staticmethod
    def _key(key: str, window_s: int, now: float) -> str:
        return f"townsquare:quota:{key}:{window_s}:{_window(window_s, now)}"

    def _run(self, key: str, window_s: int, amount: int, limit: int, now: float) -> int | None:
        ttl = max(1, int(_window(window_s, now) + window_s - now) + 1)
        found = self._take(keys=[self._key(key, window_s, now)], args=[amount, limit, ttl])
        return None if found is None else int(found)

    @override
    def add(self, key: str, window_s: int, amount: int, now: float) -> int:
        total = self._run(key, window_s, amount, -1, now)
        assert total is not None
        return total

    @override
    def take(self, key: str, window_s: int, amount: int, limit: int, now: float) -> int | None:
        return self._run(key, window_s, amount, limit, now)

    @override
    def get(self, key: str, window_s: int, now: float) -> int:
        return int(self.client.get(self._key(key, window_s, now)) or 0)

    @override
    def close(self) -> None:
        self.client.close()


class FallbackQuotaStore(QuotaStore):
    """A primary store (Redis) with a fallback while it is down: another store, or ``None``
    for refusing with 503. The outage and the recovery are logged once each; while down, the
    primary is tried again every ``retry_s`` (by one request; the others use the fallback)."""

    def __init__(
        self, primary: QuotaStore, fallback: QuotaStore | None, *, retry_s: float = 5.0
    ) -> None:
        self.primary, self.fallback, self.retry_s = primary, fallback, retry_s
        self._down_since: float | None = None
        self._next_try = 0.0
        self._lock = threading.Lock()

    @property
    def down(self) -> bool:
        """Whether the primary is considered down now."""
        return self._down_since is not None

    def _call(self, method: str, *args: Any) -> Any:
        import redis

        with self._lock:
            try_primary = self._down_since is None or time.monotonic() >= self._next_try
            if try_primary and self._down_since is not None:
                self._next_try = time.monotonic() + self.retry_s  # one request tries it
        if try_primary:
            try:
                result = getattr(self.primary, method)(*args)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                with self._lock:
                    if self._down_since is None:
                        self._down_since = time.monotonic()
                        log.error(
                            "the quota store (Redis) is unreachable (%s); %s until it is back",
                            exc,
                            "counting in the database"
                            if self.fallback
                            else "refusing requests (quotas.redis_fallback = closed)",
                        )
                    self._next_try = time.monotonic() + self.retry_s
            else:
                with self._lock:
                    if self._down_since is not None:
                        log.warning(
                            "the quota store (Redis) is back after %.0f s",
                            time.monotonic() - self._down_since,
                        )
                        self._down_since = None
                return result
        if self.fallback is None:
            raise QuotasUnavailable(
                "The quota store (Redis at quotas.redis_url) is unreachable, and "
                "quotas.redis_fallback is 'closed'. Retry shortly; an operator can set "
                "quotas.redis_fallback = 'database' to keep serving during outages."
            )
        return getattr(self.fallback, method)(*args)

    @override
    def add(self, key: str, window_s: int, amount: int, now: float) -> int:
        return int(self._call("add", key, window_s, amount, now))

    @override
    def get(self, key: str, window_s: int, now: float) -> int:
        return int(self._call("get", key, window_s, now))

    @override
    def take(self, key: str, window_s: int, amount: int, limit: int, now: float) -> int | None:
        found = self._call("take", key, window_s, amount, limit, now)
        return None if found is None else int(found)

    @override
    def close(self) -> None:
        self.primary.close()


def build_quota_store(settings: QuotaSettings, sessions: sessionmaker[Session]) -> QuotaStore:
    """The store ``quotas.store`` names."""
    if settings.store == "memory":
        return MemoryQuotaStore()
    if settings.store == "database":
        return DatabaseQuotaStore(sessions)
    if not settings.redis_url:
        raise ConfigurationError(
            "quotas.store is 'redis' but quotas.redis_url is not set: set "
            "TOWNSQUARE_QUOTAS__REDIS_URL (e.g. redis://localhost:6379/0)."
        )
    return FallbackQuotaStore(
        RedisQuotaStore(settings.redis_url, timeout_s=settings.redis_timeout_s),
        DatabaseQuotaStore(sessions) if settings.redis_fallback == "database" else None,
        retry_s=settings.redis_retry_s,
    )


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
        if self.store.take(key, window_s, 1, limit, now) is None:
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
        """Reserve ``n`` images against the user's and the group's daily allowances, or refuse
        them when either is used up (``release_images`` gives back what was not made)."""
        now = time.time()
        checks = []
        if user_id is not None and not self._exempt(role):
            checks.append((f"u{user_id}:img", user_limit, "You", "user_images_per_day"))
        if group_id is not None:
            checks.append((f"g{group_id}:img", group_limit, "This group", "group_images_per_day"))
        taken: list[str] = []
        for key, limit, who, setting in checks:
            if limit and self.store.take(key, DAY, n, limit, now) is None:
                for done in taken:  # give back what the other allowance reserved
                    self.store.add(done, DAY, -n, now)
                used = self.store.get(key, DAY, now)
                raise QuotaExceeded(
                    f"{who} may make {limit} images per day (images.{setting}); {used} are made "
                    f"already and this asks for {n}. Retry in {_retry_after(DAY, now)} s.",
                    retry_after=_retry_after(DAY, now),
                )
            if limit:
                taken.append(key)
            else:
                self.store.add(key, DAY, n, now)

    def release_images(
        self, user_id: int | None, role: str | None, group_id: int | None, n: int
    ) -> None:
        """Give back ``n`` images reserved by ``before_images`` that were not made."""
        now = time.time()
        if user_id is not None and not self._exempt(role):
            self.store.add(f"u{user_id}:img", DAY, -n, now)
        if group_id is not None:
            self.store.add(f"g{group_id}:img", DAY, -n, now)
