"""A deterministic text backend for unit tests of logic (never the only test of a feature)."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import ClassVar

from townsquare.backends.base import (
    Completion,
    Delta,
    GenerationOptions,
    Message,
    TextBackend,
    Usage,
)
from townsquare.errors import BackendError


class FakeText(TextBackend):
    """Replies with queued texts, or echoes the last user message.

    ``fail_after`` makes the next stream raise ``BackendError`` after that many deltas;
    ``delay_s`` sleeps between deltas so tests can overlap requests.
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
        self.replies.extend(replies)

    def _reply(self, messages: Sequence[Message], options: GenerationOptions) -> str:
        self.calls.append((list(messages), options))
        if self.replies:
            return self.replies.popleft()
        last = next((m.content for m in reversed(messages) if m.role == "user"), "")
        if options.schema is not None or options.json_object:
            return json.dumps({"echo": last})
        return f"echo: {last}"

    async def complete(self, messages: Sequence[Message], options: GenerationOptions) -> Completion:
        text = self._reply(messages, options)
        words = text.split(" ")[: options.max_tokens]
        finish = "length" if len(text.split(" ")) > options.max_tokens else "stop"
        return Completion(
            " ".join(words), finish, Usage(self.count_message_tokens(messages), len(words))
        )

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
