"""The OpenAI-compatible facade (``/v1``): the official ``openai`` client works unmodified.

Requests go through the same guarded text generator as every feature, so the safety pipeline,
the queue (429 + Retry-After) and the token metrics apply here too.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from townsquare.api.deps import CurrentUser, ServicesDep
from townsquare.api.sse import primed, sse_response
from townsquare.backends.base import GenerationOptions, Message
from townsquare.errors import InvalidField, InvalidRequest, ModelNotFound
from townsquare.safety.pipeline import Context
from townsquare.safety.taxonomy import OPENAI_CATEGORIES, OPENAI_TO_CODES, openai_from_codes
from townsquare.services import Services

router = APIRouter(prefix="/v1", tags=["openai"])


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    # OpenAI clients send fields this server does not use (name, tool_calls...): ignore them.
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def plain(self) -> Message:
        """The message as a backend ``Message`` (content parts joined; 'developer' becomes
        'system')."""
        text = (
            self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        )
        role = "system" if self.role == "developer" else self.role
        return Message(role, text)


class JsonSchemaFormat(BaseModel):
    name: str = "output"
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

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


def _check_model(services: Services, model: str) -> None:
    available = [services.text.model_id]
    if model not in available:
        raise ModelNotFound(
            f"The model '{model}' does not exist here. Available: {', '.join(available)}. "
            "GET /v1/models lists them."
        )


def _options(services: Services, body: ChatCompletionRequest) -> GenerationOptions:
    settings = services.settings
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
    return GenerationOptions(
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        stop=stop,
        schema=schema,
        json_object=json_object,
        seed=body.seed,
    )


def _messages(services: Services, body: ChatCompletionRequest) -> list[Message]:
    limits = services.settings.limits
    if len(body.messages) > limits.max_messages:
        raise InvalidField(
            f"{len(body.messages)} messages sent; the limit is {limits.max_messages} "
            "(limits.max_messages). Drop older turns.",
            "messages",
        )
    messages = [m.plain() for m in body.messages]
    for index, message in enumerate(messages):
        if len(message.content) > limits.max_message_chars:
            raise InvalidField(
                f"messages[{index}] has {len(message.content)} characters; the limit is "
                f"{limits.max_message_chars} (limits.max_message_chars).",
                f"messages.{index}.content",
            )
    if all(m.role != "user" for m in messages):
        raise InvalidRequest("messages has no 'user' message. Add the question as a user turn.")
    return messages


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
        ],
    }


@router.post("/chat/completions", openapi_extra={"x-access": "authenticated"})
async def chat_completions(
    body: ChatCompletionRequest, request: Request, user: CurrentUser, services: ServicesDep
) -> Any:
    """OpenAI's chat completions, streaming or not."""
    _check_model(services, body.model)
    options = _options(services, body)
    messages = _messages(services, body)
    text = services.guarded_text
    context = Context("openai", user.id, user.role)
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    base = {"id": completion_id, "created": created, "model": text.model_id}

    if not body.stream:
        result = await text.complete(messages, options, context)
        return {
            **base,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text},
                    "finish_reason": result.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": result.usage.prompt_tokens,
                "completion_tokens": result.usage.completion_tokens,
                "total_tokens": result.usage.total_tokens,
            },
        }

    deltas = await primed(text.stream(messages, options, context))
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {**base, "object": "chat.completion.chunk", "choices": [choice]}

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        yield chunk({"role": "assistant", "content": ""})
        async for delta in deltas:
            if delta.text:
                yield chunk({"content": delta.text})
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
        results.append(
            {
                "flagged": bool(codes),
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
