"""Structured generation shared by the writing features.

Every structured answer is requested with a JSON schema (constrained decoding: a llama.cpp
grammar locally, ``response_format`` remotely), then parsed and validated. A reply that still
fails is retried once; a second failure is ``InvalidOutput`` (502), never a malformed result.
Each generation is recorded (inputs, output, model, timing, whether the first try was valid).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import cache, partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import jinja2
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from townsquare.backends.base import GenerationOptions, Message
from townsquare.errors import InvalidOutput
from townsquare.safety.pipeline import Context, GuardedText
from townsquare.storage.social_tables import Generation

T = TypeVar("T")


@cache
def _environment(directory: str) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory),
        autoescape=False,  # plain-text prompts, never HTML
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(feature_file: str, template: str, **values: Any) -> str:
    """Render ``prompts/<template>`` beside the feature module ``feature_file``."""
    directory = str(Path(feature_file).parent / "prompts")
    return _environment(directory).get_template(template).render(**values).strip()


async def generate_json(
    text: GuardedText,
    messages: Sequence[Message],
    schema: dict[str, Any],
    validate: Callable[[Any], T],
    *,
    options: GenerationOptions,
    context: Context,
    items_checked_by_caller: bool = False,
) -> tuple[T, int, bool, float]:
    """(value, attempts, first try valid, latency ms); raises ``InvalidOutput`` after 2 tries.

    With ``items_checked_by_caller`` the whole answer skips the output check because the caller
    passes each item through ``GuardedText.check_items`` (drop one, keep the rest).
    """
    start = time.perf_counter()
    problem = ""
    for attempt in (1, 2):
        completion = await text.complete(
            messages,
            replace(options, schema=schema),
            context,
            check_output=not items_checked_by_caller,
        )
        try:
            value = validate(json.loads(completion.text))
        except (ValueError, ValidationError, TypeError, KeyError) as exc:
            problem = str(exc)[:200]
            continue
        return value, attempt, attempt == 1, (time.perf_counter() - start) * 1000
    raise InvalidOutput(
        f"The model's answer did not have the expected structure, twice ({problem}). Try again; "
        "if it keeps happening, use a bigger model (TOWNSQUARE_TEXT__BACKEND)."
    )


async def record(sessions: sessionmaker[Session], **fields: Any) -> int:
    """``record_sync`` on a worker thread (async features call it after generating)."""
    return await anyio.to_thread.run_sync(partial(record_sync, sessions, **fields))


def record_sync(
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
) -> int:
    """Store a generation; returns its id (for feedback and acceptance later)."""
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
        )
        db.add(row)
        db.flush()
        return row.id
