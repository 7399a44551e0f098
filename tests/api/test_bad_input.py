"""Bad input gets a clear 4xx naming what to fix, and loses nothing already stored."""

import pytest
from fastapi.testclient import TestClient

from tests.conftest import auth, make_settings, web_login
from townsquare.app import create_app
from townsquare.backends.fake import FakeText
from townsquare.services import Services


@pytest.fixture
def cid(client: TestClient, member_key: str) -> int:
    response = client.post("/api/conversations", json={}, headers=auth(member_key))
    cid = int(response.json()["id"])
    client.post(
        f"/api/conversations/{cid}/messages", json={"content": "keep me"}, headers=auth(member_key)
    )
    return cid


def stored(client: TestClient, key: str, cid: int) -> list[str]:
    return [
        m["content"]
        for m in client.get(f"/api/conversations/{cid}", headers=auth(key)).json()["messages"]
    ]


def test_malformed_json_is_422(client: TestClient, member_key: str, cid: int) -> None:
    response = client.post(
        f"/api/conversations/{cid}/messages",
        content=b'{"content": "hi"',
        headers={**auth(member_key), "content-type": "application/json"},
    )
    assert response.status_code == 422
    assert "not valid JSON" in response.json()["error"]["message"]
    assert stored(client, member_key, cid) == ["keep me", "echo: keep me"]


def test_wrong_type_and_unknown_field_name_the_field(
    client: TestClient, member_key: str, cid: int
) -> None:
    response = client.post(
        f"/api/conversations/{cid}/messages",
        json={"content": "hi", "max_tokens": "lots"},
        headers=auth(member_key),
    )
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "max_tokens"
    response = client.post(
        f"/api/conversations/{cid}/messages",
        json={"content": "hi", "colour": "red"},
        headers=auth(member_key),
    )
    assert response.status_code == 422
    assert "colour: unknown field" in response.json()["error"]["message"]
    missing = client.post(f"/api/conversations/{cid}/messages", json={}, headers=auth(member_key))
    assert missing.json()["error"]["field"] == "content"


def test_v1_validation_errors_are_openai_shaped(client: TestClient, member_key: str) -> None:
    response = client.post(
        "/v1/chat/completions", json={"model": "fake", "messages": "hi"}, headers=auth(member_key)
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "messages"


def test_body_over_the_limit_is_413(tmp_path, fake_text: FakeText) -> None:
    services = Services.build(
        make_settings(tmp_path, limits={"max_body_bytes": 2048}), text=fake_text
    )
    from tests.conftest import add_user

    key = add_user(services, "mia")
    with TestClient(create_app(services=services)) as client:
        response = client.post("/api/conversations", json={"title": "x" * 5000}, headers=auth(key))
        assert response.status_code == 413
        assert "limits.max_body_bytes" in response.json()["error"]["message"]

        def chunks():
            yield b'{"title": "'
            yield b"y" * 4000
            yield b'"}'

        chunked = client.post(
            "/api/conversations",
            content=chunks(),
            headers={**auth(key), "content-type": "application/json"},
        )
        assert chunked.status_code == 413
        assert client.get("/api/conversations", headers=auth(key)).json()["data"] == []


def test_message_over_the_length_limit_is_422(tmp_path, fake_text: FakeText) -> None:
    services = Services.build(
        make_settings(tmp_path, limits={"max_message_chars": 10}), text=fake_text
    )
    from tests.conftest import add_user

    key = add_user(services, "mia")
    with TestClient(create_app(services=services)) as client:
        cid = client.post("/api/conversations", json={}, headers=auth(key)).json()["id"]
        response = client.post(
            f"/api/conversations/{cid}/messages", json={"content": "x" * 11}, headers=auth(key)
        )
        assert response.status_code == 422
        assert response.json()["error"] == {
            "code": "invalid_field",
            "message": "content has 11 characters; the limit is 10 (limits.max_message_chars). "
            "Shorten the message.",
            "field": "content",
        }


def test_unknown_model_is_404_listing_the_available_ones(
    client: TestClient, member_key: str
) -> None:
    response = client.post(
        "/v1/chat/completions",
        json={"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]},
        headers=auth(member_key),
    )
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found" and "Available: fake" in error["message"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer ts_wrong"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer "},
    ],
)
def test_missing_or_wrong_key_is_401(client: TestClient, headers: dict[str, str]) -> None:
    for method, path in [("get", "/api/conversations"), ("get", "/v1/models")]:
        response = client.request(method, path, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        message = response.json()["error"]["message"]
        assert "Bearer" in message or "townsquare users" in message


def test_cookie_writes_need_the_csrf_header(client: TestClient, member_key: str) -> None:
    csrf = web_login(client, member_key)
    assert client.get("/api/conversations").status_code == 200
    assert client.post("/api/conversations", json={}).status_code == 403
    # the old fixed value is no token: only the session's own token is
    refused = client.post("/api/conversations", json={}, headers={"X-Townsquare-CSRF": "1"})
    assert refused.status_code == 403
    assert (
        client.post("/api/conversations", json={}, headers={"X-Townsquare-CSRF": csrf}).status_code
        == 201
    )


def test_unknown_route_says_where_the_docs_are(client: TestClient) -> None:
    response = client.get("/api/nothing-here")
    assert response.status_code == 404 and "/docs" in response.json()["error"]["message"]
