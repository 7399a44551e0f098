"""Creators' style: a profile computed from their past DM replies, and suggested replies in it.

The profile (length distribution, emoji and exclamation rates, casing, greeting and sign-off
habits, frequent phrases) is stored per creator, shown to them, editable, and off until they
switch it on. With it on, suggestions get the profile and the creator's most similar past
exchanges as few-shot examples, and are then moved toward the profile where that is mechanical
(casing, emoji habit, length, sign-off).
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from datetime import UTC, datetime
from itertools import pairwise

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from townsquare.backends.base import EmbeddingBackend, GenerationOptions, Message
from townsquare.errors import Forbidden, InvalidField
from townsquare.features import structured
from townsquare.safety.pipeline import Context, GuardedText
from townsquare.storage.social_tables import CreatorStyle, DMMessage, DMParticipant, DMThread
from townsquare.storage.tables import User

FEATURE = "creator_replies"
EMOJI = re.compile("[\U0001f300-\U0001faff\u2600-\u27bf]")
EXAMPLES = 3


class StyleProfile(BaseModel):
    replies: int = 0
    median_chars: int = 0
    p75_chars: int = 0
    emoji_rate: float = 0.0
    top_emoji: list[str] = Field(default_factory=list)
    exclamation_rate: float = 0.0
    lowercase_rate: float = 0.0
    greeting: str = ""
    sign_off: str = ""
    phrases: list[str] = Field(default_factory=list)


class StyleOut(BaseModel):
    enabled: bool
    edited: bool
    profile: StyleProfile


class StyleUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = None
    greeting: str | None = Field(None, max_length=60)
    sign_off: str | None = Field(None, max_length=60)
    median_chars: int | None = Field(None, ge=5, le=2000)


class Replies(BaseModel):
    generation_id: int
    thread_id: str
    styled: bool
    replies: list[str]


def pairs(db: Session, creator: User) -> list[tuple[str, str]]:
    """(fan message, creator's reply) pairs from the creator's DM threads, oldest first."""
    threads = db.scalars(select(DMParticipant.thread_id).where(DMParticipant.user_id == creator.id))
    out: list[tuple[str, str]] = []
    for thread_id in threads:
        messages = db.scalars(
            select(DMMessage)
            .where(DMMessage.thread_id == thread_id, DMMessage.deleted_at.is_(None))
            .order_by(DMMessage.created_at, DMMessage.id)
        ).all()
        for before, after in pairwise(messages):
            if before.author_id != creator.id and after.author_id == creator.id:
                out.append((before.text, after.text))
    return out


def compute_profile(replies: list[str]) -> StyleProfile:
    if not replies:
        return StyleProfile()
    lengths = sorted(len(r) for r in replies)
    emoji = Counter(e for r in replies for e in EMOJI.findall(r))
    openers = Counter(" ".join(r.split()[:1]).rstrip(",") for r in replies)
    closers = Counter(_sign_off(r) for r in replies)
    words = [w.lower() for r in replies for w in re.findall(r"[a-zA-Z']+", r)]
    bigrams = Counter(" ".join(p) for p in pairwise(words))
    greeting, greeting_n = openers.most_common(1)[0]
    sign_off, sign_off_n = closers.most_common(1)[0]
    return StyleProfile(
        replies=len(replies),
        median_chars=int(statistics.median(lengths)),
        p75_chars=lengths[int(0.75 * (len(lengths) - 1))],
        emoji_rate=round(sum(bool(EMOJI.search(r)) for r in replies) / len(replies), 3),
        top_emoji=[e for e, _ in emoji.most_common(3)],
        exclamation_rate=round(sum("!" in r for r in replies) / len(replies), 3),
        lowercase_rate=round(sum(r == r.lower() for r in replies) / len(replies), 3),
        greeting=greeting if greeting_n / len(replies) >= 0.5 else "",
        sign_off=sign_off if sign_off and sign_off_n / len(replies) >= 0.5 else "",
        phrases=[p for p, n in bigrams.most_common(5) if n > 2],
    )


def _sign_off(reply: str) -> str:
    match = re.search(
        r"(?:Kind regards|With warm wishes|Best|Cheers|Thanks)[^.!?]*$", reply.strip()
    )
    return match.group(0).strip() if match else ""


def style_for(db: Session, creator: User) -> CreatorStyle:
    """The creator's stored style, computed from their history the first time."""
    style = db.get(CreatorStyle, creator.id)
    if style is None:
        profile = compute_profile([reply for _, reply in pairs(db, creator)])
        style = CreatorStyle(user_id=creator.id, enabled=False, profile=profile.model_dump())
        db.add(style)
        db.commit()
    return style


def update_style(db: Session, creator: User, body: StyleUpdate) -> CreatorStyle:
    style = style_for(db, creator)
    if body.enabled is not None:
        style.enabled = body.enabled
    changes = body.model_dump(exclude_none=True, exclude={"enabled"})
    if changes:
        style.profile = {**style.profile, **changes}
        style.edited = True
    style.updated_at = datetime.now(UTC)
    db.commit()
    return style


def shape(reply: str, profile: StyleProfile) -> str:
    """Move a reply toward the profile where that is mechanical."""
    text = reply.strip()
    if profile.lowercase_rate >= 0.8:
        text = text.lower()
    if profile.emoji_rate >= 0.6 and profile.top_emoji and not EMOJI.search(text):
        text = f"{text} {profile.top_emoji[0]}"
    if profile.emoji_rate <= 0.05:
        text = EMOJI.sub("", text).strip()
    limit = int(max(profile.p75_chars, profile.median_chars) * 1.5) if profile.median_chars else 0
    if limit and len(text) > limit:
        cut = max(text.rfind(".", 0, limit), text.rfind("!", 0, limit))
        text = text[: cut + 1] if cut > limit // 3 else text[:limit].rstrip() + "…"
    if profile.sign_off:
        at = text.lower().find(profile.sign_off.lower())
        # end with the usual sign-off, and nothing after it
        text = (
            text[: at + len(profile.sign_off)] if at >= 0 else f"{text.rstrip()} {profile.sign_off}"
        )
    return text


async def suggest_replies(
    db: Session,
    sessions: sessionmaker[Session],
    user: User,
    thread: DMThread,
    *,
    text: GuardedText,
    embedder: EmbeddingBackend,
    use_style: bool | None = None,
) -> Replies:
    """Three replies for the creator to the thread's latest fan message."""
    if user.role not in {"creator", "admin"}:
        raise Forbidden("Suggested replies are for creators. Ask an admin to make you a creator.")
    messages = db.scalars(
        select(DMMessage)
        .where(DMMessage.thread_id == thread.id, DMMessage.deleted_at.is_(None))
        .order_by(DMMessage.created_at, DMMessage.id)
    ).all()
    fan_messages = [m for m in messages if m.author_id != user.id]
    if not fan_messages:
        raise InvalidField("The thread has no message from the fan to reply to yet.", "thread")
    latest = fan_messages[-1].text
    style = style_for(db, user)
    styled = style.enabled if use_style is None else use_style
    profile = StyleProfile.model_validate(style.profile)
    examples: list[dict[str, str]] = []
    if styled:
        history = pairs(db, user)
        if history:
            vectors = await embedder.embed([latest] + [fan for fan, _ in history])  # (1+n, d)
            scores = vectors[1:] @ vectors[0]
            for index in np.argsort(-scores)[:EXAMPLES]:
                examples.append({"fan": history[index][0], "reply": history[index][1]})
    prompt = structured.render(
        __file__,
        "replies.j2",
        creator=user.display_name or user.name,
        style=profile if styled else None,
        examples=examples,
    )
    context = Context(FEATURE, user.id, user.role)
    schema = {
        "type": "object",
        "required": ["replies"],
        "properties": {
            "replies": {
                "type": "array",
                "minItems": 3,
                "maxItems": 3,
                "items": {"type": "string", "minLength": 2, "maxLength": 600},
            }
        },
    }
    raw, attempts, first_try, latency = await structured.generate_json(
        text,
        [Message("system", prompt), Message("user", latest)],
        schema,
        lambda value: [str(r) for r in value["replies"]],
        options=GenerationOptions(max_tokens=660, temperature=0.8),
        context=context,
        items_checked_by_caller=True,
    )
    shaped = [shape(r, profile) if styled else r.strip() for r in raw]
    replies = list(dict.fromkeys(r for r in text.check_items(shaped, context) if r))
    generation_id = structured.record(
        sessions,
        feature=FEATURE,
        user_id=user.id,
        inputs={
            "thread": thread.external_id,
            "styled": styled,
            "examples": [e["fan"] for e in examples],
        },
        output={"replies": replies},
        model=text.model_id,
        latency_ms=latency,
        attempts=attempts,
        first_try_valid=first_try,
    )
    return Replies(
        generation_id=generation_id, thread_id=thread.external_id, styled=styled, replies=replies
    )


def style_out(style: CreatorStyle) -> StyleOut:
    return StyleOut(
        enabled=style.enabled,
        edited=style.edited,
        profile=StyleProfile.model_validate(style.profile),
    )
