"""The OpenAI-compatible backend against a real HTTP server on loopback (townsquare's own /v1,
serving the bundled model) — the same wire protocol vLLM, llama.cpp's server and Ollama speak."""

import json

import pytest

from tests.conftest import LiveServer, free_port
from townsquare.backends.base import GenerationOptions, Message
from townsquare.backends.openai_compat import OpenAICompatText
from townsquare.errors import BackendUnavailable, PromptTooLong

pytestmark = pytest.mark.model


@pytest.fixture
def remote(live_server: tuple[LiveServer, str]) -> OpenAICompatText:
    server, key = live_server
    return OpenAICompatText(f"{server.url}/v1", server.services.text.model_id, api_key=key)


async def test_complete_and_stream(remote: OpenAICompatText) -> None:
    messages = [Message("user", "Say hi.")]
    result = await remote.complete(messages, GenerationOptions(max_tokens=12, temperature=0))
    assert result.text and 0 < result.usage.completion_tokens <= 12
    deltas = [d async for d in remote.stream(messages, GenerationOptions(max_tokens=12))]
    assert deltas[-1].finish_reason in {"stop", "length"}
    # usage counts tokens; a delta can hold several (a character split over tokens)
    assert deltas[-1].usage is not None
    assert sum(1 for d in deltas if d.text) <= deltas[-1].usage.completion_tokens <= 12
    assert await remote.ready()
    await remote.aclose()


async def test_schema_goes_through_response_format(remote: OpenAICompatText) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    result = await remote.complete(
        [Message("user", "Is the sky blue? Answer as JSON.")],
        GenerationOptions(max_tokens=20, schema=schema),
    )
    assert isinstance(json.loads(result.text)["ok"], bool)
    await remote.aclose()


async def test_errors_are_translated(
    remote: OpenAICompatText, live_server: tuple[LiveServer, str]
) -> None:
    with pytest.raises(PromptTooLong):
        await remote.complete([Message("user", "word " * 3000)], GenerationOptions(max_tokens=4))
    server, key = live_server
    wrong_model = OpenAICompatText(f"{server.url}/v1", "no-such-model", api_key=key)
    assert not await wrong_model.ready()  # not announced: caught before any generation
    with pytest.raises(BackendUnavailable, match="does not serve model 'no-such-model'"):
        await wrong_model.complete([Message("user", "hi")], GenerationOptions(max_tokens=4))
    nobody = OpenAICompatText(f"http://127.0.0.1:{free_port()}/v1", "m")
    with pytest.raises(BackendUnavailable, match="Could not reach"):
        await nobody.complete([Message("user", "hi")], GenerationOptions(max_tokens=4))
    assert not await nobody.ready()
    for backend in (remote, wrong_model, nobody):
        await backend.aclose()


def test_embeddings_over_http(live_server: tuple[LiveServer, str]) -> None:
    import numpy as np

    from townsquare.backends.openai_compat import OpenAICompatEmbeddings
    from townsquare.errors import BackendError

    server, key = live_server
    remote = OpenAICompatEmbeddings(
        f"{server.url}/v1", "all-MiniLM-L6-v2", dimensions=384, api_key=key, batch_size=2
    )
    vectors = remote.embed_sync(["kids bike", "bicycle for a child", "oak table"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    local = server.services.embed.embed_sync(["kids bike"])[0]
    assert float(vectors[0] @ local) > 0.999  # the same model behind HTTP
    wrong = OpenAICompatEmbeddings(
        f"{server.url}/v1", "all-MiniLM-L6-v2", dimensions=768, api_key=key
    )
    with pytest.raises(BackendError, match=r"embed\.dimensions"):
        wrong.embed_sync(["x"])
    nobody = OpenAICompatEmbeddings(f"http://127.0.0.1:{free_port()}/v1", "m", dimensions=384)
    with pytest.raises(BackendUnavailable):
        nobody.embed_sync(["x"])
