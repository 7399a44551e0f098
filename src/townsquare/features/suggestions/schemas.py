"""Wire shapes of the suggestion features."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Tone = Literal["supportive", "curious", "funny", "congratulatory"]


class CommentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: int = Field(3, ge=1, le=5, description="How many suggestions (1-5).")
    tone: Tone = "supportive"


class CommentSuggestions(BaseModel):
    generation_id: int = Field(description="Quote it when sending feedback on these.")
    post_id: str
    suggestions: list[str]
    dropped: int = Field(description="Suggestions removed: repeats, echoes of the post, unsafe.")
