"""The OpenAI-compatible facade (``/v1``): the official ``openai`` client works unmodified.

Requests go through the same guarded text generator as every feature, so the safety pipeline,
the queue (429 + Retry-After) and the token metrics apply here too.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from townsquare.api.deps import CurrentUser, ServicesDep
from townsquare.api.sse import primed, sse_response
from townsquare.backends import tool_calls
from townsquare.backends.base import (
    Completion,
    Delta,
    GenerationOptions,
    Message,
    TextBackend,
    TokenLogprob,
    ToolCall,
    ToolSpec,
)
from townsquare.errors import BackendError, InvalidField, InvalidRequest, ModelNotFound
from townsquare.safety.pipeline import ALL_ROLES, Context, GuardedText
from townsquare.safety.taxonomy import OPENAI_CATEGORIES, OPENAI_TO_CODES, openai_from_codes
from townsquare.settings import Settings

router = APIRouter(prefix="/v1", tags=["openai"])


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class FunctionCallIn(BaseModel):
    name: str
    arguments: str


class ToolCallIn(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(BaseModel):
    # a message's own bookkeeping fields (name, refusal, annotations...) are not used here
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None

    def plain(self) -> Message:
        """The message as a backend ``Message`` (content parts joined; 'developer' becomes
        'system'; calls and call ids kept)."""
        content = self.content or ""
        text = content if isinstance(content, str) else "".join(p.text for p in content)
        role = "system" if self.role == "developer" else self.role
        calls = tuple(
            ToolCall(c.id, c.function.name, c.function.arguments) for c in self.tool_calls or ()
        )
        return Message(role, text, tool_calls=calls, tool_call_id=self.tool_call_id)


class JsonSchemaFormat(BaseModel):
    name: str = "output"
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class FunctionSpec(BaseModel):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    strict: bool | None = None


class ToolIn(BaseModel):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


# OpenAI's bookkeeping fields: accepted so that clients which always send them work, and ignored
# (they change nothing about the answer). Any other field this server does not know is a 422.
IGNORED_FIELDS = frozenset(
    {"user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier"}
)


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=1, description="Only one choice per request is supported.")
    tools: list[ToolIn] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = Field(
        None, description="Accepted when empty; token biases are not supported."
    )
    # llama.cpp's and vLLM's sampling extensions
    top_k: int | None = Field(None, ge=1, le=1000)
    min_p: float | None = Field(None, ge=0, le=1)


def _check_fields(body: ChatCompletionRequest) -> None:
    unknown = sorted(set(body.model_extra or {}) - IGNORED_FIELDS)
    if unknown:
        raise InvalidField(
            f"This server does not support {', '.join(unknown)}. Remove "
            f"{'it' if len(unknown) == 1 else 'them'} from the request (docs/assistant.md lists "
            "the parameters /v1/chat/completions takes).",
            unknown[0],
        )


def _check_model(model_id: str, model: str) -> None:
    available = [model_id]
    if model not in available:
        raise ModelNotFound(
            f"The model '{model}' does not exist here. Available: {', '.join(available)}. "
            "GET /v1/models lists them."
        )


def _tool_options(body: ChatCompletionRequest) -> dict[str, Any]:
    tools = tuple(
        ToolSpec(t.function.name, t.function.description, t.function.parameters)
        for t in body.tools or ()
    )
    names = [t.name for t in tools]
    for index, tool in enumerate(tools):
        try:
            tool_calls.check_schema(tool)
        except ValueError as exc:
            raise InvalidField(
                f"{exc}. Fix the schema.", f"tools.{index}.function.parameters"
            ) from None
    if len(set(names)) != len(names):
        raise InvalidField("tools has two functions with the same name. Rename one.", "tools")
    choice = body.tool_choice
    if isinstance(choice, NamedToolChoice):
        if choice.function.name not in names:
            raise InvalidField(
                f"tool_choice names '{choice.function.name}', which is not in tools "
                f"({', '.join(names) or 'none sent'}).",
                "tool_choice",
            )
        chosen = choice.function.name
    else:
        chosen = choice or "auto"
        if chosen == "required" and not tools:
            raise InvalidField("tool_choice is 'required' but no tools were sent.", "tool_choice")
    return {
        "tools": tools,
        "tool_choice": chosen,
        "parallel_tool_calls": body.parallel_tool_calls is not False,
    }


def _options(
    settings: Settings, backend: TextBackend | GuardedText, body: ChatCompletionRequest
) -> GenerationOptions:
    max_tokens = body.max_completion_tokens or body.max_tokens or settings.text.default_max_tokens
    if max_tokens > settings.text.max_tokens_limit:
        raise InvalidField(
            f"max_tokens is {max_tokens}; the most allowed is {settings.text.max_tokens_limit} "
            "(text.max_tokens_limit).",
            "max_tokens",
        )
    schema, json_object = None, False
    if body.response_format is not None and body.response_format.type == "json_schema":
        if body.response_format.json_schema is None:
            raise InvalidField(
                "response_format.type is 'json_schema' but response_format.json_schema is "
                "missing. Send {'name': ..., 'schema': {...}}.",
                "response_format.json_schema",
            )
        schema = body.response_format.json_schema.schema_
    elif body.response_format is not None and body.response_format.type == "json_object":
        json_object = True
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    if body.logit_bias:
        raise InvalidField(
            "logit_bias is not supported here; send it empty or leave it out.", "logit_bias"
        )
    if body.top_logprobs is not None and not body.logprobs:
        raise InvalidField("top_logprobs needs logprobs: true.", "top_logprobs")
    if body.logprobs and not _supports_logprobs(backend):
        raise InvalidField(
            f"The model '{backend.model_id}' does not report log probabilities. Remove logprobs.",
            "logprobs",
        )
    return GenerationOptions(
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        stop=stop,
        schema=schema,
        json_object=json_object,
        seed=body.seed,
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        frequency_penalty=body.frequency_penalty or 0.0,
        presence_penalty=body.presence_penalty or 0.0,
        top_k=body.top_k,
        min_p=body.min_p,
        **_tool_options(body),
    )


def _supports_logprobs(backend: TextBackend | GuardedText) -> bool:
    raw = backend.backend if isinstance(backend, GuardedText) else backend
    return bool(raw.supports_logprobs)


def _messages(settings: Settings, body: ChatCompletionRequest) -> list[Message]:
    limits = settings.limits
    if len(body.messages) > limits.max_messages:
        raise InvalidField(
            f"{len(body.messages)} messages sent; the limit is {limits.max_messages} "
            "(limits.max_messages). Drop older turns.",
            "messages",
        )
    messages = [m.plain() for m in body.messages]
    calls: set[str] = set()
    for index, message in enumerate(messages):
        if len(message.content) > limits.max_message_chars:
            raise InvalidField(
                f"messages[{index}] has {len(message.content)} characters; the limit is "
                f"{limits.max_message_chars} (limits.max_message_chars).",
                f"messages.{index}.content",
            )
        calls.update(c.id for c in message.tool_calls)
        if message.role == "tool" and message.tool_call_id not in calls:
            raise InvalidField(
                f"messages[{index}] is a tool result for call '{message.tool_call_id}', but no "
                "earlier assistant message made that call. Send the assistant message with its "
                "tool_calls before the results, and set tool_call_id.",
                f"messages.{index}.tool_call_id",
            )
    if all(m.role != "user" for m in messages):
        raise InvalidRequest("messages has no 'user' message. Add the question as a user turn.")
    return messages


def _check_history(messages: list[Message], options: GenerationOptions) -> None:
    """Calls the client says the assistant made must name a function in ``tools`` with
    arguments that match its schema: a 422 naming the message otherwise."""
    for index, message in enumerate(messages):
        for call in message.tool_calls:
            try:
                tool_calls.arguments_of(call, options.tools)
            except ValueError as exc:
                raise InvalidField(
                    f"messages[{index}].tool_calls: {exc}. Send the tools the conversation "
                    "used, or fix the call.",
                    f"messages.{index}.tool_calls",
                ) from None


def _check_calls(calls: tuple[ToolCall, ...], options: GenerationOptions) -> None:
    """A call the engine returned that names no offered tool, or whose arguments are not a JSON
    object, is the engine's error: never passed on as if it were valid."""
    names = {t.name for t in options.tools}
    for call in calls:
        if call.name not in names:
            raise BackendError(f"The model called '{call.name}', which is not in tools.")
        try:
            arguments = json.loads(call.arguments)
        except ValueError as exc:
            raise BackendError(
                f"The model's arguments for '{call.name}' are not valid JSON."
            ) from exc
        if not isinstance(arguments, dict):
            raise BackendError(f"The model's arguments for '{call.name}' are not an object.")


def _calls_out(calls: tuple[ToolCall, ...], *, indexed: bool = False) -> list[dict[str, Any]]:
    return [
        {
            **({"index": i} if indexed else {}),
            "id": c.id,
            "type": "function",
            "function": {"name": c.name, "arguments": c.arguments},
        }
        for i, c in enumerate(calls)
    ]


def _logprobs_out(items: Sequence[TokenLogprob]) -> dict[str, Any]:
    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return {
        "content": [
            {
                **entry(item.token, item.logprob),
                "top_logprobs": [entry(t, lp) for t, lp in item.top],
            }
            for item in items
        ],
        "refusal": None,
    }


@router.get("/models", openapi_extra={"x-access": "authenticated"})
async def list_models(user: CurrentUser, services: ServicesDep) -> dict[str, Any]:
    """The models this server answers for."""
    return {
        "object": "list",
        "data": [
            {
                "id": services.text.model_id,
                "object": "model",
                "created": 0,
                "owned_by": f"townsquare:{services.text.backend_id}",
            },
            {
                "id": services.embed.model_id,
                "object": "model",
                "created": 0,
                "owned_by": f"townsquare:{services.embed.backend_id}",
            },
        ]
        + (
            []
            if services.images.backend is None
            else [
                {
                    "id": services.images.backend.model_id,
                    "object": "model",
                    "created": 0,
                    "owned_by": "townsquare:images",
                    "sizes": [str(s) for s in services.images.backend.sizes],
                }
            ]
        ),
    }


@router.post("/chat/completions", openapi_extra={"x-access": "authenticated"})
async def chat_completions(
    body: ChatCompletionRequest, request: Request, user: CurrentUser, services: ServicesDep
) -> Any:
    """OpenAI's chat completions, streaming or not, with function calling (``tools``,
    ``tool_choice``, ``parallel_tool_calls``, ``role: tool`` results) and ``logprobs``."""
    text = services.guarded_text
    # every turn of the request is the caller's: system, assistant and tool turns are read too
    context = Context("openai", user.id, user.role, supplied=ALL_ROLES)
    return await chat_answer(
        body,
        request,
        services.settings,
        text,
        lambda messages, options: text.complete(messages, options, context),
        lambda messages, options: text.stream(messages, options, context),
    )


Complete = Callable[[list[Message], GenerationOptions], Awaitable[Completion]]
Stream = Callable[[list[Message], GenerationOptions], AsyncIterator[Delta]]


async def chat_answer(
    body: ChatCompletionRequest,
    request: Request,
    settings: Settings,
    backend: TextBackend | GuardedText,
    complete: Complete,
    stream: Stream,
) -> Any:
    """Answer a chat completion request with ``complete`` or ``stream`` (the guarded text of
    this town, or a bare model in ``townsquare.serving``): checks, then OpenAI's JSON or SSE."""
    _check_fields(body)
    _check_model(backend.model_id, body.model)
    options = _options(settings, backend, body)
    messages = _messages(settings, body)
    _check_history(messages, options)
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    base = {"id": completion_id, "created": created, "model": backend.model_id}

    if not body.stream:
        result = await complete(messages, options)
        _check_calls(result.tool_calls, options)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": result.text if result.text or not result.tool_calls else None,
        }
        if result.tool_calls:
            message["tool_calls"] = _calls_out(result.tool_calls)
        return {
            **base,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": result.finish_reason,
                    "logprobs": (
                        _logprobs_out(result.logprobs) if result.logprobs is not None else None
                    ),
                }
            ],
            "usage": {
                "prompt_tokens": result.usage.prompt_tokens,
                "completion_tokens": result.usage.completion_tokens,
                "total_tokens": result.usage.total_tokens,
            },
        }

    deltas = await primed(stream(messages, options))
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(
        delta: dict[str, Any], finish: str | None = None, logprobs: Any = None
    ) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
        return {**base, "object": "chat.completion.chunk", "choices": [choice]}

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        yield chunk({"role": "assistant", "content": ""})
        async for delta in deltas:
            if delta.text or delta.logprobs:
                logprobs = _logprobs_out(delta.logprobs) if options.logprobs is not None else None
                yield chunk({"content": delta.text}, logprobs=logprobs)
            if delta.tool_calls:
                _check_calls(delta.tool_calls, options)
                yield chunk({"tool_calls": _calls_out(delta.tool_calls, indexed=True)})
            if delta.finish_reason is not None:
                yield chunk({}, delta.finish_reason)
                if include_usage and delta.usage is not None:
                    yield {
                        **base,
                        "object": "chat.completion.chunk",
                        "choices": [],
                        "usage": {
                            "prompt_tokens": delta.usage.prompt_tokens,
                            "completion_tokens": delta.usage.completion_tokens,
                            "total_tokens": delta.usage.total_tokens,
                        },
                    }

    return sse_response(request.url.path, chunks())


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    input: str | list[str] = Field(description="One text or a list of texts.")
    encoding_format: Literal["float", "base64"] = "float"


def _encode(vector: Any, encoding: str) -> list[float] | str:
    """Floats, or base64 of little-endian float32 (what the official client asks for)."""
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


@router.post("/embeddings", openapi_extra={"x-access": "authenticated"})
def embeddings(body: EmbeddingRequest, user: CurrentUser, services: ServicesDep) -> dict[str, Any]:
    """OpenAI's embeddings endpoint, served by the configured embedding model."""
    embedder = services.embed
    if body.model != embedder.model_id:
        raise ModelNotFound(
            f"The embedding model '{body.model}' does not exist here. Available: "
            f"{embedder.model_id}."
        )
    texts = [body.input] if isinstance(body.input, str) else body.input
    limits = services.settings
    if not texts or len(texts) > limits.embed.max_inputs:
        raise InvalidField(
            f"input has {len(texts)} texts; send 1 to {limits.embed.max_inputs} "
            "(embed.max_inputs).",
            "input",
        )
    for index, item in enumerate(texts):
        if not item or len(item) > limits.limits.max_message_chars:
            raise InvalidField(
                f"input[{index}] must have 1 to {limits.limits.max_message_chars} characters "
                "(limits.max_message_chars).",
                f"input.{index}",
            )
    vectors = embedder.embed_sync(texts)  # queued: bulk work waits behind search queries
    tokens = sum(max(1, len(t) // 4) for t in texts)
    return {
        "object": "list",
        "model": embedder.model_id,
        "data": [
            {"object": "embedding", "index": i, "embedding": _encode(vector, body.encoding_format)}
            for i, vector in enumerate(vectors)
        ],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


class ModerationPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "image_url"]
    text: str | None = None


class ModerationRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input: str | list[str] | list[ModerationPart]
    model: str | None = Field(
        None, description="Accepted for compatibility (e.g. omni-moderation-latest); ignored."
    )


@router.post("/moderations", openapi_extra={"x-access": "authenticated"}, tags=["safety"])
def moderations(
    body: ModerationRequest, user: CurrentUser, services: ServicesDep
) -> dict[str, Any]:
    """OpenAI's moderation endpoint, answered by the configured moderator against the hazard
    taxonomy: ``categories`` and ``category_scores`` in OpenAI's 13 categories, plus
    ``hazard_codes`` (what the community's default policy flags) and ``hazard_scores``."""
    moderator = services.endpoint_moderator
    if isinstance(body.input, str):
        texts = [body.input]
    else:
        texts = [p if isinstance(p, str) else (p.text or "") for p in body.input]
        if any(isinstance(p, ModerationPart) and p.type == "image_url" for p in body.input):
            raise InvalidField(
                "Image inputs are not moderated here; send text parts only.", "input"
            )
    limits = services.settings.limits
    if not texts or len(texts) > limits.max_messages:
        raise InvalidField(
            f"input has {len(texts)} texts; send 1 to {limits.max_messages} (limits.max_messages).",
            "input",
        )
    for index, item in enumerate(texts):
        if len(item) > limits.max_message_chars:
            raise InvalidField(
                f"input[{index}] has {len(item)} characters; the limit is "
                f"{limits.max_message_chars} (limits.max_message_chars).",
                f"input.{index}",
            )
    policy = services.policies.policy(None)
    results = []
    for scores in moderator.score(texts):
        codes = [
            c
            for c, rule in policy.rules.items()
            if rule.action != "allow" and scores.get(c, 0.0) >= rule.threshold
        ]
        category_scores = {
            category: round(
                max((scores.get(c, 0.0) for c in OPENAI_TO_CODES[category]), default=0.0), 6
            )
            for category in OPENAI_CATEGORIES
        }
        categories = openai_from_codes(codes)
        blocked = [c for c in codes if policy.rules[c].action == "block"]
        results.append(
            {
                # OpenAI's meaning: something applies. Here that is every code the policy blocks
                # or warns on; ``blocked`` says whether townsquare would refuse the text
                "flagged": bool(codes),
                "blocked": bool(blocked),
                "categories": categories,
                "category_scores": category_scores,
                "category_applied_input_types": {
                    category: ["text"] if on else [] for category, on in categories.items()
                },
                "hazard_codes": codes,
                "hazard_scores": {c: round(s, 6) for c, s in scores.items()},
            }
        )
    return {
        "id": f"modr-{uuid.uuid4().hex}",
        "model": f"townsquare-{moderator.name}",
        "results": results,
    }
