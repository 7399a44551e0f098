"""Shop routes: product descriptions for sellers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from townsquare.api.deps import CurrentUser, DbDep, ServicesDep
from townsquare.features.shops.service import (
    FEATURE,
    Accept,
    DescriptionRequest,
    Draft,
    accept,
    describe,
)
from townsquare.safety.pipeline import Context
from townsquare.social import access
from townsquare.storage.social_tables import Listing

router = APIRouter(prefix="/api/listings", tags=["shops"])


@router.post("/{listing_id}/description", openapi_extra={"x-access": "listing-seller"})
async def draft_description(
    listing_id: str, body: DescriptionRequest, user: CurrentUser, db: DbDep, services: ServicesDep
) -> Draft:
    """A title, description, highlights and tags drawn only from the listing's facts."""

    def find() -> Listing:
        found = access.listing_of_seller(db, user, listing_id)
        db.commit()  # no connection held while the model writes
        return found

    listing = await run_in_threadpool(find)
    return await describe(
        db,
        services.sessions,
        user,
        listing,
        body,
        text=services.guarded_text,
        writing=services.settings.writing,
    )


@router.post("/{listing_id}/description/accept", openapi_extra={"x-access": "listing-seller"})
def accept_description(
    listing_id: str, body: Accept, user: CurrentUser, db: DbDep, services: ServicesDep
) -> dict[str, Any]:
    """Put a draft (as generated, or edited) on the listing."""
    listing = access.listing_of_seller(db, user, listing_id)
    screen = services.safety.screen_text(
        Context(FEATURE, user.id, user.role),
        training_threshold=services.settings.safety.training_threshold,
    )
    listing = accept(db, user, listing, body, screen=screen)
    return {"id": listing.external_id, "title": listing.title, "description": listing.description}
