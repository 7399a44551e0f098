"""Feedback routes: members rate what was generated for them; admins read it, and the
moderation log."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from townsquare.api.deps import AdminUser, CurrentUser, DbDep, Limit, RowId, ServicesDep
from townsquare.bounds import MAX_INT
from townsquare.errors import InvalidField
from townsquare.features.feedback import service
from townsquare.features.feedback.service import FeedbackIn, FeedbackOut
from townsquare.safety import log
from townsquare.safety.log import ModerationEntry
from townsquare.safety.pipeline import Context
from townsquare.safety.taxonomy import CODES
from townsquare.social.views import Page

router = APIRouter(prefix="/api", tags=["feedback"])


@router.post(
    "/generations/{generation_id}/feedback", openapi_extra={"x-access": "generation-owner"}
)
def give_feedback(
    generation_id: RowId, body: FeedbackIn, user: CurrentUser, db: DbDep, services: ServicesDep
) -> FeedbackOut:
    """Rate a generation made for you (thumbs, a reason, a corrected text); again replaces it.
    A correction is moderated: one the policy blocks is stored as blocked (the answer says so)
    and never reaches a training export."""
    out = service.give(
        db,
        user,
        generation_id,
        body,
        max_chars=services.settings.limits.max_message_chars,
        screen=services.safety.screen_text(
            Context("feedback", user.id, user.role),
            training_threshold=services.settings.safety.training_threshold,
        ),
    )
    db.commit()
    return out


@router.get("/moderation/log", openapi_extra={"x-access": "admin"}, tags=["safety"])
def moderation_log(
    admin: AdminUser,
    db: DbDep,
    feature: str | None = None,
    code: Annotated[
        str | None, Query(description="Only decisions naming this hazard code (e.g. S10).")
    ] = None,
    stage: Literal["input", "output"] | None = None,
    limit: Limit = 50,
    before_id: Annotated[int | None, Query(ge=1, le=MAX_INT)] = None,
) -> Page[ModerationEntry]:
    """Refused inputs and outputs, and allowed ones that carried a `warn` code (allowed: true),
    newest first, with hazard codes, feature, group and excerpt."""
    if code is not None and code not in CODES:
        raise InvalidField(f"code '{code}' is unknown; use one of {', '.join(CODES)}.", "code")
    return Page(
        data=log.entries(
            db, limit=limit, before_id=before_id, feature=feature, code=code, stage=stage
        )
    )


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
