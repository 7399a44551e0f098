"""Creators' style: a profile computed from their past DM replies, and suggested replies in it.

The profile (length distribution, emoji and exclamation rates, casing, greeting and sign-off
habits, frequent phrases) is stored per creator, shown to them, editable, and off until they
switch it on. With it on, suggestions get the profile and the creator's most similar past
exchanges as few-shot examples, and are then moved toward the profile where that is mechanical
(casing, emoji habit, length, sign-off).
"""

from __future__ import annotations

import hashlib
import re
import statistics
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from itertools import pairwise
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from townsquare.backends.base import EmbeddingBackend, GenerationOptions, Message
from townsquare.errors import ContentBlocked, InvalidField
from townsquare.features import prompts, structured
from townsquare.safety.pipeline import Context, GuardedText
from townsquare.social import access
from townsquare.storage.social_tables import CreatorStyle, DMMessage, DMParticipant, DMThread
from townsquare.storage.tables import User
from townsquare.storage.vectors import VectorIndex

FEATURE = "creator_replies"
EMOJI = re.compile("[\U0001f300-\U0001faff\u2600-\u27bf]")
EXAMPLES = 3
EXAMPLE_POOL = 500  # most recent exchanges a creator's examples are drawn from


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


@dataclass(frozen=True)
class Exchange:
    reply_id: int  # the creator's reply (a DM message id): the key in the index
    fan: str
    reply: str
    fan_id: int = 0  # who wrote the fan message (erasure and exports)

    @property
    def fan_hash(self) -> str:
        """A hash of the fan message: an example's vector is re-embedded only when it changes."""
        return hashlib.sha256(self.fan.encode()).hexdigest()[:32]


def exchanges(db: Session, creator: User, *, limit: int = EXAMPLE_POOL) -> list[Exchange]:
    """The creator's ``limit`` most recent (fan message, reply) pairs, newest first, in one
    query over the creator's own threads (a reply is a message of theirs that directly
    follows someone else's)."""
    ordering = (DMMessage.created_at, DMMessage.id)
    window = (
        select(
            DMMessage.id,
            DMMessage.text,
            DMMessage.author_id,
            func.lag(DMMessage.text)
            .over(partition_by=DMMessage.thread_id, order_by=ordering)
            .label("previous_text"),
            func.lag(DMMessage.author_id)
            .over(partition_by=DMMessage.thread_id, order_by=ordering)
            .label("previous_author"),
        )
        .where(
            DMMessage.thread_id.in_(
                select(DMParticipant.thread_id).where(DMParticipant.user_id == creator.id)
            ),
            DMMessage.deleted_at.is_(None),
        )
        .subquery()
    )
    rows = db.execute(
        select(window.c.id, window.c.previous_text, window.c.text, window.c.previous_author)
        .where(
            window.c.author_id == creator.id,
            window.c.previous_author.is_not(None),
            window.c.previous_author != creator.id,
        )
        .order_by(window.c.id.desc())
        .limit(limit)
    ).all()
    return [Exchange(int(i), fan, reply, int(who)) for i, fan, reply, who in rows]


def pairs(db: Session, creator: User) -> list[tuple[str, str]]:
    """(fan message, creator's reply) pairs, oldest first (the recent ``EXAMPLE_POOL``)."""
    return [(e.fan, e.reply) for e in reversed(exchanges(db, creator))]


def examples_collection(creator_id: int) -> str:
    """The index collection holding one creator's fan messages (for similar examples)."""
    return f"replies:{creator_id}"


def similar_exchanges(
    db: Session,
    creator: User,
    message: str,
    *,
    embedder: EmbeddingBackend,
    vectors: VectorIndex,
    count: int = EXAMPLES,
    pool: int = EXAMPLE_POOL,
) -> list[Exchange]:
    """The creator's past exchanges whose fan message is most like ``message``.

    The fan messages' vectors live in the index (one collection per creator), synced
    incrementally: only exchanges new (or edited) since the last call are embedded, and
    ones that left the recent pool or were deleted are dropped.
    """
    recent = {e.reply_id: e for e in exchanges(db, creator, limit=pool)}
    if not recent:
        return []
    collection = examples_collection(creator.id)
    stored = vectors.state(collection, recent)
    new = [e for e in recent.values() if stored.get(e.reply_id, ("", ""))[0] != e.fan_hash]
    if new:
        embedded = embedder.embed_sync([e.fan for e in new])  # (n, d)
        vectors.upsert(collection, [e.reply_id for e in new], embedded, [e.fan_hash for e in new])
    gone = set(vectors.hashes(collection)) - set(recent)  # bounded by the pool
    if gone:
        vectors.delete(collection, gone)
    query = embedder.embed_sync([message])[0]
    return [recent[i] for i, _ in vectors.search(collection, query, count) if i in recent]


def compute_profile(replies: list[str]) -> StyleProfile:
    """A creator's style measured from their replies: length, emoji, case, greeting, sign-off,
    phrases."""
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
    """Apply the creator's edits to their style (switching it on or off, or changing the profile).
    Commits."""
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
    if profile.emoji_rate <= 0.05:
        text = EMOJI.sub("", text).strip()
    limit = int(max(profile.p75_chars, profile.median_chars) * 1.5) if profile.median_chars else 0
    if limit and len(text) > limit:
        cut = max(text.rfind(".", 0, limit), text.rfind("!", 0, limit))
        text = text[: cut + 1] if cut > limit // 3 else text[:limit].rstrip() + "…"
    # after the cut, so the emoji is never what gets cut (the model writes none of its own:
    # structured text excludes emoji, see structured.text_field)
    if profile.emoji_rate >= 0.6 and profile.top_emoji and not EMOJI.search(text):
        text = f"{text} {profile.top_emoji[0]}"
    if profile.sign_off:
        at = text.lower().find(profile.sign_off.lower())
        # end with the usual sign-off, and nothing after it
        text = (
            text[: at + len(profile.sign_off)] if at >= 0 else f"{text.rstrip()} {profile.sign_off}"
        )
    return text


@dataclass(frozen=True)
class _Inputs:
    latest: str
    profile: StyleProfile
    styled: bool
    examples: list[dict[str, str]]
    fans: list[int]  # whose messages the prompt holds
    fan_name: str = ""  # the fan being answered, as the creator would greet them
    nearest: tuple[Exchange, ...] = ()  # the core's candidates: most similar first
    names: tuple[tuple[int, str], ...] = ()  # (fan id, name) of the candidates' fans


CORE_CANDIDATES = 12  # past exchanges the core chooses its three replies among


def _words(text: str) -> set[str]:
    return {w.lower() for w in re.findall(r"[^\W\d_]+", text)}


def core_replies(
    nearest: list[Exchange], names: dict[int, str], fan_name: str, count: int = 3
) -> list[str]:
    """``count`` of the creator's own past replies to the fan messages most like this one
    (most similar first), unlike each other (word overlap under 0.6: several intents), with
    the one obvious slot adapted: the earlier fan's name becomes this fan's."""
    chosen: list[str] = []
    for exchange in nearest:
        reply = exchange.reply.strip()
        old = names.get(exchange.fan_id, "")
        if old and fan_name and old != fan_name:
            reply = re.sub(rf"\b{re.escape(old)}\b", fan_name, reply)
        words = _words(reply)
        if not words:
            continue
        if any(
            len(words & _words(other)) / max(1, len(words | _words(other))) >= 0.6
            for other in chosen
        ):
            continue
        chosen.append(reply)
        if len(chosen) == count:
            break
    return chosen


def _inputs(
    db: Session,
    user: User,
    thread: DMThread,
    *,
    embedder: EmbeddingBackend,
    vectors: VectorIndex,
    use_style: bool | None,
    core: bool = False,
) -> _Inputs:
    """Everything a suggestion needs from the database and the index (a worker thread)."""
    fan_messages = db.execute(
        select(DMMessage.text, DMMessage.author_id)
        .where(
            DMMessage.thread_id == thread.id,
            DMMessage.deleted_at.is_(None),
            DMMessage.author_id != user.id,
        )
        .order_by(DMMessage.created_at.desc(), DMMessage.id.desc())
        .limit(1)
    ).all()
    if not fan_messages:
        raise InvalidField("The thread has no message from the fan to reply to yet.", "thread")
    latest, fan_id = fan_messages[0]
    style = style_for(db, user)
    styled = style.enabled if use_style is None else use_style
    nearest: list[Exchange] = []
    if core:
        nearest = similar_exchanges(
            db, user, latest, embedder=embedder, vectors=vectors, count=CORE_CANDIDATES
        )
    if core:
        found = nearest[:EXAMPLES]
    elif styled:
        found = similar_exchanges(db, user, latest, embedder=embedder, vectors=vectors)
    else:
        found = []
    examples = [{"fan": e.fan, "reply": e.reply} for e in found]
    fans = [int(fan_id), *(e.fan_id for e in found)]
    people = {int(fan_id), *(e.fan_id for e in nearest)}
    names = {
        uid: (display or name).split()[0]
        for uid, display, name in db.execute(
            select(User.id, User.display_name, User.name).where(User.id.in_(people))
        )
        if display or name
    }
    db.commit()  # no connection held while the model writes
    return _Inputs(
        latest,
        StyleProfile.model_validate(style.profile),
        styled,
        examples,
        fans,
        fan_name=names.get(int(fan_id), ""),
        nearest=tuple(nearest),
        names=tuple(names.items()),
    )


async def suggest_replies(
    db: Session,
    sessions: sessionmaker[Session],
    user: User,
    thread: DMThread,
    *,
    text: GuardedText,
    embedder: EmbeddingBackend,
    vectors: VectorIndex,
    use_style: bool | None = None,
    writing: str = "model",
) -> Replies:
    """Three replies for the creator to the thread's latest fan message. ``writing="core"``:
    chosen among the creator's own past replies to the most similar fan messages
    (``core_replies``; their style is theirs by construction); ``"model"``: the text model
    writes them (with the style machinery when it is on)."""
    access.require_creator(user, "Suggested replies")
    core = writing == "core"
    found = await anyio.to_thread.run_sync(
        partial(
            _inputs,
            db,
            user,
            thread,
            embedder=embedder,
            vectors=vectors,
            use_style=use_style,
            core=core,
        )
    )
    styled, profile = found.styled, found.profile
    # the fan's message (and the past ones in the examples) are other members' content: read
    # as data; a message that carries instructions to the assistant or a blocked hazard is not
    # answered, an example that does is left out
    context = Context(FEATURE, user.id, user.role, subject=(), third_party=True)
    (verdict,) = await text.check_sources([found.latest], context)
    if not verdict.allowed:
        raise ContentBlocked(
            "No replies are suggested for this message: " + verdict.reason, verdict.hazards
        )
    if core:
        candidates = core_replies(list(found.nearest), dict(found.names), found.fan_name)
        if not candidates:
            raise InvalidField(
                "Not enough to suggest from: you have no past replies to messages like this "
                "one yet. Reply a few times, and suggestions will follow your own words.",
                "thread",
            )
        kept = list(dict.fromkeys(r for r in await text.check_items(candidates, context) if r))
        generation_id = await structured.record_core(
            sessions,
            context,
            inputs={"thread": thread.external_id, "styled": True, "core": True},
            output={"replies": kept},
            contributors=sorted({*found.fans, *(e.fan_id for e in found.nearest), user.id}),
        )
        return Replies(
            generation_id=generation_id, thread_id=thread.external_id, styled=True, replies=kept
        )
    examples, _ = await structured.screen_sources(text, found.examples, lambda e: e["fan"], context)
    prompt = prompts.render(
        __file__,
        "replies.j2",
        creator=user.display_name or user.name,
        style=profile if styled else None,
        examples=examples,
    )
    schema = {
        "type": "object",
        "required": ["replies"],
        "properties": {
            "replies": {
                "type": "array",
                "minItems": 3,
                "maxItems": 3,
                "items": structured.text_field(300, 2),
            }
        },
    }

    async def finish(raw: list[str]) -> tuple[list[str], dict[str, Any]]:
        shaped = [shape(r, profile) if styled else r.strip() for r in raw]
        kept = list(dict.fromkeys(r for r in await text.check_items(shaped, context) if r))
        return kept, {"replies": kept}

    replies, generation_id = await structured.generate_recorded(
        text,
        sessions,
        [Message("system", prompt), Message("user", found.latest)],
        schema,
        lambda value: [str(r) for r in value["replies"]],
        options=GenerationOptions(max_tokens=660, temperature=0.8),
        context=context,
        inputs={
            "thread": thread.external_id,
            "styled": styled,
            "examples": [e["fan"] for e in examples],
        },
        finish=finish,
        items_checked_by_caller=True,
        contributors=found.fans,
    )
    return Replies(
        generation_id=generation_id, thread_id=thread.external_id, styled=styled, replies=replies
    )


def style_out(style: CreatorStyle) -> StyleOut:
    """The stored style as the API shows it."""
    return StyleOut(
        enabled=style.enabled,
        edited=style.edited,
        profile=StyleProfile.model_validate(style.profile),
    )
