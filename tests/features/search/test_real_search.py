"""Search on the demo town with the real bundled embedding model (structure and rules, not
wording)."""

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import auth, make_settings
from townsquare.app import create_app
from townsquare.backends.fake import FakeText
from townsquare.backends.sentence_embed import SentenceEmbeddings
from townsquare.services import Services
from townsquare.social.demo import seed

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def town(
    tmp_path_factory: pytest.TempPathFactory, real_embed: SentenceEmbeddings
) -> Iterator[tuple[TestClient, dict[str, str]]]:
    services = Services.build(
        make_settings(tmp_path_factory.mktemp("real")), text=FakeText(), embed=real_embed
    )
    with services.sessions.begin() as db:
        keys = seed(db, services.settings.ingest)
    counts = services.indexer.sync_all()
    assert counts["listings"]["indexed"] == 500
    with TestClient(create_app(services=services)) as client:
        yield client, keys
    asyncio.run(services.aclose())


def hits(client: TestClient, key: str, **params: Any) -> list[dict[str, Any]]:
    response = client.get("/api/listings/search", params=params, headers=auth(key))
    assert response.status_code == 200, response.text
    return response.json()["data"]


def test_meaning_finds_what_words_alone_would_miss(town: tuple[TestClient, dict[str, str]]) -> None:
    client, keys = town
    found = hits(client, keys["mia"], q="something for a toddler to ride", page_size=5)
    assert len(found) == 5
    assert sum(h["category"] in {"bikes", "kids"} for h in found) >= 4
    assert all(h["price"] and h["currency"] == "EUR" for h in found)


def test_filters_stay_hard_with_the_real_model(town: tuple[TestClient, dict[str, str]]) -> None:
    client, keys = town
    found = hits(client, keys["mia"], q="kids bike", category="kitchen", max_price=100)
    assert all(h["category"] == "kitchen" and float(h["price"]) <= 100 for h in found)
    near = hits(client, keys["mia"], q="guitar", near="Belém", radius_km=1.0)
    assert near and all(h["distance_km"] <= 1.0 for h in near)


def test_reels_for_a_conversation(town: tuple[TestClient, dict[str, str]]) -> None:
    client, keys = town
    response = client.get(
        "/api/reels/recommendations",
        params={"context": "how do I keep my basil plant alive", "limit": 5},
        headers=auth(keys["mia"]),
    )
    cards = response.json()["data"]
    assert len(cards) == 5
    assert sum("garden" in c["tags"] for c in cards) >= 2
    assert len({c["caption"] for c in cards}) == 5  # MMR: no repeats


def test_deleted_listing_never_appears(town: tuple[TestClient, dict[str, str]]) -> None:
    client, keys = town
    first = hits(client, keys["mia"], q="espresso machine", page_size=3)[0]
    admin_key = client.app.state.services  # type: ignore[attr-defined]
    from tests.conftest import add_user

    admin = add_user(admin_key, "search-admin", role="admin")
    assert client.delete(f"/api/listings/{first['id']}", headers=auth(admin)).status_code == 200
    after = hits(client, keys["mia"], q="espresso machine", page_size=50)
    assert first["id"] not in {h["id"] for h in after}


def test_summary_with_the_real_models(
    town: tuple[TestClient, dict[str, str]], real_text: "object"
) -> None:
    client, keys = town
    services = client.app.state.services  # type: ignore[attr-defined]
    services.guarded_text.backend = real_text  # the summary needs the real text model too
    # the 135M model sometimes fails the structure twice (a clear 502): take the first answer
    for query in ("espresso machine", "kids bike", "acoustic guitar"):
        response = client.post(
            "/api/search/summary", json={"query": query}, headers=auth(keys["mia"])
        )
        if response.status_code != 502:
            break
        assert response.json()["error"]["code"] == "invalid_output"
    assert response.status_code == 200, response.text
    body = response.json()
    supplied = {s["n"] for s in body["sources"]}
    assert body["sentences"] and supplied
    for sentence in body["sentences"]:
        assert sentence["citations"] and set(sentence["citations"]) <= supplied
    import re

    assert {int(n) for n in re.findall(r"\[(\d+)\]", body["answer"])} <= supplied
    for source in body["sources"]:  # every source is something mia may open
        assert client.get(source["url"], headers=auth(keys["mia"])).status_code == 200


def test_gibberish_finds_no_sources_and_real_queries_do(
    town: tuple[TestClient, dict[str, str]],
) -> None:
    """The similarity floor holds for sources (it let a gibberish query through with 8)."""
    client, keys = town
    key = next(iter(keys.values()))
    for query in ["xqzv blorp fnarg", "qwertyuiop", "wub wub"]:
        response = client.get("/api/search/sources", params={"q": query}, headers=auth(key))
        assert response.json()["sources"] == [], query
    for query in ["velvet sofa", "a bike for my daughter"]:
        response = client.get("/api/search/sources", params={"q": query}, headers=auth(key))
        assert response.json()["sources"], query
    # queries the floor was not chosen on: most gibberish finds nothing (word-like nonsense such
    # as "vorpal brillig toves" still gets through), every real query finds something
    gibberish = ["plomb vrrk tazzle", "qqq zzz xxx", "snorf gleep", "mxyzptlk", "aaaa bbbb"]
    gibberish += ["grunk", "ptth wqrx", "uuuuu", "glarb", "hmmmm", "jjjjj kkkk llll"]
    found = [
        q
        for q in gibberish
        if client.get("/api/search/sources", params={"q": q}, headers=auth(key)).json()["sources"]
    ]
    assert len(found) <= 2, found
    for query in ["something to sit on", "warm jacket for winter", "toys for toddlers"]:
        response = client.get("/api/search/sources", params={"q": query}, headers=auth(key))
        assert response.json()["sources"], query


def test_the_documented_understood_query(town: tuple[TestClient, dict[str, str]]) -> None:
    """The documented example: the wording's price and place become filters, and the
    category comes from the town's listings nearest to 'sturdy kids bike'."""
    client, keys = town
    key = next(iter(keys.values()))
    response = client.get(
        "/api/listings/search",
        params={"q": "a sturdy kids bike under 150 near Alfama", "understand": "true"},
        headers=auth(key),
    ).json()
    assert response["understood"] == {"max_price": 150.0, "near": "Alfama", "category": "bikes"}
    assert response["searched"] == "sturdy kids bike"
    assert response["data"] and all(float(hit["price"]) <= 150 for hit in response["data"])
    assert all(hit["category"] == "bikes" for hit in response["data"])
