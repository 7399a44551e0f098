"""The ``openai:`` backend's contract, held against an engine others run: llama.cpp's own
``llama-server`` (tests/llama_server.py) serving the bundled GGUF under an alias. Chat,
streaming, tools (tool_choice auto / required / named, a tool result answered), structured
output, embeddings, the model name, and the errors a server gives.

Tools are served with Qwen 2.5's chat template (tests/data/, ``--chat-template-file``, as
operators do for a model whose own template shows no tools; SmolLM2's does not). What this
build of llama-server does with tool_choice is recorded here, not assumed: it rejects the
object form of a named choice (and falls back to "auto" with every tool), so the backend sends
"required" with that one tool; it accepts "required" but does not constrain the reply to a
call for this model (the class of llama.cpp#27217), so the tests hold the backend to
well-formed calls whenever calls come, and docs/scaling.md says which engines enforce it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import free_port, missing
from tests.llama_server import ALIAS, KEY, LlamaServer, llama_server_binary
from townsquare.backends.base import GenerationOptions, Message, ToolCall, ToolSpec
from townsquare.backends.llamacpp import bundled_model_path
from townsquare.backends.openai_compat import OpenAICompatEmbeddings, OpenAICompatText
from townsquare.errors import BackendError, BackendUnavailable, PromptTooLong

pytestmark = pytest.mark.model

QWEN_TEMPLATE = (Path(__file__).parents[1] / "data" / "qwen2.5-chat-template.jinja").read_text()
SEARCH = ToolSpec(
    "search_listings",
    "Search the marketplace for items for sale.",
    {
        "type": "object",
        "properties": {"query": {"type": "string"}, "max_price": {"type": "number"}},
        "required": ["query"],
    },
)
WEATHER = ToolSpec(
    "get_weather",
    "The weather in a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
ASK = [Message("user", "Find me a kids bike under 150 euros.")]


def _binary() -> str:
    binary = llama_server_binary()
    if binary is None:
        missing("llama-server", "`make test` builds it once (scripts/llama-server.sh)")
    assert binary is not None
    return binary


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """The bundled model with its own template."""
    with LlamaServer(_binary(), bundled_model_path(), tmp_path_factory.mktemp("plain")) as up:
        yield up


@pytest.fixture(scope="module")
def tooled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """The bundled model with Qwen 2.5's tool-aware template."""
    directory = tmp_path_factory.mktemp("tools")
    with LlamaServer(_binary(), bundled_model_path(), directory, template=QWEN_TEMPLATE) as up:
        yield up


def _backend(server: LlamaServer, **overrides: Any) -> OpenAICompatText:
    values: dict[str, Any] = {"api_key": KEY, "context_window": 2048, "timeout_s": 60}
    return OpenAICompatText(f"{server.url}/v1", overrides.pop("model", ALIAS), **values | overrides)


def _well_formed(calls: tuple[ToolCall, ...] | list[ToolCall], names: set[str]) -> None:
    for call in calls:
        assert call.name in names and isinstance(json.loads(call.arguments), dict), call


async def test_chat_and_its_stream_say_the_same_thing(server: LlamaServer) -> None:
    backend = _backend(server)
    options = GenerationOptions(max_tokens=24, temperature=0.0, seed=7)
    messages = [Message("user", "Write one sentence about bicycles.")]
    whole = await backend.complete(messages, options)
    assert whole.text.strip() and whole.finish_reason in ("stop", "length")
    assert whole.usage.prompt_tokens > 5 and 0 < whole.usage.completion_tokens <= 24
    deltas = [delta async for delta in backend.stream(messages, options)]
    assert len([d for d in deltas if d.text]) > 3  # token by token, not one block
    assert "".join(d.text for d in deltas) == whole.text  # greedy: the same words
    assert deltas[-1].finish_reason == whole.finish_reason
    assert deltas[-1].usage is not None and deltas[-1].usage.completion_tokens > 0
    await backend.aclose()


@pytest.mark.parametrize("choice", ["auto", "required", "search_listings", "get_weather"])
async def test_every_tool_choice_is_sent_in_a_form_the_server_reads(
    tooled: LlamaServer, choice: str
) -> None:
    backend = _backend(tooled)
    options = GenerationOptions(
        max_tokens=64, temperature=0.0, tools=(SEARCH, WEATHER), tool_choice=choice
    )
    log = tooled.log.read_text()
    answer = await backend.complete(ASK, options)
    streamed = [d async for d in backend.stream(ASK, options)]
    # the server took the choice as sent (before, a named choice was logged as "Wrong type"
    # and replaced by "auto" with every tool)
    assert (
        "Wrong type supplied for parameter 'tool_choice'" not in tooled.log.read_text()[len(log) :]
    )
    offered = (
        {choice}
        if choice in ("search_listings", "get_weather")
        else {"search_listings", "get_weather"}
    )
    _well_formed(answer.tool_calls, offered)
    _well_formed([c for d in streamed for c in d.tool_calls], offered)
    assert answer.tool_calls or answer.text.strip()
    await backend.aclose()


async def test_a_tool_result_is_rendered_and_answered_in_words(tooled: LlamaServer) -> None:
    backend = _backend(tooled)
    call = ToolCall("call_1", "search_listings", '{"query": "kids bike", "max_price": 150}')
    follow_up = [
        *ASK,
        Message("assistant", "", tool_calls=(call,)),
        Message("tool", '[{"title": "Kids bike, 16 inch", "price": 90}]', tool_call_id="call_1"),
    ]
    answer = await backend.complete(
        follow_up,
        GenerationOptions(max_tokens=48, temperature=0.0, tools=(SEARCH,), tool_choice="none"),
    )
    assert answer.text.strip() and not answer.tool_calls
    # the result reached the model: the prompt holds it (longer than the question alone)
    alone = await backend.complete(ASK, GenerationOptions(max_tokens=1, tools=(SEARCH,)))
    assert answer.usage.prompt_tokens > alone.usage.prompt_tokens + 20
    await backend.aclose()


async def test_structured_output_follows_the_schema(server: LlamaServer) -> None:
    backend = _backend(server)
    schema = {
        "type": "object",
        "properties": {"title": {"type": "string"}, "price": {"type": "integer"}},
        "required": ["title", "price"],
        "additionalProperties": False,
    }
    answer = await backend.complete(
        [Message("user", "A listing for a red bike at 80 euros, as JSON.")],
        GenerationOptions(max_tokens=64, temperature=0.0, schema=schema),
    )
    parsed = json.loads(answer.text)
    assert set(parsed) == {"title", "price"} and isinstance(parsed["price"], int)
    await backend.aclose()


async def test_the_model_name_is_checked_where_readiness_can_see_it(server: LlamaServer) -> None:
    right, misspelt = _backend(server), _backend(server, model=f"{ALIAS}.Q4_1")
    assert await right.ready()
    # llama-server answers any name, so a misspelt one would pass every call: ready() is what
    # catches it (townsquare doctor, /readyz's body and townsquare_text_model_ready report it)
    assert not await misspelt.ready()
    for backend in (right, misspelt):
        await backend.aclose()


async def test_errors_map_to_what_callers_can_act_on(server: LlamaServer) -> None:
    backend, wrong_key = _backend(server), _backend(server, api_key="wrong")
    with pytest.raises(PromptTooLong):
        await backend.complete([Message("user", "word " * 3000)], GenerationOptions(max_tokens=8))
    with pytest.raises(BackendError, match="401"):
        await wrong_key.complete(ASK, GenerationOptions(max_tokens=8))
    down = OpenAICompatText(f"http://127.0.0.1:{free_port()}/v1", ALIAS, api_key=KEY)
    with pytest.raises(BackendUnavailable, match="Could not reach"):
        await down.complete(ASK, GenerationOptions(max_tokens=8))
    assert not await down.ready()
    for each in (backend, wrong_key, down):
        await each.aclose()


def test_embeddings_from_the_engine(tmp_path: Path) -> None:
    with LlamaServer(_binary(), bundled_model_path(), tmp_path, embeddings=True) as up:
        embed = OpenAICompatEmbeddings(f"{up.url}/v1", ALIAS, dimensions=576, api_key=KEY)
        texts = ["a red bicycle for sale", "the history of opera", "fresh bread"] * 30
        vectors = embed.embed_sync(texts)
        assert vectors.shape == (90, 576)  # in batches of 64, put back in order
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
        assert not np.allclose(vectors[0], vectors[1], atol=1e-2)
        # batching changes the numbers a little (llama.cpp), never the order of the rows
        again = embed.embed_sync(texts[:3])
        assert all(float(again[i] @ vectors[i]) > 0.99 for i in range(3))
        assert all(float(again[0] @ vectors[i]) < 0.99 for i in (1, 2))
        wrong = OpenAICompatEmbeddings(f"{up.url}/v1", ALIAS, dimensions=384, api_key=KEY)
        with pytest.raises(BackendError, match=r"embed\.dimensions"):
            wrong.embed_sync(["x"])
