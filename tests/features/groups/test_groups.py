"""Group topic suggestions and catch-up summaries."""

import pytest
from fastapi.testclient import TestClient

from tests.conftest import auth, make_settings
from tests.town import build_town
from townsquare.app import create_app
from townsquare.backends.fake import FakeText
from townsquare.backends.llamacpp import LlamaCppText
from townsquare.services import Services


@pytest.fixture
def keys(services: Services) -> dict[str, str]:
    return build_town(services)


def test_topics_already_discussed_are_dropped(
    client: TestClient, keys: dict[str, str], fake_text: FakeText
) -> None:
    fake_text.enqueue(
        '{"topics": [{"topic": "Who has rye flour", "opener": "Where do you buy rye?"}, '
        '{"topic": "Summer picnic", "opener": "Who is up for a picnic by the river?"}, '
        '{"topic": "summer picnic", "opener": "Picnic again?"}]}'
    )
    response = client.post(
        "/api/groups/g1/topic-suggestions", json={"count": 3}, headers=auth(keys["member"])
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [t["topic"] for t in body["topics"]] == ["Summer picnic"]
    assert body["dropped"] == 2
    prompt = fake_text.calls[-1][0][0].content
    assert "Who has rye flour?" in prompt  # the model read the recent messages


def test_catch_up_points_cite_messages(
    client: TestClient, keys: dict[str, str], fake_text: FakeText
) -> None:
    fake_text.enqueue(
        '{"points": [{"text": "Someone asked where to find rye flour.", "messages": [1, 2]}, '
        '{"text": "Uncited gossip.", "messages": []}]}'
    )
    body = client.get(
        "/api/groups/g1/catch-up",
        params={"since": "2000-01-01T00:00:00Z"},
        headers=auth(keys["moderator"]),
    ).json()
    assert body["messages"] == 2
    assert body["points"] == [
        {"text": "Someone asked where to find rye flour.", "message_ids": ["m1", "m2"]}
    ]
    later = client.get(
        "/api/groups/g1/catch-up",
        params={"since": "2999-01-01T00:00:00Z"},
        headers=auth(keys["member"]),
    ).json()
    assert later["messages"] == 0 and later["points"] == [] and later["generation_id"] is None


def test_members_only_and_bad_input(client: TestClient, keys: dict[str, str]) -> None:
    assert client.get("/api/groups/g1/catch-up", headers=auth(keys["outsider"])).status_code == 404
    assert (
        client.post(
            "/api/groups/g1/topic-suggestions", json={}, headers=auth(keys["creator"])
        ).status_code
        == 404
    )
    assert (
        client.post(
            "/api/groups/g1/topic-suggestions", json={"count": 6}, headers=auth(keys["member"])
        ).status_code
        == 422
    )
    assert (
        client.get(
            "/api/groups/g1/catch-up", params={"since": "yesterday"}, headers=auth(keys["member"])
        ).status_code
        == 422
    )


@pytest.mark.model
def test_catch_up_with_the_real_model(tmp_path, real_text: LlamaCppText) -> None:
    services = Services.build(make_settings(tmp_path), text=real_text)
    keys = build_town(services)
    with TestClient(create_app(services=services)) as client:
        response = client.get(
            "/api/groups/g1/catch-up",
            params={"since": "2000-01-01T00:00:00Z"},
            headers=auth(keys["member"]),
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["points"]
        for point in body["points"]:
            assert point["text"].strip() and point["message_ids"]
            assert set(point["message_ids"]) <= {"m1", "m2"}
        topics = client.post(
            "/api/groups/g1/topic-suggestions", json={"count": 2}, headers=auth(keys["member"])
        )
        assert topics.status_code == 200, topics.text
        assert len(topics.json()["topics"]) <= 2
        assert (
            client.get("/api/groups/g1/catch-up", headers=auth(keys["outsider"])).status_code == 404
        )
        assert (
            client.post(
                "/api/groups/g1/topic-suggestions", json={}, headers=auth(keys["creator"])
            ).status_code
            == 404
        )
