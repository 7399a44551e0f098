"""Reel recommendations and the assistant's reels tool."""

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.conftest import auth
from tests.town import build_town
from townsquare.features.reels.service import mmr
from townsquare.services import Services

REELS = (
    [
        {
            "external_id": f"bake-{n}",
            "creator": "u-creator",
            "duration_s": 30,
            "media_url": f"https://v/bake{n}.mp4",
            "caption": f"Sourdough bread baking {n}",
            "tags": ["baking", "bread"],
        }
        for n in range(4)
    ]
    + [
        {
            "external_id": f"run-{n}",
            "creator": "u-creator",
            "duration_s": 30,
            "media_url": f"https://v/run{n}.mp4",
            "caption": f"River running route {n}",
            "tags": ["running"],
        }
        for n in range(4)
    ]
    + [
        {
            "external_id": "secret-bake",
            "creator": "u-moderator",
            "duration_s": 20,
            "visibility": "group",
            "group": "g1",
            "media_url": "https://v/secret.mp4",
            "caption": "Bakers only sourdough bread baking",
            "tags": ["baking"],
        },
    ]
)


@pytest.fixture
def keys(services: Services, client: TestClient) -> dict[str, str]:
    keys = build_town(services)
    assert (
        client.post("/api/reels:batch", json=REELS, headers=auth(keys["admin"])).status_code == 200
    )
    return keys


def recommend(client: TestClient, key: str, **params: object) -> list[str]:
    response = client.get("/api/reels/recommendations", params=params, headers=auth(key))
    assert response.status_code == 200, response.text
    return [card["id"] for card in response.json()["data"]]


def test_context_drives_relevance_and_group_reels_stay_in_the_group(
    client: TestClient, keys: dict[str, str]
) -> None:
    outsider = recommend(client, keys["outsider"], context="sourdough bread baking", limit=4)
    assert outsider and all(i.startswith("bake-") for i in outsider[:3])
    assert "secret-bake" not in recommend(
        client, keys["outsider"], context="bakers only sourdough", limit=20
    )
    assert "r1" not in recommend(client, keys["creator"], context="our loaves", limit=20)
    assert "secret-bake" in recommend(
        client, keys["member"], context="bakers only sourdough", limit=20
    )


def test_seen_and_hidden_are_excluded_and_likes_shape_the_profile(
    client: TestClient, keys: dict[str, str]
) -> None:
    admin = auth(keys["admin"])
    events = [
        {
            "external_id": "e1",
            "user": "u-outsider",
            "target_kind": "reel",
            "target": "run-0",
            "action": "like",
        },
        {
            "external_id": "e2",
            "user": "u-outsider",
            "target_kind": "reel",
            "target": "run-1",
            "action": "save",
        },
        {
            "external_id": "e3",
            "user": "u-outsider",
            "target_kind": "reel",
            "target": "bake-0",
            "action": "hide",
        },
    ]
    assert client.post("/api/interactions:batch", json=events, headers=admin).status_code == 200
    picks = recommend(client, keys["outsider"], limit=3)  # no context: the profile decides
    assert not {"run-0", "run-1", "bake-0"} & set(picks)
    assert picks[0].startswith("run-")


def test_mmr_prefers_variety() -> None:
    def unit(x: float, y: float) -> np.ndarray:
        v = np.array([x, y], dtype=np.float32)
        return v / np.linalg.norm(v)

    query = unit(1, 1)
    twin, a, b = unit(1, 0.05), unit(1, 0), unit(-0.05, 1)  # relevance: twin > a > b
    by_relevance = sorted([(1, twin), (2, a), (3, b)], key=lambda c: -float(c[1] @ query))
    assert [i for i, _ in by_relevance[:2]] == [1, 2]
    picked = mmr(query, [(1, twin), (2, a), (3, b)], 2)
    assert [i for i, _ in picked] == [1, 3]  # a is almost the twin: b adds more


def test_bad_context_is_422(client: TestClient, keys: dict[str, str]) -> None:
    response = client.get(
        "/api/reels/recommendations", params={"context": "x" * 400}, headers=auth(keys["member"])
    )
    assert (
        response.status_code == 422
        and "search.max_query_chars" in response.json()["error"]["message"]
    )


def test_mmr_never_repeats_the_same_content() -> None:
    a = np.array([1.0, 0.0], dtype=np.float32)
    b = np.array([0.6, 0.8], dtype=np.float32)
    assert [i for i, _ in mmr(a, [(1, a), (2, a.copy()), (3, b)], 3)] == [1, 3]
