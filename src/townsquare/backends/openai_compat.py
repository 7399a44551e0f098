"""Any OpenAI-compatible chat server: vLLM, llama.cpp's server, Ollama, LocalAI, hosted APIs.

They differ only in settings (base URL, model name, key). The official ``openai`` client does
the wire protocol; this class maps its errors onto townsquare's tree.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import openai
from typing_extensions import override

from townsquare.backends.base import (
    Completion,
    Delta,
    EmbeddingBackend,
    GenerationOptions,
    Message,
    TextBackend,
    TokenLogprob,
    ToolCall,
    Usage,
)
from townsquare.errors import (
    BackendError,
    BackendUnavailable,
    Busy,
    PromptTooLong,
    TownsquareError,
)


def _request_kwargs(options: GenerationOptions) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "max_tokens": options.max_tokens,
        "temperature": options.temperature,
        "top_p": options.top_p,
    }
    if options.frequency_penalty:
        kwargs["frequency_penalty"] = options.frequency_penalty
    if options.presence_penalty:
        kwargs["presence_penalty"] = options.presence_penalty
    extra = {
        name: value
        for name, value in (("top_k", options.top_k), ("min_p", options.min_p))
        if value is not None
    }
    if extra:  # llama.cpp's server and vLLM read these; OpenAI ignores unknown body fields
        kwargs["extra_body"] = extra
    if options.stop:
        kwargs["stop"] = list(options.stop)
    if options.seed is not None:
        kwargs["seed"] = options.seed
    if options.schema is not None:
        kwargs["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": options.schema, "strict": True},
        }
    elif options.json_object:
        kwargs["response_format"] = {"type": "json_object"}
    if options.tools:
        choice = options.tool_choice
        named = choice not in {"auto", "none", "required"}
        # a named choice goes as "required" with that one tool: the same request, in the form
        # every server reads (llama.cpp's server rejects the object form and falls back to
        # "auto" with every tool; tests/backends/test_llama_server.py)
        offered = [t for t in options.tools if t.name == choice] if named else options.tools
        kwargs["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                },
            }
            for t in offered or options.tools
        ]
        if named and not offered:  # a name no tool has: the server says what is wrong
            kwargs["tool_choice"] = {"type": "function", "function": {"name": choice}}
        else:
            kwargs["tool_choice"] = "required" if named else choice
        if not options.parallel_tool_calls:
            kwargs["parallel_tool_calls"] = False
    if options.logprobs is not None:
        kwargs["logprobs"] = True
        if options.logprobs:
            kwargs["top_logprobs"] = options.logprobs
    return kwargs


def _logprobs(raw: Any) -> tuple[TokenLogprob, ...]:
    content = getattr(raw, "content", None) or []
    return tuple(
        TokenLogprob(
            item.token,
            float(item.logprob),
            tuple((t.token, float(t.logprob)) for t in (item.top_logprobs or [])),
        )
        for item in content
    )


def _message(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    return out


class OpenAICompatText(TextBackend):
    """A remote chat model reached over the OpenAI HTTP protocol."""

    backend_id: ClassVar[str] = "openai"
    supports_schema: ClassVar[bool] = True
    supports_tools: ClassVar[bool] = True
    supports_logprobs: ClassVar[bool] = True

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        context_window: int = 8192,
        timeout_s: float = 120.0,
        model_alias: str | None = None,
    ) -> None:
        self.base_url = base_url
        self.remote_model = model
        self.model_id = model_alias or model
        self.context_window = context_window
        # max_retries=0: a retry storm against a busy engine helps nobody; callers see 429/503.
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key or "none", timeout=timeout_s, max_retries=0
        )

    def _translate(self, exc: Exception) -> TownsquareError:
        where = f"the OpenAI-compatible server at {self.base_url}"
        if isinstance(exc, openai.RateLimitError):
            return Busy(f"{where} is busy (429). Retry shortly.", retry_after=2)
        if isinstance(exc, openai.APIConnectionError):
            return BackendUnavailable(
                f"Could not reach {where}: {exc}. Check that it is running and that "
                "TOWNSQUARE_TEXT__BACKEND has the right URL."
            )
        if isinstance(exc, openai.APIStatusError):
            message = str(exc)
            if exc.status_code == 400 and "context" in message.lower():
                return PromptTooLong(f"{where} says the prompt is too long: {message}")
            if exc.status_code == 404:
                return BackendUnavailable(
                    f"{where} does not serve model '{self.remote_model}' ({message}). Fix the "
                    "model name after '#' in TOWNSQUARE_TEXT__BACKEND."
                )
            return BackendError(f"{where} answered {exc.status_code}: {message}")
        return BackendError(f"{where} failed: {exc}")

    def _messages(self, messages: Sequence[Message]) -> list[Any]:
        return [_message(m) for m in messages]

    @override
    async def complete(self, messages: Sequence[Message], options: GenerationOptions) -> Completion:
        try:
            response = await self._client.chat.completions.create(
                model=self.remote_model,
                messages=self._messages(messages),
                **_request_kwargs(options),
            )
        except openai.OpenAIError as exc:
            raise self._translate(exc) from exc
        choice = response.choices[0]
        usage = response.usage
        calls = tuple(
            ToolCall(c.id, c.function.name, c.function.arguments or "{}")
            for c in (choice.message.tool_calls or [])
            if getattr(c, "function", None) is not None
        )
        return Completion(
            text=choice.message.content or "",
            finish_reason=choice.finish_reason or "stop",
            usage=Usage(usage.prompt_tokens, usage.completion_tokens) if usage else Usage(),
            tool_calls=calls,
            logprobs=_logprobs(choice.logprobs) if options.logprobs is not None else None,
        )

    @override
    async def stream(
        self, messages: Sequence[Message], options: GenerationOptions
    ) -> AsyncIterator[Delta]:
        finish: str | None = None
        usage = Usage()
        calls: dict[int, list[str]] = {}
        try:
            stream = await self._client.chat.completions.create(
                model=self.remote_model,
                messages=self._messages(messages),
                stream=True,
                stream_options={"include_usage": True},
                **_request_kwargs(options),
            )
            async with stream:
                async for chunk in stream:
                    if chunk.usage is not None:
                        usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                    for choice in chunk.choices:
                        logprobs = _logprobs(choice.logprobs) if choice.logprobs else ()
                        if choice.delta.content or logprobs:
                            yield Delta(text=choice.delta.content or "", logprobs=logprobs)
                        for part in choice.delta.tool_calls or []:
                            # calls arrive in fragments by index: joined, sent whole at the end
                            call = calls.setdefault(part.index, ["", "", ""])
                            call[0] = part.id or call[0]
                            if part.function is not None:
                                call[1] += part.function.name or ""
                                call[2] += part.function.arguments or ""
                        finish = choice.finish_reason or finish
        except openai.OpenAIError as exc:
            raise self._translate(exc) from exc
        if calls:
            yield Delta(tool_calls=tuple(ToolCall(i, n, a or "{}") for i, n, a in calls.values()))
        yield Delta(finish_reason=finish or "stop", usage=usage)

    @override
    async def ready(self) -> bool:
        """The server answers and announces the model asked for. Some servers (llama.cpp's)
        answer any name, so a misspelt one would pass every call; others answer 404 on every
        generation: either way it is caught here, not in production."""
        try:
            listed = await self._client.models.list()
        except openai.OpenAIError:
            return False
        return self.remote_model in {model.id for model in listed.data}

    @override
    async def aclose(self) -> None:
        await self._client.close()


class OpenAICompatEmbeddings(EmbeddingBackend):
    """``/v1/embeddings`` on any OpenAI-compatible server (vLLM, llama.cpp, Ollama, hosted)."""

    backend_id: ClassVar[str] = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        dimensions: int,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        batch_size: int = 64,
    ) -> None:
        self.base_url = base_url
        self.model_id = model
        self.dimensions = dimensions
        self.batch_size = batch_size
        self._client = openai.OpenAI(
            base_url=base_url, api_key=api_key or "none", timeout=timeout_s, max_retries=0
        )

    @override
    def embed_sync(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        rows: list[list[float]] = []
        try:
            for start in range(0, len(texts), self.batch_size):
                response = self._client.embeddings.create(
                    model=self.model_id, input=list(texts[start : start + self.batch_size])
                )
                rows.extend(item.embedding for item in sorted(response.data, key=lambda d: d.index))
        except openai.APIConnectionError as exc:
            raise BackendUnavailable(
                f"Could not reach the embedding server at {self.base_url}: {exc}. Check "
                "TOWNSQUARE_EMBED__BACKEND."
            ) from exc
        except openai.OpenAIError as exc:
            raise BackendError(f"The embedding server at {self.base_url} failed: {exc}") from exc
        vectors = np.asarray(rows, dtype=np.float32).reshape(len(texts), -1)  # (n, d)
        if vectors.shape[1] != self.dimensions:
            raise BackendError(
                f"The embedding server returned {vectors.shape[1]} dimensions; the settings say "
                f"{self.dimensions} (embed.dimensions). Fix the setting and rebuild the index."
            )
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return (vectors / np.where(norms == 0, 1, norms)).astype(np.float32)

    @override
    async def aclose(self) -> None:
        self._client.close()
