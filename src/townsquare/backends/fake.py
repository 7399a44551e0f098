"""A deterministic text backend for unit tests of logic (never the only test of a feature)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from typing_extensions import override

from townsquare.backends.base import (
    Completion,
    Delta,
    EmbeddingBackend,
    GenerationOptions,
    Message,
    TextBackend,
    Usage,
)
from townsquare.errors import BackendError


class FakeText(TextBackend):
    """Replies with queued texts, or echoes the last user message.

    ``fail_after`` makes the next stream raise ``BackendError`` after that many deltas;
    ``delay_s`` sleeps between deltas (and once before a whole reply) so tests can overlap
    requests.
    """

    backend_id: ClassVar[str] = "fake"
    supports_schema: ClassVar[bool] = True

    def __init__(self, *, model_id: str = "fake", context_window: int = 2048) -> None:
        self.model_id = model_id
        self.context_window = context_window
        self.replies: deque[str] = deque()
        self.calls: list[tuple[list[Message], GenerationOptions]] = []
        self.fail_after: int | None = None
        self.delay_s = 0.0

    def enqueue(self, *replies: str) -> None:
        """Replies to give, in order, before falling back to the echo."""
        self.replies.extend(replies)

    def _reply(self, messages: Sequence[Message], options: GenerationOptions) -> str:
        self.calls.append((list(messages), options))
        if self.replies:
            return self.replies.popleft()
        last = next((m.content for m in reversed(messages) if m.role == "user"), "")
        if options.schema is not None:
            return json.dumps(example(options.schema))
        if options.json_object:
            return json.dumps({"echo": last})
        return f"echo: {last}"

    @override
    async def complete(self, messages: Sequence[Message], options: GenerationOptions) -> Completion:
        text = self._reply(messages, options)
        if self.delay_s:  # a whole reply takes a while too (the web app's progress tests)
            await asyncio.sleep(self.delay_s)
        words = text.split(" ")[: options.max_tokens]
        finish = "length" if len(text.split(" ")) > options.max_tokens else "stop"
        return Completion(
            " ".join(words), finish, Usage(self.count_message_tokens(messages), len(words))
        )

    @override
    async def stream(
        self, messages: Sequence[Message], options: GenerationOptions
    ) -> AsyncIterator[Delta]:
        text = self._reply(messages, options)
        words = text.split(" ")[: options.max_tokens]
        fail_after, self.fail_after = self.fail_after, None
        for index, word in enumerate(words):
            if fail_after is not None and index >= fail_after:
                raise BackendError("The fake backend failed mid-stream, as the test asked.")
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            yield Delta(text=word if index == 0 else " " + word)
        yield Delta(
            finish_reason="stop",
            usage=Usage(self.count_message_tokens(messages), len(words)),
        )


class FakeEmbeddings(EmbeddingBackend):
    """Deterministic bag-of-words vectors: texts sharing words are similar. For logic tests."""

    backend_id: ClassVar[str] = "fake"

    def __init__(self, dimensions: int = 64) -> None:
        self.model_id = "fake-embed"
        self.dimensions = dimensions
        self.calls = 0

    @override
    def embed_sync(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.calls += 1
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z0-9]+", text.lower()):
                digest = hashlib.blake2b(word.encode(), digest_size=4).digest()
                out[row, int.from_bytes(digest, "little") % self.dimensions] += 1.0
            norm = float(np.linalg.norm(out[row]))
            out[row] = out[row] / norm if norm else out[row]
            if not norm:
                out[row, 0] = 1.0
        return out


def example(schema: dict[str, Any]) -> Any:
    """A small value that satisfies ``schema`` (objects, arrays, strings, numbers, enums)."""
    if "const" in schema:
        return schema["const"]
    if "anyOf" in schema:  # the first branch (for tool calls: a call, not a plain answer)
        return example(schema["anyOf"][0])
    if "enum" in schema:
        return next(v for v in schema["enum"] if v is not None)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next(k for k in kind if k != "null")
    if kind == "object":
        properties = schema.get("properties", {})
        return {k: example(properties[k]) for k in schema.get("required", list(properties))}
    if kind == "array":
        return [
            example(schema.get("items", {"type": "string"}))
            for _ in range(max(1, schema.get("minItems", 1)))
        ]
    if kind in {"number", "integer"}:
        return schema.get("minimum", 1)
    if kind == "boolean":
        return True
    return "fake text"
