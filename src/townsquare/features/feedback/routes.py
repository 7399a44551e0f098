"""Feedback routes: members rate what was generated for them; admins read it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from townsquare.api.deps import MAX_INT, AdminUser, CurrentUser, DbDep, Limit, RowId, ServicesDep
from townsquare.features.feedback import service
from townsquare.features.feedback.service import FeedbackIn, FeedbackOut
from townsquare.social.views import Page

router = APIRouter(prefix="/api", tags=["feedback"])


@router.post(
    "/generations/{generation_id}/feedback", openapi_extra={"x-access": "generation-owner"}
)
def give_feedback(
    generation_id: RowId, body: FeedbackIn, user: CurrentUser, db: DbDep, services: ServicesDep
) -> FeedbackOut:
    """Rate a generation made for you (thumbs, a reason, a corrected text); again replaces it."""
    out = service.give(
        db, user, generation_id, body, max_chars=services.settings.limits.max_message_chars
    )
    db.commit()
    return out


@router.get("/feedback", openapi_extra={"x-access": "admin"})
def list_feedback(
    admin: AdminUser,
    db: DbDep,
    feature: str | None = None,
    limit: Limit = 50,
    before_id: Annotated[int | None, Query(ge=1, le=MAX_INT)] = None,
) -> Page[FeedbackOut]:
    """Members' feedback, newest first, optionally for one feature."""
    return Page(data=service.recent(db, feature=feature, limit=limit, before_id=before_id))
