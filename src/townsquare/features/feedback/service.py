"""Feedback on generations, and its export for fine-tuning.

Every generation (a chat turn, suggestions, a summary, a description) has an id; the member it
was made for may rate it (up or down), give a reason from a short list and a corrected text.
One verdict per member and generation: sending again replaces it. Accepting a description
draft counts as feedback too (up; an edited text is the correction).

``export`` writes what is usable for training, leaving out members who opted out
(``users.training_opt_out``):

- ``sft``: OpenAI chat format, ``{"messages": [...prompt, {"role": "assistant", "content":
  target}]}``, for generations rated up or corrected (the target is the correction when there
  is one, else the model's answer);
- ``dpo``: ``{"prompt": [...], "chosen": correction, "rejected": answer}`` for corrected ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from townsquare.errors import InvalidField
from townsquare.social import access
from townsquare.storage.social_tables import Feedback, Generation
from townsquare.storage.tables import User

REASONS = ("inaccurate", "unhelpful", "unsafe", "off_topic", "wrong_tone", "too_long", "other")
Reason = Literal[
    "inaccurate", "unhelpful", "unsafe", "off_topic", "wrong_tone", "too_long", "other"
]


class FeedbackIn(BaseModel):
    """A member's verdict on a generation."""

    model_config = ConfigDict(extra="forbid")

    rating: Literal["up", "down"]
    reason: Reason | None = Field(None, description="Why, from a short list.")
    correction: str | None = Field(
        None, min_length=1, description="What the answer should have been (your words)."
    )


class FeedbackOut(BaseModel):
    """A stored verdict."""

    generation_id: int
    feature: str
    rating: str
    reason: str | None
    correction: str | None
    source: str
    updated_at: datetime


def _out(feedback: Feedback, feature: str) -> FeedbackOut:
    return FeedbackOut(
        generation_id=feedback.generation_id,
        feature=feature,
        rating=feedback.rating,
        reason=feedback.reason,
        correction=feedback.correction,
        source=feedback.source,
        updated_at=feedback.updated_at,
    )


def give(
    db: Session,
    user: User,
    generation_id: int,
    body: FeedbackIn,
    *,
    max_chars: int | None,
    source: str = "member",
) -> FeedbackOut:
    """Store (or replace) ``user``'s verdict on one of their generations. The caller commits.
    ``max_chars`` bounds the correction (None: the caller validated it already)."""
    generation = access.own_generation(db, user, generation_id)
    if max_chars is not None and body.correction and len(body.correction) > max_chars:
        raise InvalidField(
            f"correction has {len(body.correction)} characters; the limit is {max_chars} "
            "(limits.max_message_chars).",
            "correction",
        )
    feedback = db.scalar(
        select(Feedback).where(Feedback.generation_id == generation.id, Feedback.user_id == user.id)
    )
    now = datetime.now(UTC)
    if feedback is None:
        feedback = Feedback(generation_id=generation.id, user_id=user.id, created_at=now)
        db.add(feedback)
    feedback.rating = body.rating
    feedback.reason = body.reason
    feedback.correction = body.correction
    feedback.source = source
    feedback.updated_at = now
    db.flush()
    return _out(feedback, generation.feature)


def recent(
    db: Session, *, feature: str | None, limit: int, before_id: int | None
) -> list[FeedbackOut]:
    """Feedback, newest first (admins), optionally for one feature."""
    query = select(Feedback, Generation.feature).join(
        Generation, Generation.id == Feedback.generation_id
    )
    if feature:
        query = query.where(Generation.feature == feature)
    if before_id is not None:
        query = query.where(Feedback.id < before_id)
    rows = db.execute(query.order_by(Feedback.id.desc()).limit(limit))
    return [_out(f, name) for f, name in rows]


def export(
    db: Session,
    kind: Literal["sft", "dpo"],
    *,
    feature: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Iterator[dict[str, Any]]:
    """Training rows from feedback (see the module docstring), oldest first, members who opted
    out left out. Read in pages of 500."""
    query = (
        select(Feedback, Generation)
        .join(Generation, Generation.id == Feedback.generation_id)
        .join(User, User.id == Feedback.user_id)
        .where(User.training_opt_out.is_(False), Generation.prompt.is_not(None))
    )
    if feature:
        query = query.where(Generation.feature == feature)
    if since is not None:
        query = query.where(Feedback.updated_at >= since)
    if until is not None:
        query = query.where(Feedback.updated_at < until)
    last = 0
    while True:
        page = db.execute(query.where(Feedback.id > last).order_by(Feedback.id).limit(500)).all()
        if not page:
            return
        for feedback, generation in page:
            last = feedback.id
            row = _row(kind, feedback, generation)
            if row is not None:
                yield row


def _row(kind: str, feedback: Feedback, generation: Generation) -> dict[str, Any] | None:
    prompt = list(generation.prompt or [])
    answer = generation.answer
    if not prompt:  # recorded without its prompt (JSON null): nothing to train on
        return None
    meta = {
        "generation_id": generation.id,
        "feature": generation.feature,
        "model": generation.model,
        "rating": feedback.rating,
        "reason": feedback.reason,
    }
    if kind == "sft":
        target = feedback.correction or (answer if feedback.rating == "up" else None)
        if not target:
            return None
        return {"messages": [*prompt, {"role": "assistant", "content": target}], "metadata": meta}
    if feedback.correction and answer and feedback.correction != answer:
        return {
            "prompt": prompt,
            "chosen": feedback.correction,
            "rejected": answer,
            "metadata": meta,
        }
    return None
