"""Continuous batching in the embedded engine, with the real bundled model: requests join and
leave a running batch, each keeps its own sampling, grammar and stops, cancellation frees the
slot (also for requests still waiting), the bound answers Busy, prompt prefixes are reused."""

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import pytest

from townsquare.backends.base import Delta, GenerationOptions, Message
from townsquare.backends.batching import held_back
from townsquare.backends.llamacpp import LlamaCppText, bundled_model_path
from townsquare.errors import Busy

pytestmark = pytest.mark.model

STORY = [Message("user", "Write a long story about a dragon who bakes bread.")]


def engine(**settings: object) -> LlamaCppText:
    values = {"n_ctx": 1024, "parallel": 4, "max_queue": 4, "seed": 7, **settings}
    return LlamaCppText(bundled_model_path(), **values)  # type: ignore[arg-type]


@pytest.fixture
def four() -> Iterator[LlamaCppText]:
    backend = engine()
    yield backend
    asyncio.run(backend.aclose())


async def settle(backend: LlamaCppText, depth: int) -> None:
    """Wait (a few decode steps at most) until the engine's admitted count is ``depth``."""
    for _ in range(200):
        if backend.queue_depth() == depth:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"depth stayed {backend.queue_depth()}, expected {depth}")


def test_stop_strings_are_never_half_sent() -> None:
    assert held_back("Hello Wor", ("World",)) == 3
    assert held_back("Hello", ("World",)) == 0
    assert held_back("ab", ("abc", "b")) == 2


async def test_requests_join_and_leave_a_running_batch(four: LlamaCppText) -> None:
    events: list[tuple[str, Delta]] = []
    seen_active: list[int] = []

    async def run(name: str, messages: list[Message], options: GenerationOptions) -> None:
        async for delta in four.stream(messages, options):
            events.append((name, delta))
            seen_active.append(four.active_sequences())

    long = asyncio.create_task(
        run("long", STORY, GenerationOptions(max_tokens=160, temperature=0.7))
    )
    while sum(1 for n, _ in events if n == "long") < 5:  # the long one is well under way
        await asyncio.sleep(0.01)
    short = [Message("user", "Say hello.")]
    await run("short", short, GenerationOptions(max_tokens=8, temperature=0))
    short_done = len(events)
    await long
    names = [n for n, _ in events]
    # the short request joined mid-way and left first: the long one kept going after it
    assert "long" in names[:short_done] and "long" in names[short_done:]
    assert max(seen_active) >= 2  # both decoded in the same steps
    finals = [(n, d) for n, d in events if d.finish_reason is not None]
    assert [n for n, _ in finals] == ["short", "long"]
    assert dict(finals)["short"].usage.completion_tokens <= 8
    assert four.active_sequences() == 0 and four.queue_depth() == 0


async def test_each_request_keeps_its_own_schema_sampling_and_stops(
    four: LlamaCppText,
) -> None:
    city = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "rating": {"type": "integer"}},
        "required": ["city", "rating"],
    }
    tags = {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 3, "maxItems": 3}
        },
        "required": ["tags"],
    }
    lisbon = [Message("user", "Describe Lisbon as JSON.")]
    results = await asyncio.gather(
        four.complete(lisbon, GenerationOptions(max_tokens=80, temperature=0.9, schema=city)),
        four.complete(lisbon, GenerationOptions(max_tokens=120, temperature=0.9, schema=tags)),
        four.complete(lisbon, GenerationOptions(max_tokens=80, temperature=0, stop=("Lisbon",))),
        four.complete(lisbon, GenerationOptions(max_tokens=5, temperature=0)),
    )
    first, second, stopped, cut = results
    assert set(json.loads(first.text)) == {"city", "rating"}
    assert isinstance(json.loads(first.text)["rating"], int)
    assert len(json.loads(second.text)["tags"]) == 3
    assert "Lisbon" not in stopped.text and stopped.finish_reason == "stop"
    assert cut.finish_reason == "length" and cut.usage.completion_tokens == 5


async def test_a_client_that_leaves_frees_its_slot_at_once() -> None:
    backend = engine(parallel=1, max_queue=0)
    try:
        stream = backend.stream(STORY, GenerationOptions(max_tokens=400))
        assert isinstance(stream, AsyncIterator)
        got = 0
        async for delta in stream:
            got += bool(delta.text)
            if got == 3:
                break
        await stream.aclose()  # what Starlette does when the client disconnects
        await settle(backend, 0)
        # the only slot is free again: a new request is served, not refused
        result = await backend.complete([Message("user", "Hi")], GenerationOptions(max_tokens=3))
        assert result.usage.completion_tokens >= 1
    finally:
        await backend.aclose()


async def test_cancelled_waiting_requests_never_leak_their_place() -> None:
    """A request cancelled while it waits must give its place back: enough of them used to
    leave the queue permanently 'full' (every later request 429)."""
    backend = engine(parallel=1, max_queue=2)
    try:
        running = asyncio.create_task(
            backend.complete(STORY, GenerationOptions(max_tokens=200, temperature=0.7))
        )
        await settle(backend, 1)
        for _ in range(10):
            waiting = [
                asyncio.create_task(backend.complete(STORY, GenerationOptions(max_tokens=5)))
                for _ in range(2)
            ]
            await settle(backend, 3)  # one running, two waiting: full
            with pytest.raises(Busy):
                await backend.complete(STORY, GenerationOptions(max_tokens=5))
            for task in waiting:
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
            await settle(backend, 1)  # their places are back
        await running
        await settle(backend, 0)
        assert (await backend.complete(STORY, GenerationOptions(max_tokens=3))).text
    finally:
        await backend.aclose()


async def test_full_engine_answers_busy_naming_the_settings() -> None:
    backend = engine(parallel=1, max_queue=1, retry_after_s=4)
    try:
        tasks = [
            asyncio.create_task(backend.complete(STORY, GenerationOptions(max_tokens=60)))
            for _ in range(2)
        ]
        await settle(backend, 2)
        with pytest.raises(Busy) as info:
            await backend.complete(STORY, GenerationOptions(max_tokens=5))
        assert info.value.retry_after == 4
        assert "text.parallel" in info.value.message and "text.max_queue=1" in info.value.message
        await asyncio.gather(*tasks)
    finally:
        await backend.aclose()


@pytest.mark.parametrize("unified", [False, True])
async def test_a_shared_prompt_prefix_is_read_once(unified: bool) -> None:
    """The same system prompt (a feature's instructions, a group's context) is not read
    again: a later request on the same slot reuses it, and with a unified KV cache a request
    on another slot copies it from the one that read it."""
    system = Message("system", "You answer questions about the Sunday Bakers group. " * 20)
    backend = engine(parallel=2, unified_kv=unified)
    try:
        first = asyncio.create_task(
            backend.complete(
                [system, Message("user", "Who bakes rye?")], GenerationOptions(max_tokens=40)
            )
        )
        while backend.active_sequences() == 0 or backend._engine.prompt_tokens_read == 0:
            await asyncio.sleep(0.005)
        # arrives while the first runs: it gets the other slot
        await backend.complete(
            [system, Message("user", "When do we meet?")], GenerationOptions(max_tokens=5)
        )
        await first
        reused_concurrently = backend._engine.prompt_tokens_reused
        await backend.complete(
            [system, Message("user", "Where is the oven?")], GenerationOptions(max_tokens=5)
        )
        prefix = backend.count_tokens(system.content)
        if unified:
            assert reused_concurrently >= prefix  # copied from the slot that read it
        else:
            assert reused_concurrently == 0  # separate caches: nothing to copy from
        assert backend._engine.prompt_tokens_reused - reused_concurrently >= prefix  # same slot
    finally:
        await backend.aclose()
