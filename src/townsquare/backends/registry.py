"""Builds a text backend from its settings string.

``llamacpp:bundled`` · ``llamacpp:/path/to/model.gguf`` · ``openai:http://host:port/v1#model`` ·
``fake`` (``fake:SECONDS`` waits that long between streamed words: tests and load drills).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from typing_extensions import override

from townsquare.backends.base import (
    Completion,
    Delta,
    EmbeddingBackend,
    GenerationOptions,
    Message,
    TextBackend,
    ToolMarkup,
)
from townsquare.errors import InvalidRequest
from townsquare.settings import EmbedSettings, TextSettings

SPEC_HELP = (
    "Use 'llamacpp:bundled', 'llamacpp:/path/to/model.gguf', "
    "'openai:http://host:port/v1#model-name' or 'fake'."
)


def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``kind:target``; ``fake`` has no target."""
    kind, _, target = spec.partition(":")
    if kind == "fake" and (not target or target.replace(".", "", 1).isdigit()):
        return kind, target
    if kind not in {"llamacpp", "openai"} or not target:
        raise InvalidRequest(f"Unknown text backend '{spec}'. {SPEC_HELP}")
    if kind == "openai" and "#" not in target:
        raise InvalidRequest(
            f"The OpenAI-compatible backend '{spec}' names no model. Add it after '#', "
            "e.g. 'openai:http://localhost:8001/v1#Qwen/Qwen2.5-7B-Instruct'."
        )
    return kind, target


BIGGER = "qwen-0.5b"


def model_path_for(target: str, models_dir: Path | None = None) -> Path:
    """The GGUF file a ``llamacpp:`` spec points at: 'bundled', 'qwen-0.5b' (the bigger local
    model in ``models_dir``, its sha256 checked first) or a path."""
    from townsquare.backends.llamacpp import bundled_model_path

    if target == "bundled":
        return bundled_model_path()
    if target == BIGGER:
        from townsquare.backends.bigger_model import bigger_model_path

        return bigger_model_path(models_dir or Path("models"))
    return Path(target).expanduser()


def build_text_backend(settings: TextSettings) -> TextBackend:
    """Construct (and, for local models, load) the configured text backend."""
    kind, target = parse_spec(settings.backend)
    if kind == "fake":
        from townsquare.backends.fake import FakeText

        fake = FakeText(model_id=settings.model_alias or "fake", context_window=settings.n_ctx)
        fake.delay_s = float(target or 0)
        return fake
    if kind == "openai":
        from townsquare.backends.openai_compat import OpenAICompatText

        base_url, _, model = target.partition("#")
        return OpenAICompatText(
            base_url,
            model,
            api_key=settings.api_key.get_secret_value() if settings.api_key else None,
            context_window=settings.n_ctx,
            timeout_s=settings.request_timeout_s,
            model_alias=settings.model_alias,
        )
    from townsquare.backends.llamacpp import LlamaCppText

    return LlamaCppText(
        model_path_for(target, settings.models_dir),
        n_ctx=settings.n_ctx,
        parallel=settings.parallel,
        n_batch=settings.n_batch,
        weights=settings.weights,
        unified_kv=settings.unified_kv,
        nice=settings.nice,
        n_threads=settings.n_threads,
        flash_attn=settings.flash_attn,
        max_queue=settings.max_queue,
        retry_after_s=settings.retry_after_s,
        model_alias=settings.model_alias,
        seed=settings.seed,
    )


def build_embedding_backend(settings: EmbedSettings) -> EmbeddingBackend:
    """Construct (and load) the configured embedding backend."""
    kind, _, target = settings.backend.partition(":")
    if kind == "fake" and not target:
        from townsquare.backends.fake import FakeEmbeddings

        return FakeEmbeddings()
    if kind == "sentence" and target:
        from townsquare.backends.sentence_embed import SentenceEmbeddings, bundled_embedding_path

        path = bundled_embedding_path() if target == "bundled" else Path(target).expanduser()
        return SentenceEmbeddings(path, batch_size=settings.batch_size)
    if kind == "openai" and "#" in target:
        from townsquare.backends.openai_compat import OpenAICompatEmbeddings

        base_url, _, model = target.partition("#")
        return OpenAICompatEmbeddings(
            base_url,
            model,
            dimensions=settings.dimensions,
            api_key=settings.api_key.get_secret_value() if settings.api_key else None,
            batch_size=settings.batch_size,
        )
    raise InvalidRequest(
        f"Unknown embedding backend '{settings.backend}'. Use 'sentence:bundled', "
        "'sentence:/path/to/model', 'openai:http://host:port/v1#model-name' or 'fake'."
    )


class LazyText(TextBackend):
    """The configured text backend, built (for a local model: loaded) on its first use.

    CLI commands that never generate (``search``, ``index rebuild``, ``users``) then start in
    a second instead of waiting for a model to load.
    """

    def __init__(self, settings: TextSettings) -> None:
        self.settings = settings
        self._built: TextBackend | None = None
        self._lock = threading.Lock()
        self._hooks: dict[str, Any] = {}

    @property
    def backend(self) -> TextBackend:
        """The real backend (built now if it was not yet)."""
        with self._lock:
            if self._built is None:
                self._built = build_text_backend(self.settings)
                if self._hooks:
                    self._built.observe(**self._hooks)
            return self._built

    @property
    def backend_id(self) -> str:  # type: ignore[override]
        """The real backend's id (loads it)."""
        return self.backend.backend_id

    @property
    def model_id(self) -> str:  # type: ignore[override]
        """The real backend's model id (loads it)."""
        return self.backend.model_id

    @property
    def tool_markup(self) -> ToolMarkup | None:  # type: ignore[override]
        """The real backend's call markup (loads it)."""
        return self.backend.tool_markup

    @property
    def context_window(self) -> int:  # type: ignore[override]
        """The real backend's context window in tokens (loads it)."""
        return self.backend.context_window

    @override
    async def complete(self, messages: Sequence[Message], options: GenerationOptions) -> Completion:
        return await self.backend.complete(messages, options)

    @override
    def stream(
        self, messages: Sequence[Message], options: GenerationOptions
    ) -> AsyncIterator[Delta]:
        return self.backend.stream(messages, options)

    @override
    def count_tokens(self, text: str) -> int:
        return self.backend.count_tokens(text)

    @override
    def count_message_tokens(self, messages: Sequence[Message]) -> int:
        return self.backend.count_message_tokens(messages)

    @override
    async def ready(self) -> bool:
        return await self.backend.ready()

    @override
    def queue_depth(self) -> int:
        return self._built.queue_depth() if self._built is not None else 0

    @override
    def active_sequences(self) -> int:
        return self._built.active_sequences() if self._built is not None else 0

    @override
    def prompt_tokens_reused(self) -> int:
        return self._built.prompt_tokens_reused() if self._built is not None else 0

    @override
    def observe(
        self,
        *,
        on_wait: Callable[[float], None] | None = None,
        on_busy: Callable[[], None] | None = None,
    ) -> None:
        self._hooks = {"on_wait": on_wait, "on_busy": on_busy}
        if self._built is not None:
            self._built.observe(**self._hooks)

    @override
    async def aclose(self) -> None:
        if self._built is not None:
            await self._built.aclose()
