"""Wire shapes of search."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from townsquare.social.schemas import CONDITIONS, MAX_PRICE

Condition = Literal["new", "like_new", "good", "fair", "for_parts"]


class ListingFilters(BaseModel):
    """Hard filters: applied before ranking, never relaxed."""

    category: str | None = Field(None, max_length=200)
    min_price: float | None = Field(None, ge=0, le=MAX_PRICE)
    max_price: float | None = Field(None, ge=0, le=MAX_PRICE)
    condition: list[Condition] | None = Field(
        None,
        description="The conditions accepted (any of them); one condition may be given "
        "as a plain string.",
    )
    near: str | None = Field(None, max_length=200)
    radius_km: float = Field(5.0, gt=0, le=500)

    @field_validator("condition", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list | tuple | set):
            order = {c: i for i, c in enumerate(CONDITIONS)}  # unknown ones: Literal's 422
            return sorted(set(value), key=lambda c: order.get(c, 99)) if value else None
        return value


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


class Alternative(ListingHit):
    """An item outside the member's filters, shown when nothing inside them matches."""

    outside: list[str] = Field(description="The filters it does not meet, in words.")


class ListingResults(BaseModel):
    query: str
    searched: str = Field(
        "",
        description="The words searched: the query without the filters read from it "
        "(empty when the query was only filters: the filtered list, no summary).",
    )
    page: int
    page_size: int
    total: int = Field(description="Hits across all pages.")
    filters: ListingFilters = Field(description="The filters in force, explicit and understood.")
    understood: dict[str, Any] = Field(
        default_factory=dict, description="Filters read from the query's wording (understand=true)."
    )
    data: list[ListingHit]
    nothing_matches: bool = Field(
        False,
        description="No result inside the filters is what was searched for (only related "
        "items, or none): say so, and offer ``alternatives``.",
    )
    alternatives: list[Alternative] = Field(
        default_factory=list,
        description="When nothing matches: the nearest items outside the filters, each with "
        "the filters it does not meet.",
    )


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
