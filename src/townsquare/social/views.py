"""What the read endpoints return."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field


class GroupOut(BaseModel):
    id: str
    name: str
    kind: str
    description: str
    my_role: str | None
    members: int


class MessageOut(BaseModel):
    id: str
    author: str
    text: str
    reply_to: str | None
    created_at: datetime
    cards: list[dict[str, Any]] = Field(
        default_factory=list, description="The assistant's tool results, shown with its reply."
    )
    generation_id: int | None = Field(
        None,
        description="On the assistant's replies: the generation the member who asked may rate "
        "(POST /api/generations/{id}/feedback).",
    )


class CommentOut(BaseModel):
    id: str
    author: str
    text: str
    created_at: datetime


class PostOut(BaseModel):
    id: str
    author: str
    group: str | None
    text: str
    image_url: str | None
    created_at: datetime
    comments: list[CommentOut] | None = None


class ThreadOut(BaseModel):
    id: str
    participants: list[str]


class ListingOut(BaseModel):
    id: str
    seller: str
    title: str
    description: str = Field("", description="The seller's accepted product description.")
    attributes: dict[str, Any]
    price: str
    currency: str
    category: str
    condition: str
    location: str
    images: list[str]
    status: str


class ReelOut(BaseModel):
    id: str
    creator: str
    caption: str
    transcript: str
    tags: list[str]
    duration_s: float
    media_url: str
    visibility: str


class AuditOut(BaseModel):
    id: int
    created_at: datetime
    actor_id: int | None
    actor_role: str
    action: str
    target: str
    detail: dict[str, Any]


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    data: list[T]
