"""Suggestion routes."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from townsquare.api.deps import CreatorUser, CurrentUser, DbDep, ServicesDep
from townsquare.features.suggestions.schemas import CommentRequest, CommentSuggestions
from townsquare.features.suggestions.service import suggest_comments
from townsquare.features.suggestions.style import (
    Replies,
    StyleOut,
    StyleUpdate,
    style_for,
    style_out,
    suggest_replies,
    update_style,
)
from townsquare.social import access

router = APIRouter(prefix="/api", tags=["suggestions"])


@router.post("/posts/{post_id}/comment-suggestions", openapi_extra={"x-access": "post-viewer"})
async def comment_suggestions(
    post_id: str, body: CommentRequest, user: CurrentUser, db: DbDep, services: ServicesDep
) -> CommentSuggestions:
    """Short, distinct comments the member could leave on a post they can see."""
    post = await run_in_threadpool(access.post_visible_to, db, user, post_id)
    return await suggest_comments(
        db,
        services.sessions,
        user,
        post,
        body,
        text=services.guarded_text,
        embedder=services.embed,
        vectors=services.vectors,
        writing=services.settings.writing,
    )


@router.post("/dm-threads/{thread_id}/suggested-replies", openapi_extra={"x-access": "dm-creator"})
async def suggested_replies(
    thread_id: str, user: CurrentUser, db: DbDep, services: ServicesDep
) -> Replies:
    """Three replies to the fan's latest message, in the creator's own voice when switched on."""
    thread = await run_in_threadpool(access.thread_visible_to, db, user, thread_id)
    return await suggest_replies(
        db,
        services.sessions,
        user,
        thread,
        text=services.guarded_text,
        embedder=services.embed,
        vectors=services.vectors,
        writing=services.settings.writing,
    )


@router.get("/creators/me/style", openapi_extra={"x-access": "creator"})
def my_style(user: CreatorUser, db: DbDep) -> StyleOut:
    """The style profile computed from the creator's past replies, and whether it is on."""
    return style_out(style_for(db, user))


@router.put("/creators/me/style", openapi_extra={"x-access": "creator"})
def edit_my_style(body: StyleUpdate, user: CreatorUser, db: DbDep) -> StyleOut:
    """Switch the style on or off, or correct the profile (greeting, sign-off, length)."""
    return style_out(update_style(db, user, body))
