"""What host apps send: one strict model per kind. References to other entities are the host
app's external ids (``"group": "g-42"``). Unknown fields are refused, naming them."""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

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
    image_url: str | None = Field(None, max_length=2048)
    created_at: datetime | None = None

    _limit = field_validator("text")(_text_limit)

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


class DMMessageIn(IngestModel):
    thread: str
    author: str
    text: str = Field(min_length=1)
    created_at: datetime | None = None

    _limit = field_validator("text")(_text_limit)


CONDITIONS = ("new", "like_new", "good", "fair", "for_parts")
LISTING_STATUSES = ("active", "sold", "removed", "draft")


class ListingIn(IngestModel):
    seller: str
    title: str = Field(min_length=1, max_length=300)
    attributes: dict[str, str | int | float | bool] = Field(default_factory=dict)
    price: Decimal = Field(ge=0, le=Decimal("100000000"), decimal_places=2)
    currency: str = Field("EUR", pattern=r"^[A-Z]{3}$")
    category: str = Field(min_length=1, max_length=64)
    condition: Literal["new", "like_new", "good", "fair", "for_parts"] = "good"
    location: str = Field("", max_length=200)
    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)
    images: list[str] = Field(default_factory=list, max_length=20)
    status: Literal["active", "sold", "removed", "draft"] = "active"

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
    media_url: str = Field(min_length=1, max_length=2048)
    visibility: Literal["public", "group", "private"] = "public"
    group: str | None = None
    created_at: datetime | None = None

    _limit = field_validator("caption", "transcript")(_text_limit)

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
