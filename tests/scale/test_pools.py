"""Model pools routed by feature: a pool over its budget refuses its own features only, pools
may run on engines of their own, red-team sweeps are routed as their own feature, and every
pool is measured."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import generate_latest

from tests.conftest import add_user, auth, make_settings
from townsquare.app import create_app
from townsquare.backends.base import GenerationOptions, Message
from townsquare.backends.fake import FakeText
from townsquare.backends.pools import build_pools, routed_as
from townsquare.errors import Busy
from townsquare.safety.pipeline import Context
from townsquare.services import Services
from townsquare.settings import RoutingSettings, TextSettings

ROUTING = {
    "pools": {"interactive": {"concurrency": 2}, "batch": {"concurrency": 1}},
    "features": {"group_catch_up": "batch", "redteam": "batch"},
}
ASK = [Message("user", "hello there")]


async def test_a_full_pool_refuses_its_features_only(tmp_path: Path) -> None:
    fake = FakeText()
    fake.delay_s = 0.05
    services = Services.build(make_settings(tmp_path, routing=ROUTING), text=fake)
    guarded = services.guarded_text
    options = GenerationOptions(max_tokens=20)
    catch_up = Context("group_catch_up")
    holding = guarded.stream(ASK, options, catch_up)
    await anext(holding)  # a catch-up is streaming: the batch pool's one place is taken
    with pytest.raises(Busy, match=r"routing\.pools\.batch\.concurrency=1") as refused:
        await guarded.complete(ASK, options, Context("group_catch_up"))
    assert refused.value.retry_after == 2
    # the interactive pool is untouched: a chat and a /v1 request go through meanwhile
    assert (await guarded.complete(ASK, options, Context("assistant"))).text
    assert (await guarded.complete(ASK, options, Context("openai"))).text
    await holding.aclose()  # the stream ends: its place is given back
    assert (await guarded.complete(ASK, options, Context("group_catch_up"))).text
    body = generate_latest(services.metrics.registry).decode()
    assert 'townsquare_pool_generations_total{outcome="busy",pool="batch"} 1.0' in body
    assert 'townsquare_pool_generations_total{outcome="admitted",pool="batch"} 2.0' in body
    assert 'townsquare_pool_generations_total{outcome="admitted",pool="interactive"} 2.0' in body
    assert 'townsquare_pool_generations_active{pool="batch"} 0.0' in body


async def test_red_team_sweeps_run_on_the_batch_pool(tmp_path: Path) -> None:
    services = Services.build(make_settings(tmp_path, routing=ROUTING), text=FakeText())
    pools = services.guarded_text.pools
    assert pools is not None
    assert pools.route("openai") == "interactive"
    with routed_as("redteam"):  # what redteam.run_in_process wraps its sweep in
        assert pools.route("openai") == "batch"
        # and tasks started inside inherit it
        assert await asyncio.create_task(asyncio.to_thread(pools.route, "assistant")) == "batch"
    assert pools.route("openai") == "interactive"


async def test_pools_on_engines_of_their_own() -> None:
    """A pool naming another backend gets an engine of its own; pools naming text.backend
    share the one passed in."""
    main = FakeText(model_id="small-chat")
    built: list[FakeText] = []

    def build(settings: TextSettings) -> FakeText:
        built.append(FakeText(model_id=f"engine for {settings.backend}"))
        return built[-1]

    routing = RoutingSettings(
        pools={
            "interactive": {"concurrency": 4},
            "batch": {"backend": "openai:http://vllm:8000/v1#big", "concurrency": 64},
            "also-main": {"backend": "fake", "concurrency": 1},
        },
        features={"search_summary": "batch"},
    )
    pools, made = build_pools(routing, TextSettings(backend="fake"), main, build)
    assert made == built and len(built) == 1
    assert pools.for_feature("search_summary").backend.model_id == (
        "engine for openai:http://vllm:8000/v1#big"
    )
    assert pools.for_feature("assistant").backend is main
    assert pools.pools["also-main"].backend is main
    assert len(pools.backends()) == 2


def test_routes_must_name_defined_pools() -> None:
    with pytest.raises(
        ValueError, match=r"routing\.features\.group_catch_up names the pool 'bulk'"
    ):
        RoutingSettings(features={"group_catch_up": "bulk"})
    with pytest.raises(ValueError, match=r"routing\.default_pool"):
        RoutingSettings(pools={"batch": {}}, features={})


def test_a_busy_pool_answers_429_over_http(tmp_path: Path) -> None:
    """Through the API: with the interactive pool's one place held, /v1 chat answers 429 with
    Retry-After and a message naming the setting."""
    fake = FakeText()
    routing = {"pools": {"interactive": {"concurrency": 1, "retry_after_s": 7}}, "features": {}}
    services = Services.build(make_settings(tmp_path, routing=routing), text=fake)
    key = add_user(services, "mia")
    pool = services.guarded_text.pools.pools["interactive"]  # type: ignore[union-attr]
    pool.admission.acquire()  # another generation holds the only place
    with TestClient(create_app(services=services)) as client:
        response = client.post(
            "/v1/chat/completions",
            json={"model": "fake", "messages": [{"role": "user", "content": "hi"}]},
            headers=auth(key),
        )
    pool.admission.release()
    assert response.status_code == 429 and response.headers["retry-after"] == "7"
    assert "routing.pools.interactive.concurrency" in response.json()["error"]["message"]
