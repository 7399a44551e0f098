"""Comment suggestions: short, distinct comments a member could leave on a post.

Suggestions that repeat each other or the post, or fail the output check, are dropped, never
rewritten: a missing suggestion is better than one silently changed.
"""

from __future__ import annotations

import re
from typing import Any

import anyio
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session, sessionmaker

from townsquare.backends.base import GenerationOptions, Message
from townsquare.errors import ContentBlocked, InvalidField
from townsquare.features import prompts, structured
from townsquare.features.suggestions.schemas import CommentRequest, CommentSuggestions
from townsquare.safety.pipeline import Context, GuardedText
from townsquare.storage.social_tables import Post
from townsquare.storage.tables import User

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
) -> CommentSuggestions:
    """Draft up to ``request.count`` comments on ``post`` in its author's language."""
    if not post.text.strip() and not post.image_url:
        raise InvalidField(
            "The post has neither text nor an image: there is nothing to comment on.", "post"
        )
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
