"""Comment suggestions: short, distinct comments a member could leave on a post.

Suggestions that repeat each other or the post, or fail the output check, are dropped, never
rewritten: a missing suggestion is better than one silently changed.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

import anyio
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from townsquare.backends.base import EmbeddingBackend, GenerationOptions, Message
from townsquare.errors import ContentBlocked, InvalidField
from townsquare.features import prompts, structured
from townsquare.features.suggestions.schemas import CommentRequest, CommentSuggestions
from townsquare.safety.pipeline import Context, GuardedText
from townsquare.social import access
from townsquare.storage.social_tables import Comment, Post
from townsquare.storage.tables import User
from townsquare.storage.vectors import VectorIndex

FEATURE = "comment_suggestions"
LANGUAGES = {"en": "English", "pt": "Portuguese", "es": "Spanish", "fr": "French", "de": "German"}
TONES = {
    "supportive": "warm and encouraging",
    "curious": "asking a friendly question",
    "funny": "light and playful, never mean",
    "congratulatory": "congratulating the author",
}


class _Answer(BaseModel):
    comments: list[str] = Field(min_length=1)


def schema(count: int) -> dict[str, Any]:
    """The JSON schema of ``count`` comment suggestions (plus two spares)."""
    return {
        "type": "object",
        "properties": {
            "comments": {
                "type": "array",
                "items": structured.text_field(200, 2),
                "minItems": 1,
                "maxItems": count + 2,  # a little spare: some may be dropped
            }
        },
        "required": ["comments"],
    }


def _norm(text: str) -> str:
    return re.sub(r"[^\w]+", " ", text.lower()).strip()


def clean(candidates: list[str], post_text: str, count: int) -> tuple[list[str], int]:
    """Strip, drop repeats and echoes of the post, keep at most ``count``; (kept, dropped)."""
    kept: list[str] = []
    seen: set[str] = set()
    post = _norm(post_text)
    for raw in candidates:
        text = raw.strip().strip('"').strip()
        key = _norm(text)
        if not key or key in seen or (post and (key == post or key in post)):
            continue
        seen.add(key)
        kept.append(text)
    dropped = len(candidates) - len(kept)
    return kept[:count], dropped + max(0, len(kept) - count)


TONE_CUES = {
    "curious": re.compile(r"\?\s*$"),
    "congratulatory": re.compile(r"\b(congrat\w*|well done|bravo|amazing|proud)\b", re.I),
    "funny": re.compile(r"\b(haha|lol|ha)\b|😂|🤣|😄|😆", re.I),
}
NEIGHBOURS = 8  # similar posts whose comments the core chooses among
RESPONSE_SET = 200  # most comments read from them (the newest)


def _response_set(
    db: Session,
    user: User,
    post: Post,
    *,
    embedder: EmbeddingBackend,
    vectors: VectorIndex,
) -> list[tuple[str, int]]:
    """The town's own comments on the posts most like ``post`` that ``user`` may see (the
    response set of this kind of post), nearest post first: (text, author id)."""
    vector = vectors.vector("posts", post.id)
    if vector is None:
        vector = embedder.embed_sync([post.text or "a photo"])[0]
    groups = access.member_group_ids(db, user)
    hits = vectors.search(
        "posts", vector, NEIGHBOURS + 1, access.posts_filter(user, groups), exclude={post.id}
    )
    order = {post_id: rank for rank, (post_id, _) in enumerate(hits)}
    rows = db.execute(
        select(Comment.text, Comment.author_id, Comment.post_id)
        .where(Comment.post_id.in_(list(order)), Comment.author_id != user.id)
        .order_by(Comment.id.desc())
        .limit(RESPONSE_SET)  # a post with thousands of comments costs the same
    ).all()
    db.commit()
    return [(t, a) for t, a, p in sorted(rows, key=lambda r: order[r[2]])]


def core_comments(
    candidates: list[tuple[str, int]], post_text: str, tone: str, count: int
) -> list[str]:
    """``count`` distinct comments from the response set, those that fit ``tone`` first
    (a question for 'curious'...), the most common first within each."""
    texts = [t.strip() for t, _ in candidates if t.strip()]
    frequency = {t: texts.count(t) for t in texts}
    ranked = sorted(dict.fromkeys(texts), key=lambda t: -frequency[t])
    cue = TONE_CUES.get(tone)
    if cue is not None:
        ranked = [t for t in ranked if cue.search(t)] + [t for t in ranked if not cue.search(t)]
    kept, _ = clean(ranked, post_text, count)
    return kept


def _author(db: Session, post: Post) -> User | None:
    author = db.get(User, post.author_id)
    db.commit()  # no connection held while the model writes
    return author


async def suggest_comments(
    db: Session,
    sessions: sessionmaker[Session],
    user: User,
    post: Post,
    request: CommentRequest,
    *,
    text: GuardedText,
    embedder: EmbeddingBackend | None = None,
    vectors: VectorIndex | None = None,
    writing: str = "model",
) -> CommentSuggestions:
    """Up to ``request.count`` comments on ``post``. ``writing="core"`` (with ``embedder`` and
    ``vectors``): chosen from the town's own comments on the most similar posts; ``"model"``:
    drafted by the text model in the post author's language."""
    if not post.text.strip() and not post.image_url:
        raise InvalidField(
            "The post has neither text nor an image: there is nothing to comment on.", "post"
        )
    if writing == "core" and embedder is not None and vectors is not None:
        return await _core(db, sessions, user, post, request, text, embedder, vectors)
    author = await anyio.to_thread.run_sync(_author, db, post)
    language = LANGUAGES.get((author.locale if author else "en")[:2], "English")
    messages = [
        Message(
            "system",
            prompts.render(
                __file__,
                "comments.j2",
                count=request.count,
                language=language,
                tone_words=TONES[request.tone],
            ),
        ),
        Message(
            "user",
            prompts.render(
                __file__,
                "post.j2",
                text=post.text,
                image=bool(post.image_url),
                author=(author.display_name if author else "a member"),
            ),
        ),
    ]
    # the post is its author's content, read as data: one that carries instructions to the
    # assistant or a blocked hazard gets no suggestions
    context = Context(FEATURE, user.id, user.role, post.group_id, subject=(), third_party=True)
    if post.text.strip():
        (verdict,) = await text.check_sources([post.text], context)
        if not verdict.allowed:
            raise ContentBlocked(
                "No comments are suggested for this post: " + verdict.reason, verdict.hazards
            )

    async def finish(answer: list[str]) -> tuple[tuple[list[str], int], dict[str, Any]]:
        # unsafe ones first, so a dropped suggestion makes room for the next candidate
        safe_candidates = await text.check_items(answer, context)
        safe, dropped = clean(safe_candidates, post.text, request.count)
        dropped += len(answer) - len(safe_candidates)
        return (safe, dropped), {"suggestions": safe, "dropped": dropped}

    (safe, dropped), generation_id = await structured.generate_recorded(
        text,
        sessions,
        messages,
        schema(request.count),
        lambda v: _Answer.model_validate(v).comments,
        options=GenerationOptions(max_tokens=64, temperature=0.8),  # raised to the schema's need
        context=context,
        inputs={"post": post.external_id, "count": request.count, "tone": request.tone},
        finish=finish,
        items_checked_by_caller=True,
        contributors=[post.author_id],
    )
    return CommentSuggestions(
        generation_id=generation_id, post_id=post.external_id, suggestions=safe, dropped=dropped
    )


async def _core(
    db: Session,
    sessions: sessionmaker[Session],
    user: User,
    post: Post,
    request: CommentRequest,
    text: GuardedText,
    embedder: EmbeddingBackend,
    vectors: VectorIndex,
) -> CommentSuggestions:
    context = Context(FEATURE, user.id, user.role, post.group_id, subject=(), third_party=True)
    found = await anyio.to_thread.run_sync(
        partial(_response_set, db, user, post, embedder=embedder, vectors=vectors)
    )
    candidates = core_comments(found, post.text, request.tone, request.count + 2)
    if not candidates:
        raise InvalidField(
            "Not enough to suggest from: no similar post here has comments yet.", "post"
        )
    safe = (await text.check_items(candidates, context))[: request.count]
    generation_id = await structured.record_core(
        sessions,
        context,
        inputs={"post": post.external_id, "count": request.count, "tone": request.tone},
        output={"suggestions": safe, "dropped": 0},
        contributors=sorted({user.id, post.author_id, *(a for _, a in found)}),
    )
    return CommentSuggestions(
        generation_id=generation_id, post_id=post.external_id, suggestions=safe, dropped=0
    )
