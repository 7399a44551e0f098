"""The extractive core of catch-up and topics, and the junk detector (issue 25)."""

from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.conftest import auth
from tests.town import build_town
from townsquare.features.groups import extract
from townsquare.features.junk import junk_reasons
from townsquare.services import Services

MESSAGES = [
    {
        "id": "m1",
        "pk": 1,
        "reply_to_pk": None,
        "author": "Helena",
        "text": "Has anyone tried the new loop past Alfama? It is 5 km and mostly flat.",
    },
    {"id": "m2", "pk": 2, "reply_to_pk": 1, "author": "Nuno", "text": "Yes! Lovely at sunrise."},
    {
        "id": "m3",
        "pk": 3,
        "reply_to_pk": None,
        "author": "Lara",
        "text": "Registration for the Belém Night Run closes on Friday. Who is in?",
    },
    {
        "id": "m4",
        "pk": 4,
        "reply_to_pk": 3,
        "author": "Rui",
        "text": "Signed up for the Belém Night Run.",
    },
    {"id": "m5", "pk": 5, "reply_to_pk": 9, "author": "Mia", "text": "ok"},
]


def vectors(n: int) -> Any:
    rng = np.random.default_rng(0)
    v = rng.normal(size=(n, 8)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_threads_follow_reply_links_inside_the_window() -> None:
    assert extract.threads(MESSAGES) == [[0, 1], [2, 3], [4]]


def test_catch_up_points_are_real_sentences_with_who_said_them() -> None:
    points = extract.catch_up_points(MESSAGES, vectors(len(MESSAGES)), count=2)
    texts = {m["id"]: m["text"] for m in MESSAGES}
    assert len(points) == 2
    for point in points:
        author, quote = point["text"].split(": “", 1)
        quote = quote.split("”", 1)[0]
        first = point["message_ids"][0]
        assert quote in texts[first] and author == next(
            m["author"] for m in MESSAGES if m["id"] == first
        )
        assert junk_reasons(point["text"], sources=texts.values()) == []
    # one point per thread first: the two threads with openers, not two messages of one
    assert {p["message_ids"][0] for p in points} == {"m1", "m3"}
    opener = next(p for p in points if p["message_ids"][0] == "m1")
    assert opener["message_ids"] == ["m1", "m2"] and "replies from Nuno" in opener["text"]


def test_topics_are_named_by_the_threads_own_words() -> None:
    topics = extract.topic_suggestions(MESSAGES, vectors(len(MESSAGES)), count=2)
    window = " ".join(m["text"] for m in MESSAGES).lower()
    assert topics and all(t["topic"].lower() in window for t in topics)
    assert any("Belém Night Run" in t["topic"] for t in topics)
    for topic in topics:
        assert topic["topic"] in topic["opener"] and topic["message_id"] in {"m1", "m3", "m4"}


@pytest.mark.parametrize(
    ("text", "junk"),
    [
        ("Riverside Runners [1][2]", True),
        ("IQL_143825", True),
        ("{1, {2} } 🔥", True),
        ("...", True),
        ("Lovely oak desk [NODE_TAGS] with drawers", True),
        ("Riverslamb Narazino", True),
        ("go go go now", True),
        ("Helena: “Has anyone tried the new loop past Alfama?”", False),
        ("Thanks so much, I will try that recipe this weekend!", False),
    ],
)
def test_the_junk_detector(text: str, junk: bool) -> None:
    assert bool(junk_reasons(text, names=["Riverside Runners"])) is junk


def test_a_url_cannot_open_a_conversation() -> None:
    assert junk_reasons("https://example.com/run is fun, join us", opener=True)
    assert not junk_reasons("Join us on Tuesday, details at https://example.com/run", opener=True)


def test_the_api_answers_from_the_core_by_default(client: TestClient, services: Services) -> None:
    keys = build_town(services)
    services.settings.writing = "core"
    admin = auth(keys["admin"])
    for n, text in enumerate(
        ["Rye flour is at the mill shop on Rua Augusta.", "Thanks, I will buy rye flour there."]
    ):
        response = client.put(
            f"/api/messages/core-{n}",
            json={"group": "g1", "author": "u-member", "text": text},
            headers=admin,
        )
        assert response.status_code in (200, 201), response.text
    member = auth(keys["member"])
    caught = client.get("/api/groups/g1/catch-up", headers=member).json()
    assert caught["generation_id"] and caught["points"]  # recorded: members can rate it
    assert all("“" in p["text"] and p["message_ids"] for p in caught["points"])
    topics = client.post("/api/groups/g1/topic-suggestions", json={"count": 2}, headers=member)
    assert topics.status_code == 200 and topics.json()["generation_id"]
    for topic in topics.json()["topics"]:
        assert topic["topic"] in topic["opener"]


def test_an_empty_group_gets_not_enough_to_suggest_from(
    client: TestClient, services: Services
) -> None:
    keys = build_town(services)
    member = auth(keys["member"])
    for writing in ("core", "model"):  # never invented topics, whoever writes
        services.settings.writing = writing  # type: ignore[assignment]
        response = client.post("/api/groups/g1/topic-suggestions", json={}, headers=member)
        if response.status_code == 200:  # the town's group has messages: empty it first
            admin = auth(keys["admin"])
            for message in client.get("/api/groups/g1/messages", headers=member).json()["data"]:
                client.delete(f"/api/messages/{message['id']}", headers=admin)
            response = client.post("/api/groups/g1/topic-suggestions", json={}, headers=member)
        assert response.status_code == 422, response.text
        assert "Not enough to suggest from" in response.json()["error"]["message"]
