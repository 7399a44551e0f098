"""Wire shapes of search."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Condition = Literal["new", "like_new", "good", "fair", "for_parts"]


class ListingFilters(BaseModel):
    """Hard filters: applied before ranking, never relaxed."""

    category: str | None = None
    min_price: float | None = Field(None, ge=0)
    max_price: float | None = Field(None, ge=0)
    condition: Condition | None = None
    near: str | None = None
    radius_km: float = Field(5.0, gt=0, le=500)


class ListingHit(BaseModel):
    id: str
    title: str
    price: str
    currency: str
    category: str
    condition: str
    location: str
    attributes: dict[str, Any]
    score: float = Field(description="Reciprocal-rank-fusion score (higher is better).")
    matched: list[str] = Field(
        description="Fields the query's words were found in; 'meaning' when only the vector "
        "search found it."
    )
    distance_km: float | None = None


class ListingResults(BaseModel):
    query: str
    page: int
    page_size: int
    total: int = Field(description="Hits across all pages.")
    filters: ListingFilters = Field(description="The filters in force, explicit and understood.")
    understood: dict[str, Any] = Field(
        default_factory=dict, description="Filters read from the query's wording (understand=true)."
    )
    data: list[ListingHit]


class Source(BaseModel):
    """A numbered source for a search result summary."""

    n: int
    kind: Literal["listing", "post", "reel"]
    id: str
    title: str
    snippet: str
    url: str
    score: float
    # whose words these are (the seller, the author, the creator): kept with a summary's
    # generation for erasure and exports, never sent
    owner_id: int | None = Field(None, exclude=True)


class Sources(BaseModel):
    query: str
    sources: list[Source]
