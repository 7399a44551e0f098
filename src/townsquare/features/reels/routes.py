"""Reel recommendations."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from townsquare.api.deps import CurrentUser, DbDep, ServicesDep
from townsquare.errors import InvalidField
from townsquare.features.reels.service import Recommendations, recommend_reels

router = APIRouter(prefix="/api/reels", tags=["reels"])


@router.get("/recommendations", openapi_extra={"x-access": "authenticated"})
def recommendations(
    user: CurrentUser,
    db: DbDep,
    services: ServicesDep,
    context: Annotated[str, Query(description="A chat turn or a query; may be empty.")] = "",
    limit: Annotated[int, Query(ge=1, le=50)] = 10,
) -> Recommendations:
    """Reels the member may see and has not seen, fitting the context and their interests."""
    if len(context) > services.settings.search.max_query_chars:
        raise InvalidField(
            f"context has {len(context)} characters; the limit is "
            f"{services.settings.search.max_query_chars} (search.max_query_chars).",
            "context",
        )
    return recommend_reels(
        db, user, context, limit=limit, embedder=services.embed, vectors=services.vectors
    )
