import asyncio

import pytest
from fastapi.testclient import TestClient

from tests.conftest import add_user, auth, make_settings
from townsquare.app import create_app
from townsquare.backends.base import GenerationOptions, Message
from townsquare.backends.fake import FakeText
from townsquare.errors import QuotaExceeded
from townsquare.quotas import MemoryQuotaStore, Quotas
from townsquare.safety.pipeline import Context
from townsquare.services import Services
from townsquare.settings import QuotaSettings


def test_requests_per_minute_per_user(tmp_path) -> None:
    services = Services.build(
        make_settings(tmp_path, quotas={"user_requests_per_minute": 3}), text=FakeText()
    )
    mia, bo, admin = (
        add_user(services, "mia"),
        add_user(services, "bo"),
        add_user(services, "ada", "admin"),
    )
    with TestClient(create_app(services=services)) as client:
        statuses = [
            client.get("/api/conversations", headers=auth(mia)).status_code for _ in range(4)
        ]
        assert statuses == [200, 200, 200, 429]
        refused = client.get("/api/conversations", headers=auth(mia))
        assert 1 <= int(refused.headers["retry-after"]) <= 61
        error = refused.json()["error"]
        assert (
            error["code"] == "quota_exceeded"
            and "quotas.user_requests_per_minute" in error["message"]
        )
        assert client.get("/api/conversations", headers=auth(bo)).status_code == 200  # per user
        assert all(client.get("/api/me", headers=auth(admin)).status_code == 200 for _ in range(5))
    asyncio.run(services.aclose())


def test_tokens_per_day_per_user(tmp_path) -> None:
    fake = FakeText()
    services = Services.build(
        make_settings(tmp_path, quotas={"user_tokens_per_day": 40}), text=fake
    )
    mia = add_user(services, "mia")
    with TestClient(create_app(services=services)) as client:
        cid = client.post("/api/conversations", json={}, headers=auth(mia)).json()["id"]
        fake.enqueue("word " * 30)
        first = client.post(
            f"/api/conversations/{cid}/messages", json={"content": "hi"}, headers=auth(mia)
        )
        assert first.status_code == 200
        second = client.post(
            f"/api/conversations/{cid}/messages", json={"content": "hi"}, headers=auth(mia)
        )
        assert second.status_code == 429
        assert "quotas.user_tokens_per_day" in second.json()["error"]["message"]
        assert len(fake.calls) == 1  # refused before reaching the model
    asyncio.run(services.aclose())


async def test_group_quotas_apply_to_generation_in_a_group(tmp_path) -> None:
    settings = make_settings(
        tmp_path, quotas={"group_requests_per_minute": 2, "group_tokens_per_day": 0}
    )
    services = Services.build(settings, text=FakeText())
    in_group = Context("topics", user_id=1, role="member", group_id=7)
    options = GenerationOptions(max_tokens=5)
    for _ in range(2):
        await services.guarded_text.complete([Message("user", "hi")], options, in_group)
    with pytest.raises(QuotaExceeded, match="group_requests_per_minute"):
        await services.guarded_text.complete([Message("user", "hi")], options, in_group)
    other_group = Context("topics", user_id=1, role="member", group_id=8)
    assert (
        await services.guarded_text.complete([Message("user", "hi")], options, other_group)
    ).text
    await services.aclose()


def test_group_token_budget() -> None:
    quotas = Quotas(QuotaSettings(group_tokens_per_day=100), MemoryQuotaStore())
    quotas.before_generation(1, "member", 3)
    quotas.record_tokens(1, 3, 100)
    with pytest.raises(QuotaExceeded, match="group_tokens_per_day") as info:
        quotas.before_generation(2, "member", 3)
    assert info.value.retry_after > 0
    quotas.before_generation(2, "member", None)  # outside the group: fine


def test_store_windows_roll_over() -> None:
    store = MemoryQuotaStore()
    assert store.add("k", 60, 1, now=120.0) == 1
    assert store.add("k", 60, 1, now=179.0) == 2
    assert store.add("k", 60, 1, now=180.0) == 1
    assert store.get("k", 60, now=181.0) == 1
