"""Group routes: topic suggestions and catch-up (members of the group only)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from townsquare.api.deps import CurrentUser, DbDep, ServicesDep
from townsquare.features.groups.service import (
    CatchUp,
    TopicRequest,
    Topics,
    catch_up,
    now,
    suggest_topics,
)
from townsquare.social import access

router = APIRouter(prefix="/api/groups", tags=["groups"])


@router.post("/{group_id}/topic-suggestions", openapi_extra={"x-access": "group-member"})
async def topic_suggestions(
    group_id: str, body: TopicRequest, user: CurrentUser, db: DbDep, services: ServicesDep
) -> Topics:
    """New topics that fit the group's conversation, each with an opener."""
    group = await run_in_threadpool(access.group_visible_to, db, user, group_id)
    return await suggest_topics(
        db,
        services.sessions,
        user,
        group,
        body,
        text=services.guarded_text,
        embedder=services.embed,
        writing=services.settings.writing,
    )


@router.get("/{group_id}/catch-up", openapi_extra={"x-access": "group-member"})
async def group_catch_up(
    group_id: str,
    user: CurrentUser,
    db: DbDep,
    services: ServicesDep,
    since: Annotated[datetime | None, Query(description="ISO time; default: 24 hours ago.")] = None,
) -> CatchUp:
    """What the member missed since ``since``, each point citing its messages."""
    group = await run_in_threadpool(access.group_visible_to, db, user, group_id)
    return await catch_up(
        db,
        services.sessions,
        user,
        group,
        since or now() - timedelta(days=1),
        text=services.guarded_text,
        embedder=services.embed,
        writing=services.settings.writing,
    )
