"""The audit log of admin and moderator actions: who, what, when."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from townsquare.storage.social_tables import AuditEvent
from townsquare.storage.tables import User


def record(db: Session, actor: User | None, action: str, target: str = "", **detail: Any) -> None:
    """Add an audit event to the session (committed with the action it describes)."""
    db.add(
        AuditEvent(
            actor_id=actor.id if actor else None,
            actor_role=actor.role if actor else "cli",
            action=action,
            target=target,
            detail=detail,
        )
    )


def recent(db: Session, *, limit: int, before_id: int | None = None) -> list[AuditEvent]:
    """Audit entries, newest first, ``limit`` at a time, before ``before_id`` when given."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if before_id is not None:
        query = query.where(AuditEvent.id < before_id)
    return list(db.scalars(query))
