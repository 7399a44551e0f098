"""Suggestion routes."""

from __future__ import annotations

from fastapi import APIRouter

from townsquare.api.deps import CurrentUser, DbDep, ServicesDep
from townsquare.features.suggestions.schemas import CommentRequest, CommentSuggestions
from townsquare.features.suggestions.service import suggest_comments
from townsquare.social import access

router = APIRouter(prefix="/api", tags=["suggestions"])


@router.post("/posts/{post_id}/comment-suggestions", openapi_extra={"x-access": "post-viewer"})
async def comment_suggestions(
    post_id: str, body: CommentRequest, user: CurrentUser, db: DbDep, services: ServicesDep
) -> CommentSuggestions:
    """Short, distinct comments the member could leave on a post they can see."""
    post = access.post_visible_to(db, user, post_id)
    return await suggest_comments(
        db, services.sessions, user, post, body, text=services.guarded_text
    )
