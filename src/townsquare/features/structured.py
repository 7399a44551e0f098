"""Structured generation shared by the writing features.

Every structured answer is requested with a JSON schema (constrained decoding: a llama.cpp
grammar locally, ``response_format`` remotely), then parsed and validated. A reply that still
fails is retried once; a second failure is ``InvalidOutput`` (502), never a malformed result.
Each generation is recorded (inputs, output, model, timing, whether the first try was valid).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Generic, TypeVar

import anyio
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from townsquare.backends.base import GenerationOptions, Message
from townsquare.errors import InvalidOutput
from townsquare.safety.pipeline import Context, GuardedText
from townsquare.storage.social_tables import Generation, add_contributors

T = TypeVar("T")
log = logging.getLogger("townsquare.structured")


def text_field(max_length: int, min_length: int = 1, *, brackets: bool = True) -> dict[str, Any]:
    """A JSON-schema string the model can only fill with usable text: it starts with a visible
    character, holds no control characters, no escapes and no characters beyond the Basic
    Multilingual Plane (emoji: a small model loops on them, several tokens each, until the
    answer is cut off; creator replies get their emoji from the style profile afterwards), is
    ``min_length`` to ``max_length`` characters long and, with ``brackets=False``, has no ``[``
    or ``]`` (no inline citation markers). What the validators check is in the grammar."""
    astral = r"\U00010000-\U0010FFFF"
    rest = r'"\\\x00-\x1F' + astral + ("" if brackets else r"\[\]")
    first = r'"\\\x00-\x20' + astral + ("" if brackets else r"\[\]")
    return {
        "type": "string",
        "minLength": min_length,
        "maxLength": max_length,
        "pattern": f"^[^{first}][^{rest}]{{{min_length - 1},{max_length - 1}}}$",
    }


def json_budget(schema: dict[str, Any]) -> int:
    """Tokens enough for the longest JSON ``schema`` allows (a token per character at most,
    which holds for the strings ``text_field`` allows unless they are full of emoji), so a
    constrained answer can always close. Strings and arrays must be bounded."""
    if "enum" in schema:
        return max(len(json.dumps(v)) for v in schema["enum"]) + 1
    kind = schema.get("type")
    if isinstance(kind, list):
        return max(json_budget({**schema, "type": k}) for k in kind)
    if kind == "object":
        properties = schema.get("properties", {})
        return 2 + sum(len(json.dumps(k)) + 3 + json_budget(v) for k, v in properties.items())
    if kind == "array":
        return 2 + int(schema["maxItems"]) * (json_budget(schema["items"]) + 2)
    if kind == "string":
        return int(schema["maxLength"]) + 3
    return {"integer": 20, "number": 25, "boolean": 6, "null": 5}[str(kind)]


@dataclass(frozen=True)
class Answer(Generic[T]):
    """A validated structured answer: the value, the model's raw text, the tries it took."""

    value: T
    text: str
    attempts: int
    latency_ms: float


async def generate_json(
    text: GuardedText,
    messages: Sequence[Message],
    schema: dict[str, Any],
    validate: Callable[[Any], T],
    *,
    options: GenerationOptions,
    context: Context,
    items_checked_by_caller: bool = False,
) -> Answer[T]:
    """The validated answer and how it went; raises ``InvalidOutput`` after 2 tries.

    With ``items_checked_by_caller`` the whole answer skips the output check because the caller
    passes each item through ``GuardedText.check_items`` (drop one, keep the rest).
    """
    start = time.perf_counter()
    problem = ""
    # room for the longest answer the schema allows, so the grammar can always close
    options = replace(
        options, schema=schema, max_tokens=max(options.max_tokens, json_budget(schema))
    )
    for attempt in (1, 2):
        completion = await text.complete(
            messages,
            options,
            context,
            check_output=not items_checked_by_caller,
        )
        try:
            value = validate(json.loads(completion.text))
        except (ValueError, ValidationError, TypeError, KeyError) as exc:
            problem = str(exc)[:200]
            log.warning(
                "structured output failed validation",
                extra={
                    "feature": context.feature,
                    "attempt": attempt,
                    "problem": problem,
                    "finish_reason": completion.finish_reason,
                    "tail": completion.text[-120:],
                },
            )
            continue
        return Answer(value, completion.text, attempt, (time.perf_counter() - start) * 1000)
    raise InvalidOutput(
        f"The model's answer did not have the expected structure, twice ({problem}). Try again; "
        "if it keeps happening, use a bigger model (TOWNSQUARE_TEXT__BACKEND)."
    )


R = TypeVar("R")


S = TypeVar("S")


async def screen_sources(
    text: GuardedText, items: Sequence[S], read: Callable[[S], str], context: Context
) -> tuple[list[S], list[S]]:
    """Other members' content a feature is about to put in a prompt, screened: (kept, withheld).
    Withheld are the items that carry instructions to the assistant (``rules.instructions_in``)
    or a hazard the policy blocks; they never reach the model and are reported as withheld."""
    if not items:
        return [], []
    verdicts = await text.check_sources([read(i) for i in items], context)
    kept = [i for i, v in zip(items, verdicts, strict=True) if v.allowed]
    withheld = [i for i, v in zip(items, verdicts, strict=True) if not v.allowed]
    return kept, withheld


async def generate_recorded(
    text: GuardedText,
    sessions: sessionmaker[Session],
    messages: Sequence[Message],
    schema: dict[str, Any],
    validate: Callable[[Any], T],
    *,
    options: GenerationOptions,
    context: Context,
    inputs: dict[str, Any],
    finish: Callable[[T], Awaitable[tuple[R, dict[str, Any]]]],
    items_checked_by_caller: bool = False,
    contributors: Sequence[int] = (),
) -> tuple[R, int]:
    """The sequence every writing feature runs: generate a schema-valid answer
    (``generate_json``), finish it (``finish`` checks each item with the safety pipeline,
    drops what is invented or repeated, and says what to store), and record the generation.
    Returns the finished result and the generation's id (for feedback and acceptance)."""
    answer = await generate_json(
        text,
        messages,
        schema,
        validate,
        options=options,
        context=context,
        items_checked_by_caller=items_checked_by_caller,
    )
    result, output = await finish(answer.value)
    generation_id = await record(
        sessions,
        feature=context.feature,
        user_id=context.user_id,
        inputs=inputs,
        output=output,
        model=text.model_id,
        latency_ms=answer.latency_ms,
        attempts=answer.attempts,
        first_try_valid=answer.attempts == 1,
        prompt=[{"role": m.role, "content": m.content} for m in messages],
        answer=answer.text,
        contributors=sorted(
            {*contributors, *([context.user_id] if context.user_id is not None else [])}
        ),
    )
    return result, generation_id


async def record(sessions: sessionmaker[Session], **fields: Any) -> int:
    """``_record`` on a worker thread (features call it after generating)."""
    return await anyio.to_thread.run_sync(partial(_record, sessions, **fields))


CORE = "extractive-core"  # the ``model`` of what a feature's extractive core wrote


async def record_core(
    sessions: sessionmaker[Session],
    context: Context,
    *,
    inputs: dict[str, Any],
    output: dict[str, Any],
    contributors: Sequence[int] = (),
) -> int:
    """Record what an extractive core (``writing = "core"``) returned, as a generation members
    can rate like any other: no prompt and no model answer (nothing to train on)."""
    return await record(
        sessions,
        feature=context.feature,
        user_id=context.user_id,
        inputs=inputs,
        output=output,
        model=CORE,
        latency_ms=0.0,
        attempts=0,
        first_try_valid=True,
        contributors=sorted(
            {*contributors, *([context.user_id] if context.user_id is not None else [])}
        ),
    )


def _record(
    sessions: sessionmaker[Session],
    *,
    feature: str,
    user_id: int | None,
    inputs: dict[str, Any],
    output: dict[str, Any],
    model: str,
    latency_ms: float,
    attempts: int,
    first_try_valid: bool,
    prompt: list[dict[str, str]] | None = None,
    answer: str | None = None,
    contributors: list[int] | None = None,
) -> int:
    """Store a generation; returns its id (for feedback and acceptance later). ``prompt`` (the
    messages) and ``answer`` (the model's raw text) make it usable for training exports;
    ``contributors`` are the members whose words the prompt holds (erasure and exports)."""
    with sessions.begin() as db:
        row = Generation(
            feature=feature,
            user_id=user_id,
            inputs=inputs,
            output=output,
            model=model,
            latency_ms=round(latency_ms, 1),
            attempts=attempts,
            first_try_valid=first_try_valid,
            prompt=prompt,
            answer=answer,
        )
        db.add(row)
        db.flush()
        add_contributors(db, row.id, contributors or [])
        return row.id
