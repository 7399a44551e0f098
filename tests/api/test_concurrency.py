"""The server under concurrent load: the event loop never blocks, nothing exhausts it.

Round 1's server hung for minutes under 16 concurrent searches (database work on the event
loop, two pooled connections per search). These tests run a live server on loopback and check
that health probes and cheap requests keep answering while heavy ones run.
"""

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import LiveServer, add_user, auth, make_settings
from townsquare.backends.fake import FakeEmbeddings, FakeText
from townsquare.backends.sentence_embed import SentenceEmbeddings
from townsquare.features.search import service as search_service
from townsquare.services import Services
from townsquare.social.demo import seed
from townsquare.social.ingest import KINDS, ingest


@pytest.fixture(scope="module")
def demo(
    tmp_path_factory: pytest.TempPathFactory, real_embed: SentenceEmbeddings
) -> Iterator[tuple[LiveServer, dict[str, str]]]:
    """The demo town with the real embedding model, served by a live uvicorn."""
    services = Services.build(
        make_settings(tmp_path_factory.mktemp("load")), text=FakeText(), embed=real_embed
    )
    with services.sessions.begin() as db:
        keys = seed(db, services.settings.ingest)
    services.indexer.sync_all()
    with LiveServer(services) as server:
        yield server, keys
    asyncio.run(services.aclose())


@pytest.mark.model
def test_fifty_concurrent_searches_never_stall_the_server(
    demo: tuple[LiveServer, dict[str, str]],
) -> None:
    server, keys = demo
    headers = auth(keys["mia"])
    routes = [
        ("/api/listings/search", {"q": "bike", "max_price": 200}),
        ("/api/search/sources", {"q": "sourdough bread"}),
        ("/api/reels/recommendations", {"context": "running along the river"}),
        ("/api/listings/search", {"q": "kids bike", "near": "Alfama"}),
    ]
    statuses: list[int] = []
    failures: list[str] = []
    health_ms: list[float] = []
    done = threading.Event()

    def client(n: int) -> None:
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:
            for i in range(3):
                path, params = routes[(n + i) % len(routes)]
                try:
                    statuses.append(http.get(path, params=params).status_code)
                except httpx.HTTPError as exc:  # a timeout is a failure, not a status
                    failures.append(f"{path}: {exc!r}")

    def prober() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            while not done.is_set():
                start = time.perf_counter()
                assert http.get("/healthz").status_code == 200
                health_ms.append((time.perf_counter() - start) * 1000)
                time.sleep(0.05)

    probe = threading.Thread(target=prober)
    probe.start()
    clients = [threading.Thread(target=client, args=(n,)) for n in range(50)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    done.set()
    probe.join()
    assert failures == []
    assert len(statuses) == 150 and set(statuses) <= {200, 429}, sorted(set(statuses))
    assert statuses.count(200) >= 100  # most are served; any refusal is a clean 429
    # the round-1 bug stopped the whole server for minutes; how fast /healthz answers under
    # load is a benchmark figure (bench/load.py), not a timed assertion on a shared CI machine
    assert len(health_ms) >= 5 and max(health_ms) < 10_000, max(health_ms)


def test_a_cheap_request_answers_while_a_slow_search_runs(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search whose database work takes seconds (a big full-text match, a slow disk) runs
    on a worker thread: a cheap request sent after it finishes before it."""
    services = Services.build(make_settings(tmp_path), text=FakeText(), embed=FakeEmbeddings())
    key = add_user(services, "mia")
    with services.sessions.begin() as db:
        ingest(
            db,
            KINDS["users"],
            [{"external_id": "u1", "name": "seller"}],
            settings=services.settings.ingest,
            actor=None,
        )
        ingest(
            db,
            KINDS["listings"],
            [
                {
                    "external_id": "l1",
                    "seller": "u1",
                    "title": "Kids bike",
                    "price": "80",
                    "category": "bikes",
                }
            ],
            settings=services.settings.ingest,
            actor=None,
        )
    services.indexer.sync_all()
    real_fulltext = search_service.fulltext
    entered = threading.Event()

    def slow_fulltext(*args: Any, **kwargs: Any) -> list[int]:
        entered.set()
        time.sleep(2.0)  # blocking, as a slow SQLite query is
        return real_fulltext(*args, **kwargs)

    monkeypatch.setattr(search_service, "fulltext", slow_fulltext)
    finished: dict[str, float] = {}
    with (
        LiveServer(services) as server,
        httpx.Client(base_url=server.url, headers=auth(key), timeout=30) as http,
    ):

        def slow() -> None:
            assert http.get("/api/listings/search", params={"q": "bike"}).status_code == 200
            finished["slow"] = time.perf_counter()

        runner = threading.Thread(target=slow)
        runner.start()
        assert entered.wait(10)
        for path in ("/api/me", "/healthz", "/api/groups"):
            assert http.get(path).status_code == 200
        finished["cheap"] = time.perf_counter()
        runner.join()
    asyncio.run(services.aclose())
    assert finished["cheap"] < finished["slow"]


def test_bulk_embeddings_wait_behind_search_queries(tmp_path: Any) -> None:
    """One client's /v1/embeddings with hundreds of inputs is cut into batches; a search
    query sent meanwhile goes before the rest of them."""

    class Slow(FakeEmbeddings):
        def embed_sync(self, texts: Any) -> np.ndarray:
            time.sleep(0.02 * len(texts))  # 20 ms a text, like a long one on 2 cores
            return super().embed_sync(texts)

    services = Services.build(
        make_settings(tmp_path, embed={"backend": "fake", "max_batch_tokens": 64}),
        text=FakeText(),
        embed=Slow(),
    )
    key = add_user(services, "mia")
    order: list[str] = []
    with (
        LiveServer(services) as server,
        httpx.Client(base_url=server.url, headers=auth(key), timeout=60) as http,
    ):
        model = services.embed.model_id
        texts = [f"a long product description number {n}, " * 4 for n in range(200)]

        def bulk() -> None:
            response = http.post("/v1/embeddings", json={"model": model, "input": texts})
            assert response.status_code == 200 and len(response.json()["data"]) == 200
            order.append("bulk")

        runner = threading.Thread(target=bulk)
        runner.start()
        while services.embed.depth == 0:  # type: ignore[attr-defined]
            time.sleep(0.01)
        assert http.get("/api/listings/search", params={"q": "bike"}).status_code == 200
        order.append("search")
        runner.join()
    asyncio.run(services.aclose())
    assert order == ["search", "bulk"]
