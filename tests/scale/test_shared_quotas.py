"""Quotas shared by replicas: the database store and Redis (Debian's redis-server), atomic
under concurrent takers, and the fallback while Redis is down."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete

from tests.conftest import RedisServer, add_user, auth, make_settings
from townsquare.app import create_app
from townsquare.backends.fake import FakeText
from townsquare.errors import QuotaExceeded
from townsquare.quotas import (
    DatabaseQuotaStore,
    FallbackQuotaStore,
    Quotas,
    QuotaStore,
    RedisQuotaStore,
)
from townsquare.services import Services
from townsquare.settings import QuotaSettings
from townsquare.storage.db import make_engine, make_sessions, migrate
from townsquare.storage.tables import QuotaCounter

StoreFactory = Callable[[], QuotaStore]


@pytest.fixture(params=["database", "redis"])
def replica_stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[StoreFactory, Callable[[], None]]]:
    """A factory of stores that share their counters as two replicas' stores would: each call
    opens its own connection pool on the same database, or its own Redis client."""
    opened: list[QuotaStore] = []
    engines = []
    if request.param == "database":
        url = make_settings(tmp_path).resolved_database_url
        first = make_engine(url)
        migrate(first)
        first.dispose()

        def make() -> QuotaStore:
            engine = make_engine(url, pool_size=8)
            engines.append(engine)
            store = DatabaseQuotaStore(make_sessions(engine))
            opened.append(store)
            return store

        def clear() -> None:
            with make_sessions(engines[0]).begin() as db:
                db.execute(delete(QuotaCounter))

    else:
        server: RedisServer = request.getfixturevalue("redis_server")

        def make() -> QuotaStore:
            store = RedisQuotaStore(server.url)
            opened.append(store)
            return store

        def clear() -> None:
            RedisQuotaStore(server.url).client.flushdb()

    yield make, clear
    for store in opened:
        store.close()
    for engine in engines:
        engine.dispose()


def test_takes_never_pass_the_limit_across_replicas(
    replica_stores: tuple[StoreFactory, Callable[[], None]],
) -> None:
    """Eight threads on two 'replicas' race for 100 units: exactly 100 are granted."""
    make, clear = replica_stores
    replicas = [make(), make()]
    clear()
    granted: list[int] = []
    lock = threading.Lock()

    def taker(store: QuotaStore) -> None:
        for _ in range(40):
            if store.take("u1:req", 60, 1, 100, now=1_000_020.0) is not None:
                with lock:
                    granted.append(1)

    threads = [threading.Thread(target=taker, args=(replicas[i % 2],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(granted) == 100  # 320 asked
    assert replicas[0].get("u1:req", 60, now=1_000_030.0) == 100
    assert replicas[1].take("u1:req", 60, 1, 100, now=1_000_030.0) is None
    # the next window starts at zero; a give-back lowers the count
    assert replicas[1].take("u1:req", 60, 5, 100, now=1_000_080.0) == 5
    assert replicas[0].add("u1:req", 60, -2, now=1_000_081.0) == 3
    assert replicas[0].take("u1:req", 60, 200, 100, now=1_000_081.0) is None


def test_requests_per_minute_hold_across_two_replicas(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Two app instances on one database and one Redis: a limit of 5 per minute allows 5
    requests in all, whichever replica answers them."""
    RedisQuotaStore(redis_server.url).client.flushdb()
    settings = make_settings(
        tmp_path,
        quotas={"user_requests_per_minute": 5, "store": "redis", "redis_url": redis_server.url},
    )
    first = Services.build(settings, text=FakeText())
    second = Services.build(settings, text=FakeText())
    key = add_user(first, "mia")
    with (
        TestClient(create_app(services=first)) as a,
        TestClient(create_app(services=second)) as b,
    ):
        statuses = [
            (a if n % 2 else b).get("/api/me", headers=auth(key)).status_code for n in range(8)
        ]
    assert statuses.count(200) == 5 and statuses[5:] == [429, 429, 429]


def test_redis_outage_falls_back_to_the_database_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    down = RedisServer(tmp_path)  # never started: nothing listens on its port
    engine = make_engine(make_settings(tmp_path).resolved_database_url)
    migrate(engine)
    database = DatabaseQuotaStore(make_sessions(engine))
    store = FallbackQuotaStore(RedisQuotaStore(down.url, timeout_s=0.2), database, retry_s=0.2)
    quotas = Quotas(QuotaSettings(user_requests_per_minute=3), store)
    with caplog.at_level(logging.WARNING, logger="townsquare.quotas"):
        for _ in range(3):
            quotas.request(7, "member")
        with pytest.raises(QuotaExceeded):
            quotas.request(7, "member")  # still counted (in the database) while Redis is down
        assert store.down
        # the outage is logged once, not per request
        assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1
        down.start()  # Redis comes back: after retry_s a request uses it again
        try:
            time.sleep(0.3)
            quotas.request(8, "member")
            assert not store.down
            assert sum("is back after" in r.getMessage() for r in caplog.records) == 1
        finally:
            down.stop()
    store.close()
    engine.dispose()


def test_redis_outage_fails_closed_when_configured(tmp_path: Path) -> None:
    down = RedisServer(tmp_path)
    settings = make_settings(
        tmp_path,
        quotas={
            "store": "redis",
            "redis_url": down.url,
            "redis_fallback": "closed",
            "redis_timeout_s": 0.2,
        },
    )
    services = Services.build(settings, text=FakeText())
    key = add_user(services, "mia")
    with TestClient(create_app(services=services)) as client:
        refused = client.get("/api/me", headers=auth(key))
    assert refused.status_code == 503
    error = refused.json()["error"]
    assert error["code"] == "quotas_unavailable" and "quotas.redis_fallback" in error["message"]


def test_redis_store_needs_a_url(tmp_path: Path) -> None:
    from townsquare.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="TOWNSQUARE_QUOTAS__REDIS_URL"):
        Services.build(make_settings(tmp_path, quotas={"store": "redis"}), text=FakeText())


def test_images_reserved_atomically_and_given_back(tmp_path: Path) -> None:
    engine = make_engine(make_settings(tmp_path).resolved_database_url)
    migrate(engine)
    quotas = Quotas(QuotaSettings(), DatabaseQuotaStore(make_sessions(engine)))
    quotas.before_images(1, "member", 9, 3, user_limit=4, group_limit=10)
    with pytest.raises(QuotaExceeded, match="user_images_per_day"):
        quotas.before_images(1, "member", 9, 2, user_limit=4, group_limit=10)
    quotas.release_images(1, "member", 9, 3)  # the engine failed: nothing was made
    quotas.before_images(1, "member", 9, 4, user_limit=4, group_limit=10)
    # a refusal by the group's allowance gives back what the user's reserved
    with pytest.raises(QuotaExceeded, match="group_images_per_day"):
        quotas.before_images(2, "member", 9, 7, user_limit=10, group_limit=10)
    quotas.before_images(2, "member", None, 10, user_limit=10, group_limit=10)
    engine.dispose()
