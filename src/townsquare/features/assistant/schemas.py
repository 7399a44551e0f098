"""Wire shapes of the assistant API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field

from townsquare.features.assistant import markdown


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConversationCreate(Strict):
    title: str = Field("", max_length=200, description="Shown in the conversation list.")
    system_prompt: str | None = Field(
        None, description="Persona / instructions for this conversation's assistant."
    )


class MessageCreate(Strict):
    content: str = Field(min_length=1, description="The member's message.")
    stream: bool = Field(False, description="Answer with Server-Sent Events, token by token.")
    max_tokens: int | None = Field(None, ge=1, description="Longest reply, in tokens.")
    temperature: float | None = Field(None, ge=0, le=2)


class MessageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    role: str
    content: str
    model: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cards: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Tool results to show with the reply: listings, reels, catch-up points, "
        "topics, suggestions, replies, drafts, sources (each has a 'type').",
    )
    created_at: datetime

    @computed_field(description="The content rendered from Markdown to safe HTML.")  # type: ignore[prop-decorator]
    @property
    def content_html(self) -> str:
        """The content as HTML (raw HTML in it escaped, unsafe links dropped)."""
        return markdown.render(self.content)

    @computed_field(description="True when the reply was cut at max_tokens.")  # type: ignore[prop-decorator]
    @property
    def truncated(self) -> bool:
        """Whether the reply stopped at the token limit."""
        return self.finish_reason == "length"


class ConversationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    title: str
    system_prompt: str | None
    created_at: datetime
    updated_at: datetime


class ConversationDetail(ConversationOut):
    messages: list[MessageOut]


class ConversationList(BaseModel):
    data: list[ConversationOut]


class Exchange(BaseModel):
    """The stored pair of one turn: the member's message and the assistant's reply."""

    conversation_id: int
    user_message: MessageOut
    reply: MessageOut
    generation_id: int | None = Field(
        None, description="Quote it to send feedback: POST /api/generations/{id}/feedback."
    )
