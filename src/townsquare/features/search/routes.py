"""Search routes: marketplace search and the sources behind search summaries."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from townsquare.api.deps import CurrentUser, DbDep, ServicesDep
from townsquare.errors import InvalidField
from townsquare.features.search import service
from townsquare.features.search.query import core_words, read_filters
from townsquare.features.search.schemas import Condition, ListingFilters, ListingResults, Sources
from townsquare.features.search.summary import Summary, SummaryRequest, summarize
from townsquare.services import Services
from townsquare.social.schemas import MAX_PRICE
from townsquare.storage.tables import User

router = APIRouter(prefix="/api", tags=["search"])


def _query(services: Services, q: str) -> str:
    q = q.strip()
    limit = services.settings.search.max_query_chars
    if not q:
        raise InvalidField("q is empty. Say what you are looking for.", "q")
    if len(q) > limit:
        raise InvalidField(
            f"q has {len(q)} characters; the limit is {limit} (search.max_query_chars).", "q"
        )
    return q


async def read_wording(
    q: str,
    explicit: dict[str, Any],
    user: User,
    db: Session,
    services: Services,
    *,
    model: bool,
) -> tuple[dict[str, Any], str]:
    """The filters ``q`` states (the one parser the assistant's router uses: prices, a place,
    the conditions accepted, a category from the town's listings) that ``explicit`` does not
    already set, and the words left to search. ``model``: also ask the text model for what
    the rules left unread (the API's ``understand``; the web box and the router use rules)."""
    known = await run_in_threadpool(service.place_names, db)
    if model:
        read = await service.understand(
            q, text_model=services.guarded_text, user=user, known_places=known
        )
    else:
        read = read_filters(q, known)
    words = core_words(q, known)
    if explicit.get("category") is None and words:
        inferred = await run_in_threadpool(
            service.category_of, services.embed, services.vectors, services.settings.search, words
        )
        if inferred is not None:
            read["category"] = inferred
    # words never override what the caller set explicitly
    return {k: v for k, v in read.items() if explicit.get(k) is None}, words


@router.get("/listings/search", openapi_extra={"x-access": "authenticated"})
async def search_listings(
    user: CurrentUser,
    db: DbDep,
    services: ServicesDep,
    q: Annotated[str, Query(description="What the member is looking for, in their words.")],
    category: str | None = None,
    min_price: Annotated[float | None, Query(ge=0, le=MAX_PRICE)] = None,
    max_price: Annotated[float | None, Query(ge=0, le=MAX_PRICE)] = None,
    condition: Annotated[
        list[Condition] | None,
        Query(description="A condition accepted; repeat it to accept several."),
    ] = None,
    near: Annotated[str | None, Query(description="'lat,lon' or a place name.")] = None,
    radius_km: Annotated[float, Query(gt=0, le=500)] = 5.0,
    page: Annotated[int, Query(ge=1, le=10_000)] = 1,
    page_size: Annotated[int | None, Query(ge=1, le=10_000)] = None,
    understand: Annotated[
        bool,
        Query(
            description="Also read filters from the wording ('under 150', 'in Alfama', 'not "
            "for parts', a category from the town's listings) and search what is left."
        ),
    ] = False,
) -> ListingResults:
    """Active listings ranked by words and meaning together; filters are hard. With
    ``understand``, the query is read as the assistant reads it (one parser): the filters it
    states apply (never over an explicit one), the rest is searched; a query that is only
    filters gives the filtered list."""
    q = _query(services, q)
    size = page_size or 20
    if size > services.settings.search.max_page_size:
        raise InvalidField(
            f"page_size is {size}; the most is {services.settings.search.max_page_size} "
            "(search.max_page_size).",
            "page_size",
        )
    explicit = {
        "category": category,
        "min_price": min_price,
        "max_price": max_price,
        "condition": condition,
        "near": near,
    }
    understood: dict[str, Any] = {}
    words = None
    if understand:
        understood, words = await read_wording(q, explicit, user, db, services, model=True)
    filters = ListingFilters(
        **{k: v for k, v in explicit.items() if v is not None}, **understood, radius_km=radius_km
    )
    # the search itself (database, index, query embedding) runs on a worker thread
    return await run_in_threadpool(
        partial(
            service.search_listings,
            db,
            user,
            q,
            filters,
            page=page,
            page_size=size,
            embedder=services.embed,
            vectors=services.vectors,
            understood=understood,
            tuning=services.settings.search,
            words=words,
        )
    )


@router.get("/search/sources", openapi_extra={"x-access": "authenticated"})
def search_sources(
    user: CurrentUser,
    db: DbDep,
    services: ServicesDep,
    q: str,
    limit: Annotated[int, Query(ge=1, le=20)] = 8,
) -> Sources:
    """Numbered sources across listings, posts and reels: the input of a search summary."""
    return service.retrieve_sources(
        db,
        user,
        _query(services, q),
        limit=limit,
        embedder=services.embed,
        vectors=services.vectors,
        tuning=services.settings.search,
    )


@router.post("/search/summary", openapi_extra={"x-access": "authenticated"})
async def search_summary(
    body: SummaryRequest, user: CurrentUser, db: DbDep, services: ServicesDep
) -> Summary:
    """A short answer from the member's search results, every sentence citing its sources."""
    return await summarize(
        db,
        services.sessions,
        user,
        _query(services, body.query),
        text=services.guarded_text,
        embedder=services.embed,
        vectors=services.vectors,
        tuning=services.settings.search,
        filters=body.filters,
        writing=services.settings.writing,
    )
