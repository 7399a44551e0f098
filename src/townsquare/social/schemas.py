"""What host apps send: one strict model per kind. References to other entities are the host
app's external ids (``"group": "g-42"``). Unknown fields are refused, naming them."""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from townsquare.bounds import check_instant
from townsquare.identity import NAME_PATTERN

Text = str


def _text_limit(value: str, info: ValidationInfo) -> str:
    limit = (info.context or {}).get("max_text_chars")
    if limit is not None and len(value) > limit:
        raise ValueError(
            f"has {len(value)} characters; the limit is {limit} (ingest.max_text_chars)"
        )
    return value


class IngestModel(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @field_validator("*", mode="after")
    @classmethod
    def _dates_in_range(cls, value: Any, info: ValidationInfo) -> Any:
        """Every date lies between 1970 and 2100 (a year-9999 date is a 422, not a 500)."""
        if isinstance(value, datetime):
            check_instant(value, info.field_name or "date")
        return value


class UserIn(IngestModel):
    name: str = Field(description="Unique handle: lowercase letters, digits, '.', '_', '-'.")
    display_name: str = Field("", max_length=128)
    locale: str = Field("en", max_length=16)
    role: Literal["member", "creator"] = "member"

    @field_validator("name")
    @classmethod
    def _handle(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError("use 1-64 lowercase letters, digits, '.', '_' or '-'")
        return value


def _web_url(value: str | None) -> str | None:
    """Only http(s) URLs with a host: a ``javascript:`` or ``data:`` URL in a link or an image
    is script in the member's browser."""
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme.lower() not in {"http", "https"} or not parts.netloc:
        raise ValueError("must be an http:// or https:// URL")
    return value


class MemberIn(IngestModel):
    user: str
    role: Literal["member", "moderator"] = "member"


class GroupIn(IngestModel):
    name: str = Field(min_length=1, max_length=200)
    kind: Literal["chat", "community"] = "chat"
    description: str = ""
    members: list[MemberIn] | None = Field(
        None, description="When given, replaces the group's membership."
    )

    _limit = field_validator("description")(_text_limit)

    @field_validator("members")
    @classmethod
    def _once_each(cls, value: list[MemberIn] | None) -> list[MemberIn] | None:
        users = [m.user for m in value or []]
        twice = sorted({u for u in users if users.count(u) > 1})
        if twice:
            raise ValueError(f"lists {', '.join(twice)} more than once; give each member once")
        return value


class MessageIn(IngestModel):
    group: str
    author: str
    text: str = Field(min_length=1)
    reply_to: str | None = None
    created_at: datetime | None = None

    _limit = field_validator("text")(_text_limit)


class PostIn(IngestModel):
    author: str
    group: str | None = Field(None, description="Absent: a public post.")
    text: str = ""
    image_url: str | None = Field(None, max_length=2048, description="An http(s) URL.")
    created_at: datetime | None = None

    _limit = field_validator("text")(_text_limit)
    _url = field_validator("image_url")(_web_url)

    @model_validator(mode="after")
    def _has_content(self) -> PostIn:
        if not self.text and not self.image_url:
            raise ValueError("a post needs text or an image_url")
        return self


class CommentIn(IngestModel):
    post: str
    author: str
    text: str = Field(min_length=1)
    created_at: datetime | None = None

    _limit = field_validator("text")(_text_limit)


class DMThreadIn(IngestModel):
    participants: list[str] = Field(min_length=2, max_length=50)

    @field_validator("participants")
    @classmethod
    def _two_people(cls, value: list[str]) -> list[str]:
        if len(set(value)) < 2:
            raise ValueError("a DM thread needs at least two different participants")
        return value


class DMMessageIn(IngestModel):
    thread: str
    author: str
    text: str = Field(min_length=1)
    created_at: datetime | None = None

    _limit = field_validator("text")(_text_limit)


MAX_PRICE = 100_000_000  # the largest price a listing may have (and a search may name)
CONDITIONS = ("new", "like_new", "good", "fair", "for_parts")
LISTING_STATUSES = ("active", "sold", "removed", "draft")


class ListingIn(IngestModel):
    seller: str
    title: str = Field(min_length=1, max_length=300)
    attributes: dict[str, str | int | float | bool] = Field(default_factory=dict)
    price: Decimal = Field(ge=0, le=MAX_PRICE, decimal_places=2)
    currency: str = Field("EUR", pattern=r"^[A-Z]{3}$")
    category: str = Field(min_length=1, max_length=64)
    condition: Literal["new", "like_new", "good", "fair", "for_parts"] = "good"
    location: str = Field("", max_length=200)
    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)
    images: list[str] = Field(default_factory=list, max_length=20, description="http(s) URLs.")
    status: Literal["active", "sold", "removed", "draft"] = "active"

    @field_validator("images")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        for url in value:
            _web_url(url)
        return value

    @field_validator("category")
    @classmethod
    def _slug(cls, value: str) -> str:
        return re.sub(r"\s+", "-", value.strip().lower())


class ReelIn(IngestModel):
    creator: str
    caption: str = ""
    transcript: str = ""
    tags: list[str] = Field(default_factory=list, max_length=50)
    duration_s: float = Field(ge=0, le=36_000)
    media_url: str = Field(min_length=1, max_length=2048, description="An http(s) URL.")
    visibility: Literal["public", "group", "private"] = "public"
    group: str | None = None
    created_at: datetime | None = None

    _limit = field_validator("caption", "transcript")(_text_limit)
    _url = field_validator("media_url")(_web_url)

    @model_validator(mode="after")
    def _group_matches_visibility(self) -> ReelIn:
        if (self.visibility == "group") != (self.group is not None):
            raise ValueError("visibility 'group' needs a group, and only it may name one")
        return self


class InteractionIn(IngestModel):
    user: str
    target_kind: Literal["reel", "listing", "post"]
    target: str
    action: Literal["view", "like", "save", "hide"]
    value: float | None = Field(None, description="For views: seconds watched.")
    created_at: datetime | None = None


class RowError(BaseModel):
    row: int = Field(description="1-based position in the batch.")
    external_id: str | None
    errors: list[str]


class IngestReport(BaseModel):
    kind: str
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[RowError] = Field(default_factory=list)


def describe_errors(errors: list[Any]) -> list[str]:
    """Pydantic errors as 'field: problem' strings."""
    out = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ())) or "row"
        if error.get("type") == "extra_forbidden":
            out.append(f"{where}: unknown field, remove it")
        else:
            message = str(error.get("msg", "")).removeprefix("Value error, ")
            out.append(f"{where}: {message}")
    return out
