"""The Ray Serve application: the bundled model (llama.cpp) in Serve replicas with
autoscaling settings, behind an OpenAI-compatible route that the official client and a town's
``openai:`` backend both use."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import free_port, make_settings
from townsquare import batch
from townsquare.backends.base import GenerationOptions, Message
from townsquare.safety.pipeline import Context
from townsquare.services import Services
from townsquare.serving import app_builder

pytestmark = [pytest.mark.scale, pytest.mark.model]
KEY = "serve-key"


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    """The application deployed on a local Ray instance; its base URL."""
    import ray
    from ray import serve

    batch.connect("local", num_cpus=2)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    application = app_builder(
        {
            "settings": {"text": {"backend": "llamacpp:bundled", "n_ctx": 1024, "seed": 7}},
            "api_key": KEY,
            "autoscaling_config": {
                "min_replicas": 1,
                "max_replicas": 2,
                "target_ongoing_requests": 4,
            },
            "ray_actor_options": {"num_cpus": 1},
        }
    )
    serve.run(application, name="chat", route_prefix="/")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_the_official_client_talks_to_the_replicas(served: str) -> None:
    client = openai.OpenAI(base_url=f"{served}/v1", api_key=KEY)
    model = client.models.list().data[0].id
    assert "smollm2" in model.lower()
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=12
    )
    assert reply.choices[0].message.content and reply.usage is not None
    assert reply.usage.completion_tokens <= 12
    pieces = [
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Name a fruit."}],
            max_tokens=8,
            stream=True,
        )
        if chunk.choices
    ]
    assert "".join(pieces).strip()
    refused = httpx.post(
        f"{served}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": "Bearer wrong"},
    )
    assert refused.status_code == 401 and "Bearer" in refused.json()["error"]["message"]


async def test_a_town_uses_the_replicas_through_its_openai_backend(
    served: str, tmp_path: Path
) -> None:
    model = httpx.get(f"{served}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()[
        "data"
    ][0]["id"]
    settings = make_settings(
        tmp_path, text={"backend": f"openai:{served}/v1#{model}", "api_key": KEY}
    )
    services = Services.build(settings)
    try:
        completion = await services.guarded_text.complete(
            [Message("user", "What is a bicycle?")],
            GenerationOptions(max_tokens=16),
            Context("assistant"),
        )
    finally:
        await services.aclose()
    assert completion.text.strip() and completion.usage.completion_tokens > 0
