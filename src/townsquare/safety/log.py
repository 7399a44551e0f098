"""The moderation log as admins read it: every refused input or output, with its hazard codes,
feature, group, stage and an excerpt; filtered and paged newest first."""

from __future__ import annotations

import json
from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from townsquare.storage.social_tables import Group
from townsquare.storage.tables import SafetyEventRow, User


class ModerationEntry(BaseModel):
    """One moderation decision."""

    id: int
    created_at: datetime
    user: str | None
    group: str | None
    feature: str
    stage: str
    allowed: bool
    hazards: list[str]
    reason: str
    excerpt: str


def entries(
    db: Session,
    *,
    limit: int,
    before_id: int | None = None,
    feature: str | None = None,
    code: str | None = None,
    stage: str | None = None,
) -> list[ModerationEntry]:
    """Decisions newest first, ``limit`` at a time (page with ``before_id``). ``code`` keeps the
    decisions that name that hazard code."""
    query = select(SafetyEventRow)
    if before_id is not None:
        query = query.where(SafetyEventRow.id < before_id)
    if feature:
        query = query.where(SafetyEventRow.feature == feature)
    if stage:
        query = query.where(SafetyEventRow.stage == stage)
    if code:
        query = query.where(SafetyEventRow.hazards.contains(f'"{code}"'))
    rows = list(db.scalars(query.order_by(SafetyEventRow.id.desc()).limit(limit)))
    users = {r.user_id for r in rows if r.user_id is not None}
    groups = {r.group_id for r in rows if r.group_id is not None}
    names: dict[int, str] = {}
    if users:
        names = {i: n for i, n in db.execute(select(User.id, User.name).where(User.id.in_(users)))}
    group_ids: dict[int, str] = {}
    if groups:
        group_ids = {
            i: e
            for i, e in db.execute(select(Group.id, Group.external_id).where(Group.id.in_(groups)))
        }
    return [
        ModerationEntry(
            id=r.id,
            created_at=r.created_at,
            user=names.get(r.user_id) if r.user_id is not None else None,
            group=group_ids.get(r.group_id) if r.group_id is not None else None,
            feature=r.feature,
            stage=r.stage,
            allowed=r.allowed,
            hazards=list(json.loads(r.hazards or "[]")),
            reason=r.reason,
            excerpt=r.excerpt,
        )
        for r in rows
    ]
