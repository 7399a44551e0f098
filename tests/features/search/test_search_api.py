"""Marketplace search over HTTP (fake embeddings: texts sharing words are similar)."""

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import auth
from tests.town import build_town
from townsquare.backends.fake import FakeText
from townsquare.services import Services

LISTINGS = [
    {
        "external_id": "bike-red",
        "seller": "u-member",
        "title": "Red kids bike",
        "price": "90",
        "category": "bikes",
        "condition": "good",
        "location": "Alfama",
        "lat": 38.7115,
        "lon": -9.1300,
        "attributes": {"brand": "Btwin", "frame_size": "16 in"},
    },
    {
        "external_id": "bike-road",
        "seller": "u-creator",
        "title": "Road bike carbon",
        "price": "900",
        "category": "bikes",
        "condition": "like_new",
        "location": "Belém",
        "lat": 38.6979,
        "lon": -9.2068,
        "attributes": {"brand": "Trek"},
    },
    {
        "external_id": "bike-cheap",
        "seller": "u-outsider",
        "title": "Old city bike",
        "price": "40",
        "category": "bikes",
        "condition": "fair",
        "location": "Alfama",
        "lat": 38.7120,
        "lon": -9.1310,
    },
    {
        "external_id": "table-oak",
        "seller": "u-outsider",
        "title": "Oak dining table",
        "price": "150",
        "category": "furniture",
        "condition": "good",
        "location": "Graça",
        "lat": 38.7180,
        "lon": -9.1310,
        "attributes": {"material": "oak"},
    },
    {
        "external_id": "bike-sold",
        "seller": "u-outsider",
        "title": "Blue kids bike",
        "price": "70",
        "category": "bikes",
        "status": "sold",
        "location": "Alfama",
        "lat": 38.7115,
        "lon": -9.13,
    },
]


@pytest.fixture
def keys(services: Services, client: TestClient) -> dict[str, str]:
    keys = build_town(services)
    response = client.post("/api/listings:batch", json=LISTINGS, headers=auth(keys["admin"]))
    assert response.status_code == 200, response.text
    return keys


def search(client: TestClient, key: str, **params: Any) -> Any:
    response = client.get("/api/listings/search", params=params, headers=auth(key))
    assert response.status_code == 200, response.text
    return response.json()


def ids(results: Any) -> list[str]:
    return [hit["id"] for hit in results["data"]]


def test_ingested_listings_are_searchable_at_once(client: TestClient, keys: dict[str, str]) -> None:
    results = search(client, keys["outsider"], q="kids bike")
    assert set(ids(results)[:2]) == {"bike-red", "l-active"}  # both are kids' bikes
    assert "bike-sold" not in ids(results)  # not active
    assert "l1" not in ids(results)  # someone else's draft
    red = next(hit for hit in results["data"] if hit["id"] == "bike-red")
    assert set(red["matched"]) >= {"title", "category"}


def test_filters_are_hard(client: TestClient, keys: dict[str, str]) -> None:
    key = keys["outsider"]
    assert set(ids(search(client, key, q="bike", max_price=100))) <= {
        "bike-red",
        "bike-cheap",
        "l-active",
    }
    assert ids(search(client, key, q="oak table", category="bikes"))[:1] != ["table-oak"]
    assert "table-oak" not in ids(search(client, key, q="oak dining table", category="bikes"))
    near = search(client, key, q="bike", near="Alfama", radius_km=0.5)  # Graça is 0.73 km away
    assert set(ids(near)) == {"bike-red", "bike-cheap"}
    assert all(hit["distance_km"] <= 0.5 for hit in near["data"])
    coords = search(client, key, q="bike", near="38.6979,-9.2068", radius_km=0.5)
    assert ids(coords) == ["bike-road"]
    assert ids(search(client, key, q="bike", condition="like_new")) == ["bike-road"]
    assert ids(search(client, key, q="bike", min_price=100, max_price=1000)) == ["bike-road"]


def test_pages(client: TestClient, keys: dict[str, str]) -> None:
    first = search(client, keys["admin"], q="bike", page_size=2)
    second = search(client, keys["admin"], q="bike", page_size=2, page=2)
    assert len(first["data"]) == 2 and not set(ids(first)) & set(ids(second))
    assert first["total"] >= 4
    past = search(client, keys["admin"], q="bike", page=99)
    assert past["data"] == [] and past["total"] == first["total"]


def test_deleted_and_edited_listings_follow_the_index(
    client: TestClient, keys: dict[str, str], services: Services
) -> None:
    admin = auth(keys["admin"])
    assert "bike-red" in ids(search(client, keys["outsider"], q="red kids bike"))
    client.delete("/api/listings/bike-red", headers=admin)
    assert "bike-red" not in ids(search(client, keys["outsider"], q="red kids bike"))
    assert services.vectors.vector("listings", 999_999) is None
    edited = {**LISTINGS[3], "title": "Walnut writing desk"}
    edited.pop("external_id")
    client.put("/api/listings/table-oak", json=edited, headers=admin)
    assert ids(search(client, keys["outsider"], q="walnut desk"))[0] == "table-oak"
    # a member deleted everywhere takes their listings out of search too
    client.delete("/api/users/u-outsider", headers=admin)
    remaining = ids(search(client, keys["member"], q="bike table desk"))
    assert not {"bike-cheap", "table-oak"} & set(remaining)
    with services.sessions() as db:
        from sqlalchemy import text

        table = (  # SQLite: one FTS5 table per collection; PostgreSQL: one table
            "search_fts_listings"
            if db.get_bind().dialect.name == "sqlite"
            else "search_fts WHERE collection = 'listings' AND"
        )
        where = "WHERE" if table == "search_fts_listings" else ""
        count = f"SELECT count(*) FROM {table} {where} title LIKE '%Walnut%'"
        assert db.execute(text(count)).scalar() == 0


@pytest.mark.parametrize(
    ("params", "field", "says"),
    [
        ({"q": ""}, "q", "empty"),
        ({"q": "x" * 301}, "q", "search.max_query_chars"),
        ({"q": "bike", "category": "spaceships"}, "category", "bikes"),
        ({"q": "bike", "near": "Atlantis"}, "near", "Alfama"),
        ({"q": "bike", "condition": "mint"}, "condition", "like_new"),
        ({"q": "bike", "max_price": -1}, "max_price", ""),
        ({"q": "bike", "page_size": 500}, "page_size", "search.max_page_size"),
    ],
)
def test_bad_queries_are_422_naming_the_fix(
    client: TestClient, keys: dict[str, str], params: dict[str, Any], field: str, says: str
) -> None:
    response = client.get("/api/listings/search", params=params, headers=auth(keys["member"]))
    assert response.status_code == 422
    error = response.json()["error"]
    # a list parameter names its item: condition.0
    assert error["field"].split(".")[0] == field and says in error["message"]


def test_understood_filters_never_override_explicit_ones(
    client: TestClient, keys: dict[str, str], fake_text: FakeText
) -> None:
    fake_text.enqueue('{"max_price": 50, "min_price": null, "near": "Alfama", "condition": null}')
    results = search(client, keys["outsider"], q="cheap bike in alfama under 50", understand="true")
    # 'bike' names the category 'bikes' as a whole
    assert results["understood"] == {"max_price": 50.0, "near": "Alfama", "category": "bikes"}
    assert results["searched"] == "bike"
    assert ids(results) == ["bike-cheap"]
    fake_text.enqueue(
        '{"max_price": 50, "min_price": null, "near": "Atlantis", "condition": "new"}'
    )
    explicit = search(
        client,
        keys["outsider"],
        q="bike under 50",
        understand="true",
        max_price=1000,
        category="bikes",
    )
    # Atlantis is unknown and "new" is not in the words: a small model's inventions are dropped
    assert explicit["understood"] == {}
    assert explicit["filters"]["max_price"] == 1000


def test_sources_respect_access(client: TestClient, keys: dict[str, str]) -> None:
    member = client.get(
        "/api/search/sources", params={"q": "bakers only"}, headers=auth(keys["member"])
    ).json()
    assert [s["n"] for s in member["sources"]] == list(range(1, len(member["sources"]) + 1))
    assert ("post", "p1") in {(s["kind"], s["id"]) for s in member["sources"]}
    outsider = client.get(
        "/api/search/sources", params={"q": "bakers only"}, headers=auth(keys["outsider"])
    ).json()
    assert ("post", "p1") not in {(s["kind"], s["id"]) for s in outsider["sources"]}
    assert all(s["url"].startswith("/api/") for s in outsider["sources"])


@pytest.mark.parametrize(
    ("query", "read"),
    [
        ("a sturdy kids bike under 150 near Alfama", {"max_price": 150.0, "near": "Alfama"}),
        (
            "sofa between 20 and 50 euros in graca",
            {"min_price": 20.0, "max_price": 50.0, "near": "Graça"},
        ),
        (
            "like new laptop €100-200",
            {"min_price": 100.0, "max_price": 200.0, "condition": ["like_new"]},
        ),
        ("phone over 80 near principe real", {"min_price": 80.0, "near": "Príncipe Real"}),
        ("a bike for 2 to 5 year olds", {}),
        ("broken tv", {"condition": ["for_parts"]}),
        ("desk, new or like new, max 120", {"max_price": 120.0, "condition": ["new", "like_new"]}),
        ("a laptop that isn't for parts", {"condition": ["new", "like_new", "good", "fair"]}),
        ("anything but fair", {"condition": ["new", "like_new", "good", "for_parts"]}),
        ("sofa in good condition or better", {"condition": ["new", "like_new", "good"]}),
        ("a good bike for a fair price", {}),
        ("speaker, budget 60", {"max_price": 60.0}),
        ("40 euros or less", {"max_price": 40.0}),
        ("headphones no more than 45 euros", {"max_price": 45.0}),
        ("a lamp, nothing over 30", {"max_price": 30.0}),
        ("chair, 25 euros max", {"max_price": 25.0}),
        ("rug in good shape at least", {"condition": ["new", "like_new", "good"]}),
        ("a printer that works", {"condition": ["new", "like_new", "good", "fair"]}),
        ("printer not working", {"condition": ["for_parts"]}),
    ],
)
def test_the_rules_read_filters_from_the_wording(query: str, read: dict[str, Any]) -> None:
    from townsquare.features.search.query import read_filters

    assert read_filters(query, ["Alfama", "Graça", "Príncipe Real", "Baixa"]) == read


def test_an_overlong_assistant_message_is_refused_before_any_tool_runs(
    client: TestClient, keys: dict[str, str], services: Services
) -> None:
    ran: list[str] = []
    services.settings.assistant.tool_mode = "router"

    async def spy(content: str, *args: Any, **kwargs: Any) -> None:
        ran.append(content)

    services.agent.tool_answer = spy  # type: ignore[method-assign]
    member = auth(keys["member"])
    cid = client.post("/api/conversations", json={}, headers=member).json()["id"]
    limit = services.settings.limits.max_message_chars
    response = client.post(
        f"/api/conversations/{cid}/messages", json={"content": "x" * (limit + 1)}, headers=member
    )
    assert response.status_code == 422 and ran == []


def test_several_conditions_are_one_filter(client: TestClient, keys: dict[str, str]) -> None:
    both = search(client, keys["outsider"], q="bike", condition=["like_new", "fair"])
    assert set(ids(both)) == {"bike-road", "bike-cheap"}
    assert both["filters"]["condition"] == ["like_new", "fair"]
    read = search(client, keys["outsider"], q="bike that is not for parts, not fair", understand=1)
    assert read["understood"]["condition"] == ["new", "like_new", "good"]
    assert "bike-cheap" not in ids(read) and "bike-road" in ids(read)


def test_nothing_matches_is_said_with_the_nearest_outside_marked(
    client: TestClient, keys: dict[str, str]
) -> None:
    # the only oak table is 150: under 100 there are bikes, which are no table
    found = search(client, keys["outsider"], q="oak dining table", max_price=100)
    assert found["nothing_matches"] is True
    assert "table-oak" not in ids(found)
    [alternative] = [a for a in found["alternatives"] if a["id"] == "table-oak"]
    assert alternative["outside"] == ["over €100"]
    # a match inside the filters: no such flag, no alternatives
    fine = search(client, keys["outsider"], q="oak dining table", max_price=200)
    assert fine["nothing_matches"] is False and fine["alternatives"] == []
    assert ids(fine)[0] == "table-oak"


def test_a_query_of_only_filters_is_the_filtered_list(
    client: TestClient, keys: dict[str, str]
) -> None:
    found = search(client, keys["outsider"], q="under 60", understand=1)
    assert found["searched"] == "" and found["understood"] == {"max_price": 60.0}
    assert ids(found) == ["bike-cheap"] and found["nothing_matches"] is False


def test_the_core_summary_cites_only_listings_inside_the_filters(
    client: TestClient, keys: dict[str, str], services: Services, fake_text: FakeText
) -> None:
    services.settings.writing = "core"
    calls = len(fake_text.calls)
    response = client.post(
        "/api/search/summary",
        json={"query": "bike", "filters": {"max_price": 60, "condition": ["fair", "good"]}},
        headers=auth(keys["outsider"]),
    )
    assert response.status_code == 200, response.text
    summary = response.json()
    listings = {s["n"]: s for s in summary["sources"] if s["kind"] == "listing"}
    assert listings and {s["id"] for s in listings.values()} <= {"bike-cheap"}
    for sentence in summary["sentences"]:
        [n] = sentence["citations"]
        source = next(s for s in summary["sources"] if s["n"] == n)
        assert source["title"] in sentence["text"] or source["snippet"][:20] in sentence["text"]
    assert "Old city bike: 40 EUR, fair, Alfama." in summary["answer"]
    assert len(fake_text.calls) == calls  # no model call
    bad = client.post(
        "/api/search/summary",
        json={"query": "bike", "filters": {"condition": ["shiny"]}},
        headers=auth(keys["outsider"]),
    )
    assert bad.status_code == 422


def test_the_words_left_are_what_is_searched() -> None:
    from townsquare.features.search.query import core_words

    assert core_words("kettle no more than 20 euros") == "kettle"
    assert core_words("hose reel in Alfama", ["Alfama"]) == "hose reel"


class _Listings:
    """A few listings' vectors and categories: the two calls ``infer_category`` makes."""

    def __init__(self, embedder: Any, items: list[tuple[str, str]]) -> None:
        self.vectors = embedder.embed_sync([title for title, _ in items])
        self.categories = [category for _, category in items]

    def search(self, collection: str, query: Any, k: int, where: Any) -> list[tuple[int, float]]:
        similarity = self.vectors @ query
        order = sorted(range(len(similarity)), key=lambda i: -similarity[i])[:k]
        return [(i, float(similarity[i])) for i in order]

    def filter_ids(self, collection: str, ids: Any, where: Any) -> list[int]:
        return [i for i in ids if self.categories[i] == where.value]


def test_the_category_is_the_near_cluster_s_then_the_one_named() -> None:
    from townsquare.backends.fake import FakeEmbeddings
    from townsquare.features.search.query import infer_category

    embedder = FakeEmbeddings(dimensions=256)
    listings = _Listings(
        embedder,
        [
            ("balance bike wooden", "kids"),
            ("balance bike red", "kids"),
            ("balance bike small", "kids"),
            ("road bike carbon", "bikes"),
            ("city bike old", "bikes"),
            ("stand mixer", "kitchen"),
            ("toaster", "kitchen"),
            ("wooden toy kitchen", "kids"),
        ],
    )
    known = ["bikes", "kids", "kitchen"]

    def infer(core: str, **tuning: Any) -> str | None:
        return infer_category(
            core,
            known=known,
            embedder=embedder,
            vectors=listings,  # type: ignore[arg-type]
            neighbours=10,
            share=0.6,
            min_similarity=tuning.pop("min_similarity", 0.25),
            margin=0.1,
            **tuning,
        )

    assert infer("bikes") == "bikes"  # the words are a category's name
    # 'bike' names a category, but the listings nearest to 'balance bike' are for kids
    assert infer("balance bike") == "kids"
    # nothing near 'stuff': the one category named decides, unless names are not asked for
    assert infer("kitchen stuff") == "kitchen"
    assert infer("kitchen stuff", use_named=False) is None
    assert infer("kitchen stuff", min_similarity=0.9, use_named=False) is None
    assert infer("spaceship") is None  # nothing near, nothing named
