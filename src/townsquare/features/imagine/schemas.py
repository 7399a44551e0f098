"""Request and response shapes of Imagine and Reimagine."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Style presets: words added to the prompt. "none" adds nothing.
STYLES: dict[str, str] = {
    "none": "",
    "photo": "photograph, natural light, sharp focus, detailed",
    "illustration": "digital illustration, clean lines, vivid colours",
    "watercolor": "watercolour painting, soft washes, paper texture",
    "pixel-art": "pixel art, 16-bit, limited palette",
    "sticker": "die-cut sticker, bold outline, flat colours, white border",
    "3d": "3D render, soft studio lighting, smooth materials",
    "sketch": "pencil sketch, cross-hatching, monochrome",
}
Style = Literal[
    "none", "photo", "illustration", "watercolor", "pixel-art", "sticker", "3d", "sketch"
]
MAX_SEED = 2**31 - 1


class ImagineRequest(BaseModel):
    """Make images from a prompt."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, description="What to picture (images.max_prompt_chars).")
    size: str | None = Field(None, description="WIDTHxHEIGHT, one of images.sizes.")
    n: int = Field(1, ge=1, le=10, description="How many images (at most images.max_n).")
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="Same seed, prompt and size: same image."
    )
    style: Style = Field("none", description="A style preset added to the prompt.")
    negative_prompt: str | None = Field(None, description="What to keep out of the picture.")
    group_id: str | None = Field(
        None,
        description="Post the images in this group (you must be a member): its members see "
        "them and may remix them.",
    )


class ReimagineRequest(BaseModel):
    """Remix a version of an image with a new prompt."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, description="How to change the picture.")
    strength: float = Field(
        0.6, ge=0.05, le=1.0, description="How far from the original: 0.05 barely, 1 entirely."
    )
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    style: Style = "none"


class ImageOut(BaseModel):
    """An image made here. Every one carries the invisible provenance mark."""

    id: str
    url: str = Field(description="The PNG file (GET with your API key or session).")
    width: int
    height: int
    prompt: str
    negative_prompt: str = ""
    style: str
    seed: int
    strength: float | None = None
    model: str
    source: str = Field(description="imagine, reimagine, assistant, v1, v1-edit or cli.")
    group_id: str | None = None
    parent_id: str | None = Field(None, description="The version this one was remixed from.")
    root_id: str | None = Field(None, description="The first image of its version tree.")
    author: str | None = None
    created_at: datetime
    ai_generated: bool = True
    watermarked: bool = Field(True, description="Carries the invisible provenance mark.")


class ImageList(BaseModel):
    """A page of images, newest first."""

    data: list[ImageOut]
    next_before: str | None = Field(None, description="Pass as ?before= for the next page.")


class VersionNode(ImageOut):
    """One version in a tree, with the versions remixed from it."""

    children: list[VersionNode] = Field(default_factory=list)


class VersionTree(BaseModel):
    """Every version of an image that its reader may see, as a tree from the first one."""

    root_id: str
    count: int
    tree: list[VersionNode] = Field(
        description="The root (and any version whose parent was deleted), each with children."
    )
