"""Search result summaries: every marker points at a supplied source, every sentence is cited."""

import re

import pytest
from fastapi.testclient import TestClient

from tests.conftest import auth
from tests.town import build_town
from townsquare.backends.fake import FakeText
from townsquare.features.search.summary import cited
from townsquare.services import Services

MARKER = re.compile(r"\[(\d+)\]")


@pytest.fixture
def keys(services: Services) -> dict[str, str]:
    return build_town(services)


def test_uncited_sentences_and_foreign_markers_are_removed() -> None:
    raw = {
        "sentences": [
            {"text": "A kids bike is for sale [7].", "sources": [1, 9]},
            {"text": "Nobody knows.", "sources": []},
            {"text": "Second one.", "sources": [2]},
        ]
    }
    kept, removed = cited(raw, 2)
    assert [(s.text, s.citations) for s in kept] == [
        ("A kids bike is for sale.", [1]),
        ("Second one.", [2]),
    ]
    assert removed == 1
    with pytest.raises(ValueError):
        cited({"sentences": [{"text": "x", "sources": [5]}]}, 2)


def test_summary_over_http(client: TestClient, keys: dict[str, str], fake_text: FakeText) -> None:
    fake_text.enqueue(
        '{"sentences": [{"text": "There is a kids bike.", "sources": [1]}, '
        '{"text": "Made up.", "sources": []}]}'
    )
    body = client.post(
        "/api/search/summary", json={"query": "kids bike"}, headers=auth(keys["member"])
    ).json()
    assert body["sources"] and body["removed_sentences"] == 1
    numbers = {int(n) for n in MARKER.findall(body["answer"])}
    assert numbers and numbers <= {s["n"] for s in body["sources"]}
    assert body["answer"] == "There is a kids bike. [1]"
    prompt = fake_text.calls[-1][0][0].content
    assert "[1]" in prompt and body["sources"][0]["title"] in prompt


def test_summary_respects_access(client: TestClient, keys: dict[str, str]) -> None:
    outsider = client.post(
        "/api/search/summary", json={"query": "bakers only"}, headers=auth(keys["outsider"])
    ).json()
    assert ("post", "p1") not in {(s["kind"], s["id"]) for s in outsider["sources"]}
    assert (
        client.post(
            "/api/search/summary", json={"query": ""}, headers=auth(keys["member"])
        ).status_code
        == 422
    )


def test_nothing_to_summarise(client: TestClient, member_key: str, fake_text: FakeText) -> None:
    nothing = client.post(
        "/api/search/summary", json={"query": "kids bike"}, headers=auth(member_key)
    ).json()
    assert nothing["sources"] == [] and nothing["answer"] == "" and nothing["generation_id"] is None
    assert fake_text.calls == []  # no sources: the model is not asked to invent an answer
