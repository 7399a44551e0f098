"""The backend seams: one small abstract class per modality.

Capabilities are class attributes so callers check ``supports_schema`` instead of catching
``NotImplementedError``. Backends never import features, storage or the API.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import anyio
import numpy as np
import numpy.typing as npt

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function the model asks to call: ``arguments`` is a JSON object as text (as OpenAI)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function the model may call: its name, what it does and its JSON-schema parameters."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object"})


@dataclass(frozen=True, slots=True)
class ToolMarkup:
    """How a model's own chat template asks it to write a function call: each call is a JSON
    object ``{"name": ..., <arguments_key>: {...}}`` between ``opener`` and ``closer``
    (Hermes and Qwen: ``<tool_call>\n`` and ``\n</tool_call>``). Read from the template by
    ``tool_calls.markup_of``."""

    name: str
    opener: str
    closer: str
    arguments_key: str = "arguments"


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message. An assistant message may carry ``tool_calls``; a ``tool`` message
    answers the call ``tool_call_id``."""

    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


@dataclass(frozen=True, slots=True)
class GenerationOptions:
    """What a caller may ask of one generation.

    ``schema`` is a JSON schema; a backend with ``supports_schema`` constrains its output to it
    (a llama.cpp grammar locally, ``response_format`` on OpenAI-compatible engines), so the
    reply always parses. ``json_object`` asks for any JSON object.
    """

    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.95
    stop: tuple[str, ...] = ()
    schema: dict[str, Any] | None = None
    json_object: bool = False
    seed: int | None = None
    # functions the model may call; tool_choice: "auto" | "none" | "required" | a tool's name
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str = "auto"
    parallel_tool_calls: bool = True
    logprobs: int | None = None  # None: none; n >= 0: each token's logprob and its n best rivals
    # OpenAI's penalties (-2..2; 0 is neutral) and llama.cpp's top_k / min_p (None: the
    # backend's default)
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    top_k: int | None = None
    min_p: float | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt and completion tokens together."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token's log probability, with its best rivals (OpenAI's ``logprobs``)."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    finish_reason: str = "stop"  # "stop" | "length" | "tool_calls"
    usage: Usage = field(default_factory=Usage)
    tool_calls: tuple[ToolCall, ...] = ()
    logprobs: tuple[TokenLogprob, ...] | None = None


@dataclass(frozen=True, slots=True)
class Delta:
    """One piece of a streamed reply. The last one carries ``finish_reason`` and ``usage``."""

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()


class TextBackend(ABC):
    """Turns chat messages into a reply.

    Contract: ``complete`` and ``stream`` raise ``Busy`` when they cannot accept more work,
    ``PromptTooLong`` when the messages do not fit the context, and ``BackendError`` for
    failures of the engine. ``stream`` yields text deltas and ends with one delta that has
    ``finish_reason`` set.
    """

    backend_id: ClassVar[str]
    supports_schema: ClassVar[bool] = False
    # native function calling (else ``backends/tool_calls.py`` constrains the output to a call)
    supports_tools: ClassVar[bool] = False
    # a local model whose chat template shows tools and calls in its own markup: the
    # backend renders ``options.tools`` with the template and constrains a reply to the
    # markup; ``tool_calls`` reads the calls back (None: the generic JSON form)
    tool_markup: ToolMarkup | None = None
    supports_logprobs: ClassVar[bool] = False
    is_local: ClassVar[bool] = False  # a single in-process model behind our own queue

    model_id: str
    context_window: int

    @abstractmethod
    async def complete(self, messages: Sequence[Message], options: GenerationOptions) -> Completion:
        """Generate the whole reply."""

    @abstractmethod
    def stream(
        self, messages: Sequence[Message], options: GenerationOptions
    ) -> AsyncIterator[Delta]:
        """Generate the reply piece by piece (an async generator)."""

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes; backends without a tokenizer estimate (4 chars a token)."""
        return max(1, len(text) // 4 + 1)

    message_overhead_tokens: ClassVar[int] = 8  # role markers of the chat template

    def count_message_tokens(self, messages: Sequence[Message]) -> int:
        """Tokens the chat template will take for ``messages`` (an upper estimate)."""
        return sum(self.count_tokens(m.content) + self.message_overhead_tokens for m in messages)

    async def ready(self) -> bool:
        """Whether the backend can serve now (model loaded, server reachable)."""
        return True

    def queue_depth(self) -> int:
        """Requests waiting for this backend (0 for backends that queue elsewhere)."""
        return 0

    def active_sequences(self) -> int:
        """Generations decoding right now (local models; 0 for remote ones)."""
        return 0

    def prompt_tokens_reused(self) -> int:
        """Prompt tokens served from a cached prefix since start (local models)."""
        return 0

    def observe(
        self,
        *,
        on_wait: Callable[[float], None] | None = None,
        on_busy: Callable[[], None] | None = None,
    ) -> None:
        """Attach metrics hooks: seconds each request waited, and each request refused as busy.

        Only backends with their own queue (local models) call them.
        """

    async def aclose(self) -> None:
        """Release the model or the connection pool."""


class EmbeddingBackend(ABC):
    """Turns texts into unit-length vectors (cosine similarity is a dot product).

    Contract: ``embed`` returns a float32 array of shape (len(texts), dimensions), each row
    L2-normalised; it batches internally. ``BackendError`` for engine failures.
    """

    backend_id: ClassVar[str]
    model_id: str
    dimensions: int

    @abstractmethod
    def embed_sync(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed in the calling thread (CLI, batch jobs, worker threads)."""

    async def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed without blocking the event loop (on a worker thread)."""
        return await anyio.to_thread.run_sync(self.embed_sync, texts)

    async def aclose(self) -> None:
        """Release the model or the connection pool."""
