"""Per-request work does not grow with the town: the same requests on a town and on one ten
times bigger run the same statements and about the same SQLite work (virtual-machine steps,
which count rows visited without depending on timing). Round 1 loaded every visible id for
each search, every reel id for each recommendation, and re-embedded a creator's whole history
for every suggested reply."""

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import add_user, auth, make_settings
from tests.helpers import SqlWork
from townsquare.app import create_app
from townsquare.backends.fake import FakeEmbeddings, FakeText
from townsquare.identity import find_user, issue_key
from townsquare.services import Services
from townsquare.social.ingest import KINDS, ingest

WORDS = ["bike", "table", "lamp", "guitar", "tent", "kettle", "chair", "stroller"]
PLACES = [("Alfama", 38.7115, -9.13), ("Baixa", 38.7107, -9.137), ("Belem", 38.697, -9.206)]


class CountingEmbeddings(FakeEmbeddings):
    def __init__(self) -> None:
        super().__init__()
        self.texts = 0

    def embed_sync(self, texts: Any) -> Any:
        self.texts += len(texts)
        return super().embed_sync(texts)


def build(tmp_path: Path, size: int) -> tuple[Services, TestClient, dict[str, str], SqlWork]:
    """A town with ``size`` listings, ``size // 5`` posts and reels, in groups."""
    rng = random.Random(size)
    services = Services.build(
        # SQLite on either suite: the work is counted in SQLite's virtual-machine steps; a
        # full-text cap both towns reach, so the bound shows at test sizes (default 1000)
        make_settings(
            tmp_path,
            database_url=f"sqlite:///{tmp_path / 'town.db'}",
            search={"follow_s": 3600, "fulltext_candidates": 20, "vector_index": "embedded"},
        ),
        text=FakeText(),
        embed=CountingEmbeddings(),
    )
    keys = {"admin": add_user(services, "ada", role="admin")}
    sellers = [{"external_id": f"u{n}", "name": f"seller{n}"} for n in range(20)]
    sellers.append({"external_id": "u-mia", "name": "mia"})
    rows: dict[str, list[dict[str, Any]]] = {
        "users": sellers,
        "groups": [
            {
                "external_id": f"g{n}",
                "name": f"Group {n}",
                "members": [{"user": f"u{m}"} for m in range(n, 20, 5)]
                + ([{"user": "u-mia"}] if n == 1 else []),
            }
            for n in range(5)
        ],
        "listings": [
            {
                "external_id": f"l{n}",
                "seller": f"u{n % 20}",
                "title": f"{rng.choice(['red', 'old', 'big'])} {WORDS[n % len(WORDS)]}",
                "price": str(rng.randint(5, 400)),
                "category": WORDS[n % len(WORDS)],
                "status": "active" if n % 7 else "sold",
                "location": (place := rng.choice(PLACES))[0],
                "lat": place[1],
                "lon": place[2],
            }
            for n in range(size)
        ],
        "posts": [
            {
                "external_id": f"p{n}",
                "author": f"u{n % 20}",
                "text": f"Anyone selling a {WORDS[n % len(WORDS)]}?",
                **({"group": f"g{n % 5}"} if n % 2 else {}),
            }
            for n in range(size // 5)
        ],
        "reels": [
            {
                "external_id": f"r{n}",
                "creator": f"u{n % 20}",
                "caption": f"Running by the river, part {n}",
                "transcript": "we run along the river at dawn",
                "duration_s": 30,
                "media_url": f"https://videos.example/r{n}.mp4",
                "visibility": "public" if n % 3 else "group",
                **({"group": f"g{n % 5}"} if n % 3 == 0 else {}),
            }
            for n in range(size // 5)
        ],
    }
    with services.sessions.begin() as db:
        for kind, batch in rows.items():
            ingest(db, KINDS[kind], batch, settings=services.settings.ingest, actor=None)
    services.indexer.sync_all()
    with services.sessions.begin() as db:
        mia = find_user(db, "mia")
        assert mia is not None
        keys["mia"] = issue_key(db, mia, label="test")
    client = TestClient(create_app(services=services))
    client.__enter__()
    # the member watched and liked a few reels: recommendations start from a profile
    interactions = [
        {
            "external_id": f"i{n}",
            "user": "u-mia",
            "target_kind": "reel",
            "target": f"r{n}",
            "action": "like",
        }
        for n in range(1, 6)
    ]
    response = client.post(
        "/api/interactions:batch", json=interactions, headers=auth(keys["admin"])
    )
    assert response.status_code == 200, response.text
    return services, client, keys, SqlWork(services.engine)


@pytest.fixture
def towns(tmp_path: Path) -> Iterator[list[tuple[Services, TestClient, dict[str, str], SqlWork]]]:
    built = [build(tmp_path / "small", 200), build(tmp_path / "big", 2000)]
    yield built
    for services, client, _, _ in built:
        client.__exit__(None, None, None)
        asyncio.run(services.aclose())


REQUESTS = [
    ("/api/listings/search", {"q": "bike"}),
    ("/api/listings/search", {"q": "old lamp", "max_price": 150, "near": "Alfama"}),
    ("/api/listings/search", {"q": "table", "category": "table", "condition": "good"}),
    ("/api/search/sources", {"q": "selling a bike"}),
    ("/api/reels/recommendations", {"context": "running by the river"}),
    ("/api/reels/recommendations", {}),
]


def work(town: Any, path: str, params: dict[str, Any]) -> tuple[int, int]:
    _, client, keys, sql = town
    assert client.get(path, params=params, headers=auth(keys["mia"])).status_code == 200
    sql.reset()  # the first call may fill caches (place names, categories)
    response = client.get(path, params=params, headers=auth(keys["mia"]))
    assert response.status_code == 200, response.text
    return len(sql.statements), sql.vm_steps


@pytest.mark.parametrize(("path", "params"), REQUESTS)
def test_reads_cost_the_same_in_a_town_ten_times_bigger(
    towns: list[Any], path: str, params: dict[str, Any]
) -> None:
    (small_statements, small_steps), (big_statements, big_steps) = (
        work(town, path, params) for town in towns
    )
    # the same statements (sources fetch the rows of the best items once per kind among them:
    # one to three queries, whichever kinds win); an N+1 would add one per item
    assert big_statements <= small_statements + 2, (small_statements, big_statements)
    # ten times the rows; the work may grow a little (deeper B-trees), never in proportion
    assert big_steps < 2 * small_steps + 2000, (small_steps, big_steps)


def test_a_delete_prunes_only_what_was_deleted(towns: list[Any]) -> None:
    services, client, keys, sql = towns[1]
    calls: list[tuple[str, Any]] = []
    vectors = services.vectors
    real_delete, real_hashes = vectors.delete, vectors.hashes
    vectors.delete = lambda c, ids: (calls.append(("delete", (c, list(ids)))), real_delete(c, ids))[
        1
    ]
    vectors.hashes = lambda c: (calls.append(("hashes", c)), real_hashes(c))[1]
    sql.reset()
    response = client.delete("/api/listings/l5", headers=auth(keys["admin"]))
    assert response.status_code == 200
    with services.sessions() as db:
        from sqlalchemy import select

        from townsquare.storage.social_tables import Listing

        assert db.scalar(select(Listing).where(Listing.external_id == "l5")) is None
    assert [name for name, _ in calls] == ["delete"]  # never a scan of the whole index
    assert calls[0][1][0] == "listings" and len(calls[0][1][1]) == 1
    assert sql.vm_steps < 50_000  # no pass over the three tables' ids


def test_creator_examples_are_embedded_once_and_updated_incrementally(tmp_path: Path) -> None:
    embed = CountingEmbeddings()
    # no query cache: this counts what the examples' index costs, query included
    settings = make_settings(tmp_path, embed={"backend": "fake", "cache_size": 0})
    services = Services.build(settings, text=FakeText(), embed=embed)
    admin = add_user(services, "ada", role="admin")
    pairs = 40
    messages = []
    for n in range(pairs):
        messages.append(
            {
                "external_id": f"f{n}",
                "thread": "t1",
                "author": "u-fan",
                "text": f"question {n} about bread",
            }
        )
        messages.append(
            {
                "external_id": f"c{n}",
                "thread": "t1",
                "author": "u-creator",
                "text": f"answer {n} about bread",
            }
        )
    with TestClient(create_app(services=services)) as client:
        for kind, body in (
            (
                "users",
                [
                    {"external_id": "u-fan", "name": "fan"},
                    {"external_id": "u-creator", "name": "cora", "role": "creator"},
                ],
            ),
            ("dm-threads", [{"external_id": "t1", "participants": ["u-fan", "u-creator"]}]),
            (
                "dm-messages",
                [
                    *messages,
                    {
                        "external_id": "f-last",
                        "thread": "t1",
                        "author": "u-fan",
                        "text": "do you ship rye?",
                    },
                ],
            ),
        ):
            assert (
                client.post(f"/api/{kind}:batch", json=body, headers=auth(admin)).status_code == 200
            )
        with services.sessions.begin() as db:
            creator = find_user(db, "cora")
            key = issue_key(db, creator, label="test")
        assert (
            client.put(
                "/api/creators/me/style", json={"enabled": True}, headers=auth(key)
            ).status_code
            == 200
        )

        def suggest() -> int:
            before = embed.texts
            response = client.post("/api/dm-threads/t1/suggested-replies", headers=auth(key))
            assert response.status_code == 200, response.text
            return embed.texts - before

        assert suggest() == pairs + 1  # the history once, and the fan's question
        assert suggest() == 1  # nothing new: only the question
        new = [
            {"external_id": "f-new", "thread": "t1", "author": "u-fan", "text": "and on sunday?"},
            {"external_id": "c-new", "thread": "t1", "author": "u-creator", "text": "sunday too!"},
            {"external_id": "f-next", "thread": "t1", "author": "u-fan", "text": "great, thanks"},
        ]
        assert (
            client.post("/api/dm-messages:batch", json=new, headers=auth(admin)).status_code == 200
        )
        # one new exchange (f-new, c-new: f-last was followed by the fan again), the question
        assert suggest() == 2
    asyncio.run(services.aclose())
