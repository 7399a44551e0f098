"""Group features: topic suggestions and catch-up summaries (members only).

Topics that are already being discussed (too similar to a recent message, by embedding) are
dropped. Catch-up points cite the messages they come from; the schema allows only the numbers
of the messages supplied, and every point must cite at least one (checked again on parsing).

The group's messages are its members' content, read as data: each is screened before it goes
into a prompt (one carrying instructions to the assistant, or a hazard the policy blocks, is
withheld and its id reported), the prompt marks where they begin and end, and an answer that
repeats a phone number, account, link or payment instruction from them is not sent.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anyio
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from townsquare.backends.base import EmbeddingBackend, GenerationOptions, Message
from townsquare.errors import InvalidField
from townsquare.features import prompts, structured
from townsquare.features.groups import extract
from townsquare.features.junk import junk_reasons
from townsquare.safety.pipeline import Context, GuardedText
from townsquare.storage.social_tables import Group, GroupMessage
from townsquare.storage.tables import User

RECENT = 40  # messages the model reads
ALREADY_DISCUSSED = 0.6  # cosine similarity to a recent message that makes a topic "current"


class TopicRequest(BaseModel):
    count: int = Field(3, ge=1, le=5)


class Topic(BaseModel):
    topic: str
    opener: str


class Topics(BaseModel):
    generation_id: int
    group_id: str
    topics: list[Topic]
    dropped: int
    withheld: list[str] = Field(
        default_factory=list,
        description="Messages left out: they carry instructions to the assistant or a hazard.",
    )


class Point(BaseModel):
    text: str
    message_ids: list[str]


class CatchUp(BaseModel):
    generation_id: int | None
    group_id: str
    since: datetime
    messages: int
    points: list[Point]
    withheld: list[str] = Field(
        default_factory=list,
        description="Messages left out: they carry instructions to the assistant or a hazard.",
    )


def _recent(db: Session, group: Group, since: datetime | None, limit: int) -> list[dict[str, Any]]:
    query = (
        select(GroupMessage, User.display_name, User.name)
        .join(User, User.id == GroupMessage.author_id)
        .where(GroupMessage.group_id == group.id, GroupMessage.deleted_at.is_(None))
    )
    if since is not None:
        query = query.where(GroupMessage.created_at > since)
    rows = db.execute(query.order_by(GroupMessage.created_at.desc()).limit(limit)).all()
    return [
        {
            "id": m.external_id,
            "author": display or name,
            "text": m.text,
            "author_id": m.author_id,
            "pk": m.id,
            "reply_to_pk": m.reply_to_id,
        }
        for m, display, name in reversed(rows)
    ]


async def _recent_off_loop(
    db: Session, group: Group, since: datetime | None
) -> list[dict[str, Any]]:
    """``_recent`` on a worker thread, ending the read so no connection is held meanwhile."""

    def read() -> list[dict[str, Any]]:
        recent = _recent(db, group, since, RECENT)
        db.commit()
        return recent

    return await anyio.to_thread.run_sync(read)


async def suggest_topics(
    db: Session,
    sessions: sessionmaker[Session],
    user: User,
    group: Group,
    request: TopicRequest,
    *,
    text: GuardedText,
    embedder: EmbeddingBackend,
    writing: str = "model",
) -> Topics:
    """Conversation starters for a group, grounded in its recent messages. ``writing="core"``:
    the threads' keyphrases with openers quoting their messages (``extract``); ``"model"``:
    the text model writes them, topics already being discussed are dropped, junk is dropped,
    and when nothing is left the core answers."""
    context = Context("group_topics", user.id, user.role, group.id, subject=(), third_party=True)
    read = await _recent_off_loop(db, group, None)
    if not read:  # nothing to draw topics from: said, never invented
        raise InvalidField(
            f"Not enough to suggest from: {group.name} has no messages yet. Post a few first.",
            "group",
        )
    recent, withheld = await structured.screen_sources(
        text, read, lambda m: str(m["text"]), context
    )

    async def core() -> Topics:
        found: list[Topic] = []
        if recent:
            vectors = await embedder.embed([str(m["text"]) for m in recent])
            made = extract.topic_suggestions(recent, vectors, count=request.count)
            found = [Topic(topic=t["topic"], opener=t["opener"]) for t in made]
            allowed = set(
                await text.check_items([f"{t.topic}: {t.opener}" for t in found], context)
            )
            found = [t for t in found if f"{t.topic}: {t.opener}" in allowed]
        generation_id = await structured.record_core(
            sessions,
            context,
            inputs={"group": group.external_id, "messages": [m["id"] for m in recent]},
            output={"topics": [t.model_dump() for t in found]},
            contributors=sorted({user.id, *(int(m["author_id"]) for m in recent)}),
        )
        return Topics(
            generation_id=generation_id,
            group_id=group.external_id,
            topics=found,
            dropped=0,
            withheld=[str(m["id"]) for m in withheld],
        )

    if writing == "core":
        return await core()
    names = [group.name, *{str(m["author"]) for m in recent}]
    sources = [str(m["text"]) for m in recent]
    schema = {
        "type": "object",
        "required": ["topics"],
        "properties": {
            "topics": {
                "type": "array",
                "minItems": 1,
                "maxItems": request.count + 2,
                "items": {
                    "type": "object",
                    "required": ["topic", "opener"],
                    "properties": {
                        "topic": structured.text_field(80, 2),
                        "opener": structured.text_field(200, 5),
                    },
                },
            }
        },
    }

    async def finish(topics: list[Topic]) -> tuple[tuple[list[Topic], int], dict[str, Any]]:
        safe_openers = set(
            await text.check_items([f"{t.topic}: {t.opener}" for t in topics], context)
        )
        candidates = [
            t
            for t in topics
            if f"{t.topic}: {t.opener}" in safe_openers
            and not junk_reasons(t.topic, sources=sources, names=names, min_words=1)
            and not junk_reasons(t.opener, sources=sources, names=names, opener=True)
        ]
        fresh = candidates
        if recent and candidates:
            topic_vectors = await embedder.embed([t.topic for t in candidates])  # (t, d)
            message_vectors = await embedder.embed([m["text"] for m in recent])  # (m, d)
            nearest = (topic_vectors @ message_vectors.T).max(axis=1)
            fresh = [t for t, s in zip(candidates, nearest, strict=True) if s < ALREADY_DISCUSSED]
        unique: list[Topic] = []
        for topic in fresh:
            if topic.topic.lower() not in {u.topic.lower() for u in unique}:
                unique.append(topic)
        kept = unique[: request.count]
        return (kept, len(topics) - len(kept)), {"topics": [t.model_dump() for t in kept]}

    (kept, dropped), generation_id = await structured.generate_recorded(
        text,
        sessions,
        [
            Message(
                "user",
                prompts.render(
                    __file__, "topics.j2", count=request.count, group=group.name, messages=recent
                ),
            )
        ],
        schema,
        lambda raw: [Topic.model_validate(t) for t in raw["topics"]],
        options=GenerationOptions(max_tokens=64, temperature=0.8),  # raised to the schema's need
        context=context,
        inputs={"group": group.external_id, "messages": [m["id"] for m in recent]},
        finish=finish,
        items_checked_by_caller=True,
        contributors=[int(m["author_id"]) for m in recent],
    )
    if not kept and recent:  # every generated topic failed a check: the core answers
        return await core()
    return Topics(
        generation_id=generation_id,
        group_id=group.external_id,
        topics=kept,
        dropped=dropped,
        withheld=[str(m["id"]) for m in withheld],
    )


def _points(raw: Any, messages: list[dict[str, Any]]) -> list[Point]:
    points = []
    for item in raw["points"]:
        numbers = sorted(
            {n for n in item["messages"] if isinstance(n, int) and 1 <= n <= len(messages)}
        )
        if str(item["text"]).strip() and numbers:
            points.append(
                Point(
                    text=str(item["text"]).strip(),
                    message_ids=[messages[n - 1]["id"] for n in numbers],
                )
            )
    if not points:
        raise ValueError("no point cites a supplied message")
    return points


async def catch_up(
    db: Session,
    sessions: sessionmaker[Session],
    user: User,
    group: Group,
    since: datetime,
    *,
    text: GuardedText,
    embedder: EmbeddingBackend | None = None,
    writing: str = "model",
) -> CatchUp:
    """What a group said since ``since``: a few points, each citing the messages it comes from.
    ``writing="core"`` (needs ``embedder``): real sentences of the key messages with who said
    them (``extract``); ``"model"``: the text model writes the points, junk points are dropped,
    and when none is left the core answers (with an embedder)."""
    since = since if since.tzinfo else since.replace(tzinfo=UTC)
    context = Context("group_catch_up", user.id, user.role, group.id, subject=(), third_party=True)
    messages, withheld = await structured.screen_sources(
        text, await _recent_off_loop(db, group, since), lambda m: str(m["text"]), context
    )
    if not messages:
        return CatchUp(
            generation_id=None,
            group_id=group.external_id,
            since=since,
            messages=0,
            points=[],
            withheld=[str(m["id"]) for m in withheld],
        )

    async def core() -> CatchUp:
        assert embedder is not None
        vectors = await embedder.embed([str(m["text"]) for m in messages])
        made = [Point(**p) for p in extract.catch_up_points(messages, vectors, count=5)]
        allowed = set(await text.check_items([p.text for p in made], context))
        points = [p for p in made if p.text in allowed]
        generation_id = await structured.record_core(
            sessions,
            context,
            inputs={"group": group.external_id, "since": since.isoformat()},
            output={"points": [p.model_dump() for p in points]},
            contributors=sorted({user.id, *(int(m["author_id"]) for m in messages)}),
        )
        return CatchUp(
            generation_id=generation_id,
            group_id=group.external_id,
            since=since,
            messages=len(messages),
            points=points,
            withheld=[str(m["id"]) for m in withheld],
        )

    if writing == "core" and embedder is not None:
        return await core()
    names = [group.name, *{str(m["author"]) for m in messages}]
    sources = [str(m["text"]) for m in messages]
    numbered = [{**m, "n": n} for n, m in enumerate(messages, start=1)]
    schema = {
        "type": "object",
        "required": ["points"],
        "properties": {
            "points": {
                "type": "array",
                "minItems": 1,
                "maxItems": 5,
                "items": {
                    "type": "object",
                    "required": ["text", "messages"],
                    "properties": {
                        "text": structured.text_field(220, 3),
                        "messages": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": 4,
                            "items": {"type": "integer", "enum": list(range(1, len(messages) + 1))},
                        },
                    },
                },
            }
        },
    }

    async def finish(found: list[Point]) -> tuple[list[Point], dict[str, Any]]:
        allowed = set(await text.check_items([p.text for p in found], context))
        kept = [
            p
            for p in found
            if p.text in allowed and not junk_reasons(p.text, sources=sources, names=names)
        ]
        return kept, {"points": [p.model_dump() for p in kept]}

    points, generation_id = await structured.generate_recorded(
        text,
        sessions,
        [
            Message(
                "user",
                prompts.render(__file__, "catchup.j2", group=group.name, messages=numbered),
            )
        ],
        schema,
        lambda raw: _points(raw, messages),
        options=GenerationOptions(max_tokens=64, temperature=0.3),  # raised to the schema's need
        context=context,
        inputs={
            "group": group.external_id,
            "since": since.isoformat(),
            "messages": [m["id"] for m in messages],
        },
        finish=finish,
        items_checked_by_caller=True,
        contributors=[int(m["author_id"]) for m in messages],
    )
    if not points and embedder is not None:  # every written point was junk: the core answers
        return await core()
    return CatchUp(
        generation_id=generation_id,
        group_id=group.external_id,
        since=since,
        messages=len(messages),
        points=points,
        withheld=[str(m["id"]) for m in withheld],
    )


def now() -> datetime:
    """The current time in UTC (a function, so tests and the CLI can move it)."""
    return datetime.now(UTC)
