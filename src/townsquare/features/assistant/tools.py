"""The assistant's tools: every capability of the town, callable for one member.

Each tool has a name, a description and a JSON schema of its arguments (the OpenAI function
format, so a model that calls functions can use them as they are), and ``run`` returns a
``ToolResult``: structured cards to show (listings with price and place, reels, catch-up points
citing their messages, suggestions to pick) and ``text``, a short sentence written from a
template that names only what the cards hold. A tool runs with the asking member's permissions:
it calls the same services as the HTTP routes, with the same access checks, so it can never
show what the member could not open themselves.
"""

from __future__ import annotations

import json
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar

import anyio
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from townsquare.backends.base import EmbeddingBackend, ToolSpec
from townsquare.errors import ImagesNotConfigured, InvalidField, NotFound, TownsquareError
from townsquare.features.assistant.router import match_group
from townsquare.features.groups.service import TopicRequest, catch_up, now, suggest_topics
from townsquare.features.imagine.schemas import STYLES
from townsquare.features.imagine.service import Ask as ImageAsk
from townsquare.features.reels.service import recommend_reels
from townsquare.features.search import service as search
from townsquare.features.search.schemas import ListingFilters
from townsquare.features.search.summary import summarize
from townsquare.features.shops.service import DescriptionRequest, describe
from townsquare.features.suggestions.schemas import CommentRequest
from townsquare.features.suggestions.service import suggest_comments
from townsquare.features.suggestions.style import suggest_replies
from townsquare.safety.pipeline import GuardedText
from townsquare.settings import Settings
from townsquare.social import access
from townsquare.social.schemas import CONDITIONS
from townsquare.storage.social_tables import (
    DMMessage,
    DMParticipant,
    DMThread,
    Group,
    Listing,
    Membership,
    Post,
)
from townsquare.storage.tables import User
from townsquare.storage.vectors import VectorIndex

log = logging.getLogger("townsquare.assistant")


@dataclass
class ToolEnv:
    """What tools need from the services (built once per app)."""

    sessions: sessionmaker[Session]
    text: GuardedText
    embedder: EmbeddingBackend
    vectors: VectorIndex
    settings: Settings
    on_run: Callable[[str, str], None] | None = None  # metrics: (tool, ok|empty|error)
    images: Any = None  # the ImageService (set once built; None: no imagine tool)


@dataclass
class Asker:
    """Who asks, and where: the member's id and, in a group chat, that group's row id."""

    user_id: int
    group_id: int | None = None


@dataclass
class ToolResult:
    """What a tool found: cards to show, a grounded sentence, or an error to say."""

    tool: str
    arguments: dict[str, Any]
    cards: list[dict[str, Any]] = field(default_factory=list)
    text: str = ""
    error: str | None = None
    generation_id: int | None = None

    def for_model(self) -> str:
        """The result as a ``tool`` message for a model that called the tool."""
        if self.error:
            return json.dumps({"error": self.error})
        return json.dumps({"summary": self.text, "results": self.cards}, ensure_ascii=False)


class Tool(ABC):
    """One capability the assistant can use."""

    name: ClassVar[str]
    description: ClassVar[str]
    parameters: ClassVar[dict[str, Any]]

    def __init__(self, env: ToolEnv) -> None:
        self.env = env

    def spec(self) -> ToolSpec:
        """The tool in the OpenAI function format."""
        return ToolSpec(self.name, self.description, self.parameters)

    async def __call__(self, asker: Asker, arguments: dict[str, Any]) -> ToolResult:
        """Run the tool; a townsquare error (not found, not allowed, busy...) becomes the
        result's ``error``, said to the member instead of a card."""
        try:
            result = await self.run(asker, arguments)
        except TownsquareError as exc:
            log.info("tool %s failed for user %s: %s", self.name, asker.user_id, exc.message)
            result = ToolResult(self.name, arguments, error=exc.message)
        if self.env.on_run is not None:
            outcome = "error" if result.error else "ok" if result.cards else "empty"
            self.env.on_run(self.name, outcome)
        return result

    @abstractmethod
    async def run(self, asker: Asker, arguments: dict[str, Any]) -> ToolResult:
        """Do the work for ``asker``."""

    @asynccontextmanager
    async def _member(
        self, asker: Asker, find: Any = None, *args: Any
    ) -> AsyncIterator[tuple[Session, User, Any]]:
        """A session, the asking member, and ``find(db, user, *args)`` (the group, post, thread
        or listing the tool works on, read with the member's access rules; or the whole work of
        a tool that needs no model), run on a worker thread; the read ends before the caller
        waits for a model."""
        with self.env.sessions() as db:

            def load() -> tuple[User, Any]:
                user = db.get(User, asker.user_id)
                assert user is not None
                target = find(db, user, *args) if find is not None else None
                db.commit()
                return user, target

            user, target = await anyio.to_thread.run_sync(load)
            yield db, user, target

    async def _run_as(self, asker: Asker, work: Any) -> Any:
        """``work(db, user)`` for a tool that needs no model, on a worker thread."""
        async with self._member(asker, work) as (_, _, found):
            return found


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {plural or word + 's'}"


def _money(value: float) -> str:
    return f"€{value:g}"


def describe_filters(arguments: dict[str, Any]) -> str:
    """' under €150 near Alfama, like new': the filters in force, in words."""
    parts = []
    low, high = arguments.get("min_price"), arguments.get("max_price")
    if low is not None and high is not None:
        parts.append(f" between {_money(low)} and {_money(high)}")
    elif high is not None:
        parts.append(f" under {_money(high)}")
    elif low is not None:
        parts.append(f" over {_money(low)}")
    if arguments.get("near"):
        parts.append(f" near {arguments['near']}")
    condition = arguments.get("condition")
    if condition:
        accepted = [condition] if isinstance(condition, str) else list(condition)
        parts.append(f", {' or '.join(str(c).replace('_', ' ') for c in accepted)}")
    if arguments.get("category"):
        parts.append(f", in {arguments['category']}")
    return "".join(parts)


class SearchListings(Tool):
    name = "search_listings"
    description = (
        "Search the marketplace for active listings the member can see, with hard filters "
        "(price, place, category, condition)."
    )
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "query": {"type": "string", "minLength": 1, "description": "What to look for."},
            "max_price": {"type": "number", "minimum": 0},
            "min_price": {"type": "number", "minimum": 0},
            "near": {"type": "string", "description": "A place name of the town."},
            "category": {"type": "string"},
            "condition": {
                "anyOf": [
                    {"enum": list(CONDITIONS)},
                    {"type": "array", "items": {"enum": list(CONDITIONS)}, "minItems": 1},
                ],
                "description": "The condition accepted, or the list of those accepted.",
            },
        },
        "required": ["query"],
        "additionalProperties": False,
    }

    async def run(self, asker: Asker, arguments: dict[str, Any]) -> ToolResult:
        """Hybrid search with the filters; one card per listing."""
        env = self.env
        query = str(arguments.get("query") or "").strip()[: env.settings.search.max_query_chars]
        filters = ListingFilters(
            **{
                k: arguments[k]
                for k in ("max_price", "min_price", "near", "category", "condition")
                if arguments.get(k) is not None
            }
        )

        def work(db: Session, user: User) -> Any:
            return search.search_listings(
                db,
                user,
                query,
                filters,
                page=1,
                page_size=env.settings.assistant.max_cards,
                embedder=env.embedder,
                vectors=env.vectors,
                tuning=env.settings.search,
            )

        found = await self._run_as(asker, work)
        cards = [
            {
                "type": "listing",
                "id": hit.id,
                "title": hit.title,
                "price": hit.price,
                "currency": hit.currency,
                "location": hit.location,
                "condition": hit.condition,
                "url": f"/api/listings/{hit.id}",
            }
            for hit in found.data
        ]
        wanted = f"“{query}”{describe_filters(arguments)}"
        text = (
            f"Here {'is' if len(cards) == 1 else 'are'} {_plural(len(cards), 'listing')} "
            f"for {wanted}:"
            if cards
            else f"I found no listings for {wanted}. Try a higher price or another place."
        )
        return ToolResult(self.name, arguments, cards, text)


class SearchSummary(Tool):
    name = "search_summary"
    description = (
        "Answer a question from the town's posts, listings and reels, every sentence citing "
        "its numbered sources."
    )
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"query": {"type": "string", "minLength": 1}},
        "required": ["query"],
        "additionalProperties": False,
    }

    async def run(self, asker: Asker, arguments: dict[str, Any]) -> ToolResult:
        """The search summary: sentences with [n] citations, and the sources as cards."""
        env = self.env
        query = str(arguments.get("query") or "").strip()[: env.settings.search.max_query_chars]
        async with self._member(asker) as (db, user, _):
            summary = await summarize(
                db,
                env.sessions,
                user,
                query,
                text=env.text,
                embedder=env.embedder,
                vectors=env.vectors,
                tuning=env.settings.search,
                writing=env.settings.writing,
            )
        cards: list[dict[str, Any]] = (
            [{"type": "summary", "sentences": [s.model_dump() for s in summary.sentences]}]
            if summary.sentences
            else []
        )
        cards += [
            {"type": "source", "n": s.n, "kind": s.kind, "id": s.id, "title": s.title, "url": s.url}
            for s in summary.sources
        ]
        text = (
            f"Here is what the town says about “{query}”, with its sources:"
            if summary.sentences
            else f"I found nothing in the town about “{query}”."
        )
        return ToolResult(self.name, arguments, cards, text, generation_id=summary.generation_id)


class RecommendReels(Tool):
    name = "recommend_reels"
    description = "Recommend reels the member can watch, on a topic or from their interests."
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"topic": {"type": "string", "description": "May be empty."}},
        "additionalProperties": False,
    }

    async def run(self, asker: Asker, arguments: dict[str, Any]) -> ToolResult:
        """Reel cards for the topic and the member's interests."""
        env = self.env
        topic = str(arguments.get("topic") or "").strip()[:200]

        def work(db: Session, user: User) -> Any:
            return recommend_reels(
                db,
                user,
                topic,
                limit=env.settings.assistant.max_cards,
                embedder=env.embedder,
                vectors=env.vectors,
            )

        found = await self._run_as(asker, work)
        cards = [{"type": "reel", **card.model_dump()} for card in found.data]
        about = f" about “{topic}”" if topic else ""
        text = (
            f"Here {'is' if len(cards) == 1 else 'are'} {_plural(len(cards), 'reel')}{about} "
            "you might like:"
            if cards
            else f"I found no reels{about} for you."
        )
        return ToolResult(self.name, arguments, cards, text)


def _group_by_name(db: Session, user: User, name: str | None, here: int | None) -> Group:
    """The member's group called ``name`` (folded; a group id works too), else the group asked
    in; a group the member is not in reads as not found."""
    rows = list(
        db.scalars(
            select(Group)
            .join(Membership, Membership.group_id == Group.id)
            .where(Membership.user_id == user.id)
        )
    )
    if name:
        for group in rows:
            if group.external_id == name:
                return group
        matched = match_group(name, [g.name for g in rows])
        for group in rows:
            if group.name == matched:
                return group
        raise NotFound(f"You are not in a group called “{name}”. Name one of your groups.")
    for group in rows:
        if group.id == here:
            return group
    raise NotFound("Which group? Name one of your groups.")


class CatchUp(Tool):
    name = "catch_up"
    description = "What a group the member is in said recently: points citing their messages."
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "group": {"type": "string", "description": "The group's name."},
            "hours": {"type": "integer", "minimum": 1, "maximum": 720},
        },
        "additionalProperties": False,
    }

    async def run(self, asker: Asker, arguments: dict[str, Any]) -> ToolResult:
        """Catch-up points as cards, each with the messages it cites."""
        env = self.env
        hours = int(arguments.get("hours") or env.settings.assistant.catch_up_hours)
        async with self._member(asker, _group_by_name, arguments.get("group"), asker.group_id) as (
            db,
            user,
            group,
        ):
            result = await catch_up(
                db,
                env.sessions,
                user,
                group,
                now() - timedelta(hours=hours),
                text=env.text,
                embedder=env.embedder,
                writing=env.settings.writing,
            )
        cards = [
            {
                "type": "point",
                "text": p.text,
                "message_ids": p.message_ids,
                "links": [f"/api/groups/{group.external_id}/messages#{m}" for m in p.message_ids],
            }
            for p in result.points
        ]
        text = (
            f"Here is what you missed in {group.name} in the last {_plural(hours, 'hour')}:"
            if cards
            else f"Nothing new in {group.name} in the last {_plural(hours, 'hour')}."
        )
        used = {**arguments, "group": group.name, "hours": hours}
        return ToolResult(self.name, used, cards, text, generation_id=result.generation_id)


class SuggestTopics(Tool):
    name = "suggest_topics"
    description = "New conversation topics, each with an opener, for a group the member is in."
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "group": {"type": "string"},
            "count": {"type": "integer", "minimum": 1, "maximum": 5},
        },
        "additionalProperties": False,
    }

    async def run(self, asker: Asker, arguments: dict[str, Any]) -> ToolResult:
        """Topic cards, each with an opener to post."""
        env = self.env
        async with self._member(asker, _group_by_name, arguments.get("group"), asker.group_id) as (
            db,
            user,
            group,
        ):
            result = await suggest_topics(
                db,
                env.sessions,
                user,
                group,
                TopicRequest(count=int(arguments.get("count") or 3)),
                text=env.text,
                embedder=env.embedder,
                writing=env.settings.writing,
            )
        cards = [{"type": "topic", "topic": t.topic, "opener": t.opener} for t in result.topics]
        text = (
            f"{_plural(len(cards), 'topic').capitalize()} for {group.name}:"
            if cards
            else f"I have no new topics for {group.name} right now."
        )
        return ToolResult(self.name, arguments, cards, text, generation_id=result.generation_id)


def _latest_post(db: Session, user: User, post_id: str | None, here: int | None) -> Post:
    if post_id:
        return access.post_visible_to(db, user, post_id)
    groups = access.member_group_ids(db, user)
    query = select(Post).where(access.visible_posts(user)).order_by(Post.created_at.desc())
    if here is not None and here in groups:
        query = query.where(Post.group_id == here)
    post = db.scalars(query.limit(1)).first()
    if post is None:
        raise NotFound("There is no post you can see yet.")
    return post


class SuggestComments(Tool):
    name = "suggest_comments"
    description = "Comments the member could leave on a post (the latest one they can see)."
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "post": {"type": "string", "description": "A post id; default: the latest."},
            "tone": {"enum": ["supportive", "curious", "funny", "congratulatory"]},
        },
        "additionalProperties": False,
    }

    async def run(self, asker: Asker, arguments: dict[str, Any]) -> ToolResult:
        """Suggestion cards for the post."""
        env = self.env
        async with self._member(asker, _latest_post, arguments.get("post"), asker.group_id) as (
            db,
            user,
            post,
        ):
            result = await suggest_comments(
                db,
                env.sessions,
                user,
                post,
                CommentRequest(count=3, tone=arguments.get("tone") or "supportive"),
                text=env.text,
                embedder=env.embedder,
                vectors=env.vectors,
                writing=env.settings.writing,
            )
        cards = [
            {
                "type": "suggestion",
                "text": s,
                "post_id": post.external_id,
                "post_text": post.text[:300],
            }
            for s in result.suggestions
        ]
        excerpt = post.text[:60] + ("…" if len(post.text) > 60 else "")
        text = (
            f"{_plural(len(cards), 'comment').capitalize()} you could leave on “{excerpt}”:"
            if cards
            else f"I have no comment to suggest on “{excerpt}”."
        )
        return ToolResult(self.name, arguments, cards, text, generation_id=result.generation_id)


def _latest_thread(db: Session, user: User, thread_id: str | None) -> DMThread:
    access.require_creator(user, "Suggested replies")
    if thread_id:
        return access.thread_visible_to(db, user, thread_id)
    latest = db.scalars(
        select(DMMessage)
        .join(DMParticipant, DMParticipant.thread_id == DMMessage.thread_id)
        .where(
            DMParticipant.user_id == user.id,
            DMMessage.author_id != user.id,
            DMMessage.deleted_at.is_(None),
        )
        .order_by(DMMessage.created_at.desc())
        .limit(1)
    ).first()
    if latest is None:
        raise NotFound("You have no message from a fan yet.")
    thread = db.get(DMThread, latest.thread_id)
    assert thread is not None
    return thread


class SuggestReplies(Tool):
    name = "suggest_replies"
    description = (
        "Replies a creator could send to a fan's latest direct message (their latest thread by "
        "default), in the creator's own style when switched on."
    )
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"thread": {"type": "string", "description": "A DM thread id."}},
        "additionalProperties": False,
    }

    async def run(self, asker: Asker, arguments: dict[str, Any]) -> ToolResult:
        """Reply cards for the creator."""
        env = self.env
        async with self._member(asker, _latest_thread, arguments.get("thread")) as (
            db,
            user,
            thread,
        ):
            result = await suggest_replies(
                db,
                env.sessions,
                user,
                thread,
                text=env.text,
                embedder=env.embedder,
                vectors=env.vectors,
                writing=env.settings.writing,
            )
        cards = [
            {"type": "reply", "text": r, "thread_id": thread.external_id} for r in result.replies
        ]
        text = (
            f"{_plural(len(cards), 'reply', 'replies').capitalize()} you "
            f"could send in thread {thread.external_id}"
            f"{' (in your style)' if result.styled else ''}:"
            if cards
            else "I have no reply to suggest for that thread."
        )
        return ToolResult(self.name, arguments, cards, text, generation_id=result.generation_id)


_ABOUT_WORD = re.compile(r"[^\W\d_]{3,}")
_LATEST = {"latest", "newest", "last", "recent", "new", "most"}


def _words_of(text: str) -> set[str]:
    return {w.lower().rstrip("s") for w in _ABOUT_WORD.findall(text)}


def _sellers_listing(
    db: Session, user: User, listing_id: str | None, about: str | None = None
) -> Listing:
    """The seller's listing the request means: the one named by id; else the one whose title,
    category or attributes share most words with ``about`` ('my oak desk'); else their only
    listing. Never a guess: with several listings and nothing that tells them apart, the
    member is asked which (their titles listed)."""
    if listing_id:
        return access.listing_of_seller(db, user, listing_id)
    mine = list(
        db.scalars(
            select(Listing)
            .where(Listing.seller_id == user.id)
            .order_by(Listing.created_at.desc(), Listing.id.desc())
            .limit(50)
        )
    )
    if not mine:
        raise NotFound("You have no listing yet. List an item first.")
    titles = "; ".join(f"{m.title} ({m.external_id})" for m in mine[:8])
    wanted = _words_of(about or "")
    if wanted & _LATEST:  # 'my latest listing'
        wanted -= _LATEST
        if not wanted:
            return mine[0]
    if wanted:
        scored = [
            (
                len(
                    wanted
                    & _words_of(" ".join([m.title, m.category, *map(str, m.attributes.values())]))
                ),
                m,
            )
            for m in mine
        ]
        best = max(score for score, _ in scored)
        matches = [m for score, m in scored if score == best and best > 0]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise NotFound(
                f"None of your listings is “{about}”. Yours: {titles}. Name one of them."
            )
        mine = matches
        titles = "; ".join(f"{m.title} ({m.external_id})" for m in mine[:8])
    if len(mine) == 1:
        return mine[0]
    raise InvalidField(f"Which listing? Yours: {titles}. Say its name or id.", "listing")


class DraftDescription(Tool):
    name = "draft_description"
    description = (
        "Draft a title and description for one of the member's own listings (by id, or the one "
        "their words name) from its facts only."
    )
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "listing": {"type": "string", "description": "A listing id."},
            "about": {
                "type": "string",
                "description": "The listing in the member's words ('my oak desk') when no id.",
            },
            "tone": {"enum": ["friendly", "professional", "playful"]},
        },
        "additionalProperties": False,
    }

    async def run(self, asker: Asker, arguments: dict[str, Any]) -> ToolResult:
        """A draft card to accept or edit."""
        env = self.env
        async with self._member(
            asker, _sellers_listing, arguments.get("listing"), arguments.get("about")
        ) as (
            db,
            user,
            listing,
        ):
            draft = await describe(
                db,
                env.sessions,
                user,
                listing,
                DescriptionRequest(tone=arguments.get("tone") or "friendly"),
                text=env.text,
                writing=env.settings.writing,
            )
        card = {
            "type": "draft",
            "listing_id": draft.listing_id,
            "title": draft.title,
            "description": draft.description,
            "highlights": draft.highlights,
            "generation_id": draft.generation_id,
            "listing_title": listing.title,
            "accept_url": f"/api/listings/{draft.listing_id}/description/accept",
        }
        text = f"A draft description for your listing “{listing.title}”:"
        return ToolResult(self.name, arguments, [card], text, generation_id=draft.generation_id)


class Imagine(Tool):
    name = "imagine"
    description = (
        "Make a picture from a description (Imagine). In a group chat the picture is posted in "
        "the group, where members can remix it."
    )
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "prompt": {"type": "string", "minLength": 1, "description": "What to picture."},
            "style": {"enum": list(STYLES)},
        },
        "required": ["prompt"],
        "additionalProperties": False,
    }

    async def run(self, asker: Asker, arguments: dict[str, Any]) -> ToolResult:
        """One image through the image service's single path (moderated, checked, marked)."""
        service = self.env.images
        if service is None or service.backend is None:
            raise ImagesNotConfigured()
        ask = ImageAsk(
            prompt=str(arguments.get("prompt") or ""),
            style=str(arguments.get("style") or "none"),
            source="assistant",
        )
        group = None
        async with self._member(asker) as (db, user, _):
            if asker.group_id is not None:
                group = await anyio.to_thread.run_sync(db.get, Group, asker.group_id)
            made = await anyio.to_thread.run_sync(lambda: service.make(user, ask, group=group))
        row = made[0].row
        card = {
            "type": "image",
            "id": row.external_id,
            "url": f"/api/images/{row.external_id}/file",
            "prompt": row.prompt,
            "width": row.width,
            "height": row.height,
            "style": row.style,
            "watermarked": True,
            "reimagine_url": f"/api/images/{row.external_id}/reimagine",
        }
        where = " and posted it here, so anyone in the group can remix it" if group else ""
        return ToolResult(self.name, arguments, [card], f"I made this picture{where}:")


TOOLS: tuple[type[Tool], ...] = (
    SearchListings,
    SearchSummary,
    RecommendReels,
    CatchUp,
    SuggestTopics,
    SuggestComments,
    SuggestReplies,
    DraftDescription,
    Imagine,
)


def build_tools(env: ToolEnv) -> dict[str, Tool]:
    """Every tool, by name."""
    return {cls.name: cls(env) for cls in TOOLS}


def specs(tools: dict[str, Tool], names: Sequence[str] | None = None) -> tuple[ToolSpec, ...]:
    """The specs of ``names`` (all when None), for a model that calls functions."""
    return tuple(t.spec() for n, t in tools.items() if names is None or n in names)
