"""Feedback on generations, and its export for fine-tuning.

Every generation (a chat turn, suggestions, a summary, a description) has an id; the member it
was made for may rate it (up or down), give a reason from a short list and a corrected text.
One verdict per member and generation: sending again replaces it. Accepting a description
draft counts as feedback too (up; an edited text is the correction).

A correction is moderated before it is stored: one the policy blocks is kept with its codes,
shown to admins, and never exported (feedback cannot poison training).

``export`` writes what is usable for training, in TRL's conversational formats, leaving out
every row with words of a member who opted out (``users.training_opt_out``) or was deleted
(``generations.contributors``), blocked corrections, and answers the tools' templates wrote
(a model never wrote them; a tool answer a model wrote is exported with its tool results):

- ``sft``: ``{"messages": [...prompt, {"role": "assistant", "content": target}]}`` for
  generations rated up or corrected (the target is the correction when there is one);
- ``dpo``: ``{"prompt": [...], "chosen": [{"role": "assistant", ...}], "rejected": [...]}``
  for corrected ones (the correction is chosen, the model's answer rejected);
- ``kto``: ``{"prompt": [...], "completion": [{"role": "assistant", ...}], "label": bool}`` for
  thumbs without a correction (unpaired: up is true).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from townsquare.errors import PayloadTooLarge
from townsquare.safety.pipeline import Decision
from townsquare.social import access
from townsquare.storage.social_tables import Feedback, Generation, GenerationContributor
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
    correction_status: str = Field(
        "ok", description="ok, or blocked: the correction broke the policy and is not exported."
    )
    correction_hazards: list[str] = Field(default_factory=list)


def _out(feedback: Feedback, feature: str) -> FeedbackOut:
    return FeedbackOut(
        generation_id=feedback.generation_id,
        feature=feature,
        rating=feedback.rating,
        reason=feedback.reason,
        correction=feedback.correction,
        source=feedback.source,
        updated_at=feedback.updated_at,
        correction_status=feedback.correction_status,
        correction_hazards=[c for c in feedback.correction_hazards.split(",") if c],
    )


def give(
    db: Session,
    user: User,
    generation_id: int,
    body: FeedbackIn,
    *,
    max_chars: int | None,
    source: str = "member",
    screen: Callable[[str], Decision] | None = None,
) -> FeedbackOut:
    """Store (or replace) ``user``'s verdict on one of their generations. The caller commits.
    ``max_chars`` bounds the correction (413 beyond; None: the caller validated it already);
    ``screen`` moderates it (the safety pipeline's input check)."""
    generation = access.own_generation(db, user, generation_id)
    if max_chars is not None and body.correction and len(body.correction) > max_chars:
        raise PayloadTooLarge(
            f"correction has {len(body.correction)} characters; the limit is {max_chars} "
            "(limits.max_message_chars). Shorten it."
        )
    verdict = Decision.allow()
    if body.correction and screen is not None:
        verdict = screen(body.correction)
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
    feedback.correction_status = "ok" if verdict.allowed else "blocked"
    feedback.correction_hazards = ",".join(verdict.hazards)[:64]
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


Kind = Literal["sft", "dpo", "kto"]
TEMPLATES = "townsquare-tools"  # the model id of answers the tools' templates wrote


def export(
    db: Session,
    kind: Kind,
    *,
    feature: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Iterator[dict[str, Any]]:
    """Training rows from feedback (see the module docstring), oldest first. Read in pages of
    500; the consent of everyone whose words a page holds is read once per page."""
    query = (
        select(Feedback, Generation)
        .join(Generation, Generation.id == Feedback.generation_id)
        .join(User, User.id == Feedback.user_id)
        .where(
            User.training_opt_out.is_(False),
            Generation.prompt.is_not(None),
            Feedback.correction_status == "ok",
            Generation.model != TEMPLATES,
        )
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
        last = page[-1][0].id
        whose: dict[int, set[int]] = {}
        for generation_id, user_id in db.execute(
            select(GenerationContributor.generation_id, GenerationContributor.user_id).where(
                GenerationContributor.generation_id.in_({g.id for _, g in page})
            )
        ):
            whose.setdefault(generation_id, set()).add(user_id)
        people = set().union(*whose.values()) if whose else set()
        consenting = set(
            db.scalars(select(User.id).where(User.id.in_(people), User.training_opt_out.is_(False)))
        )
        for feedback, generation in page:
            contributors = whose.get(generation.id)
            if not contributors:  # recorded before 0018: whose words it holds is unknown
                continue
            if not contributors <= consenting:  # someone opted out, or was deleted
                continue
            row = _row(kind, feedback, generation)
            if row is not None:
                yield row


def _prompt(generation: Generation) -> list[dict[str, Any]]:
    prompt = [dict(m) for m in generation.prompt or []]
    results = (generation.inputs or {}).get("tool_results")
    if results:  # a tool answer a model wrote: what the tools gave it goes with it
        prompt.append(
            {
                "role": "system",
                "content": "Results of the tools the assistant ran:\n" + "\n".join(results),
            }
        )
    return prompt


def _row(kind: str, feedback: Feedback, generation: Generation) -> dict[str, Any] | None:
    prompt = _prompt(generation)
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
    if kind == "dpo":
        if feedback.correction and answer and feedback.correction != answer:
            return {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": feedback.correction}],
                "rejected": [{"role": "assistant", "content": answer}],
                "metadata": meta,
            }
        return None
    if feedback.correction or not answer:  # kto: thumbs without a pair
        return None
    return {
        "prompt": prompt,
        "completion": [{"role": "assistant", "content": answer}],
        "label": feedback.rating == "up",
        "metadata": meta,
    }
