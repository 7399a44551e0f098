from fastapi.testclient import TestClient
from sqlalchemy import create_engine

from tests.conftest import add_user, auth, make_settings
from townsquare.app import create_app
from townsquare.backends.fake import FakeText
from townsquare.services import Services


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": True, "text_model": True}


def test_a_model_that_is_down_is_reported_not_a_reason_to_leave_the_balancer(
    client: TestClient, services: Services, member_key: str
) -> None:
    async def down() -> bool:
        return False

    services.text.ready = down  # type: ignore[method-assign]
    ready = client.get("/readyz")
    assert ready.status_code == 200  # the pod still serves search, pages, ingestion
    assert ready.json() == {
        "status": "degraded",
        "checks": {"database": True, "text_model": False},
    }
    assert "townsquare_text_model_ready 0.0" in client.get("/metrics").text
    listings = client.get("/api/listings/search", params={"q": "bike"}, headers=auth(member_key))
    assert listings.status_code == 200


def test_readyz_fails_when_the_database_is_gone(client: TestClient, services: Services) -> None:
    original, services.engine = services.engine, create_engine("sqlite:////nonexistent/dir/x.db")
    try:
        response = client.get("/readyz")
    finally:
        services.engine.dispose()
        services.engine = original  # closed with the services
    assert response.status_code == 503
    assert response.json()["checks"]["database"] is False


def test_a_database_that_does_not_answer_is_a_503_to_retry_not_a_500(
    client: TestClient, services: Services, member_key: str
) -> None:
    broken = create_engine("sqlite:////nonexistent/dir/x.db")
    services.sessions.configure(bind=broken)
    try:
        response = client.get("/api/me", headers=auth(member_key))
    finally:
        services.sessions.configure(bind=services.engine)
        broken.dispose()
    assert response.status_code == 503 and response.headers["retry-after"] == "2"
    assert response.json()["error"]["code"] == "database_unavailable"
    assert client.get("/api/me", headers=auth(member_key)).status_code == 200  # back at once


def test_request_ids_are_echoed_or_made(client: TestClient) -> None:
    assert (
        client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"]
        == "abc-123"
    )
    made = client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"}).headers[
        "x-request-id"
    ]
    assert len(made) == 32 and " " not in made


def test_metrics_count_requests_tokens_and_queue(client: TestClient, member_key: str) -> None:
    cid = client.post("/api/conversations", json={}, headers=auth(member_key)).json()["id"]
    client.post(
        f"/api/conversations/{cid}/messages", json={"content": "a b c"}, headers=auth(member_key)
    )
    body = client.get("/metrics").text
    assert (
        'townsquare_http_requests_total{method="POST",route="/api/conversations/{conversation_id}/messages",'
        'status="200"} 1.0' in body
    )
    assert 'townsquare_tokens_total{direction="completion",model="fake"} 4.0' in body
    assert "townsquare_model_queue_depth 0.0" in body
    assert "townsquare_http_request_duration_seconds_bucket" in body


def test_metrics_can_be_made_private(tmp_path) -> None:
    settings = make_settings(tmp_path, server={"public_paths": ["/healthz"]})
    services = Services.build(settings, text=FakeText())
    admin, member = add_user(services, "ada", "admin"), add_user(services, "mia")
    with TestClient(create_app(services=services)) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=auth(member)).status_code == 403
        assert client.get("/metrics", headers=auth(admin)).status_code == 200
        assert client.get("/healthz").status_code == 200
