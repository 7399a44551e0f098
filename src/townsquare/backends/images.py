"""Image engines: one small interface for every way townsquare can make a picture.

``diffusers:/path/to/pipeline`` · ``openai:http://host:port/v1#model`` · ``fake`` · ``none``.

An engine only makes pixels. Everything an image goes through before anyone sees it (prompt
moderation, the output check, the watermark, storage) is ``features/imagine``'s single path,
so no engine can hand out an unmarked image.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
from PIL import Image
from typing_extensions import override

from townsquare.errors import InvalidField, InvalidRequest
from townsquare.settings import ImageSettings

SPEC_HELP = (
    "Use 'diffusers:/path/to/pipeline-dir', 'openai:http://host:port/v1#model', 'fake' or 'none'."
)


@dataclass(frozen=True)
class Size:
    """A width and height in pixels."""

    width: int
    height: int

    @classmethod
    def parse(cls, text: str) -> Size:
        """``"512x768"`` -> Size(512, 768); a 422 naming the field when it is not a size."""
        width, sep, height = text.strip().lower().partition("x")
        if not (sep and width.isdigit() and height.isdigit()):
            raise InvalidField(f"'{text}' is not a size; write WIDTHxHEIGHT, e.g. 512x512.", "size")
        return cls(int(width), int(height))

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


class ImageBackend(ABC):
    """Makes images from prompts and remixes images. Calls block: run them on worker threads,
    one at a time per backend (the image service's bounded queue sees to that)."""

    model_id: str = "image-model"
    supports_edit: bool = True
    supports_mask: bool = False
    supports_negative_prompt: bool = True

    def __init__(self, sizes: list[str]) -> None:
        self.sizes = tuple(Size.parse(s) for s in sizes)

    def check_size(self, size: Size) -> None:
        """A 422 listing the sizes this engine makes when ``size`` is not one of them."""
        if size not in self.sizes:
            raise InvalidField(
                f"This image engine does not make {size} images. Ask for one of: "
                f"{', '.join(map(str, self.sizes))} (images.sizes).",
                "size",
            )

    @abstractmethod
    def generate(
        self,
        prompt: str,
        *,
        size: Size,
        n: int = 1,
        seed: int | None = None,
        negative_prompt: str | None = None,
        steps: int | None = None,
    ) -> list[Image.Image]:
        """``n`` new images for ``prompt``; the same seed gives the same images."""

    @abstractmethod
    def edit(
        self,
        image: Image.Image,
        prompt: str,
        *,
        strength: float = 0.6,
        mask: Image.Image | None = None,
        seed: int | None = None,
        n: int = 1,
        size: Size | None = None,
    ) -> list[Image.Image]:
        """``n`` remixes of ``image`` towards ``prompt``; ``strength`` 0 keeps it, 1 ignores
        it."""

    def close(self) -> None:
        """Free what the engine holds (weights, connections)."""


def _seeded(*parts: object) -> np.random.Generator:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def _picture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A deterministic, photo-like picture: smooth colour fields with blobs and fine grain."""
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    out = np.zeros((height, width, 3))
    for channel in range(3):
        base = rng.uniform(60, 190)
        wave = sum(
            rng.uniform(15, 40)
            * np.sin(rng.uniform(2, 12) * xx + rng.uniform(0, 6))
            * np.cos(rng.uniform(2, 12) * yy + rng.uniform(0, 6))
            for _ in range(3)
        )
        out[..., channel] = base + wave
    for _ in range(int(rng.integers(4, 9))):  # soft discs: "objects"
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.25)
        disc = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        out += disc[..., None] * rng.uniform(-70, 70, 3)
    small = rng.normal(0, 1, (max(2, height // 3), max(2, width // 3), 3))
    grain = np.stack(
        [
            np.asarray(
                Image.fromarray(small[..., c].astype(np.float32), "F").resize(
                    (width, height), Image.Resampling.BICUBIC
                )
            )
            for c in range(3)
        ],
        -1,
    )
    out += 12 * grain
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class FakeImages(ImageBackend):
    """Deterministic pictures from the prompt and seed, instantly: for logic tests and demos
    without an image model. ``fail_after`` makes it raise after that many images (tests of a
    backend failing mid-way)."""

    model_id = "fake-image"
    supports_mask = True

    def __init__(self, sizes: list[str], *, fail_after: int | None = None) -> None:
        super().__init__(sizes)
        self.fail_after = fail_after
        self.calls = 0

    def _tick(self) -> None:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            from townsquare.errors import BackendError

            raise BackendError("The fake image engine failed on purpose (fail_after).")

    @override
    def generate(
        self,
        prompt: str,
        *,
        size: Size,
        n: int = 1,
        seed: int | None = None,
        negative_prompt: str | None = None,
        steps: int | None = None,
    ) -> list[Image.Image]:
        images = []
        for i in range(n):
            self._tick()
            rng = _seeded("generate", prompt, negative_prompt or "", seed, i)
            images.append(Image.fromarray(_picture(rng, size.width, size.height)))
        return images

    @override
    def edit(
        self,
        image: Image.Image,
        prompt: str,
        *,
        strength: float = 0.6,
        mask: Image.Image | None = None,
        seed: int | None = None,
        n: int = 1,
        size: Size | None = None,
    ) -> list[Image.Image]:
        width, height = (size.width, size.height) if size else image.size
        source = np.asarray(image.convert("RGB").resize((width, height))).astype(float)
        keep = None
        if mask is not None:  # OpenAI's convention: transparent pixels are the ones to change
            alpha = mask.convert("RGBA").resize((width, height)).getchannel("A")
            keep = (np.asarray(alpha) > 0)[..., None]
        images = []
        for i in range(n):
            self._tick()
            new = _picture(_seeded("edit", prompt, seed, i), width, height).astype(float)
            mixed = (1 - strength) * source + strength * new
            if keep is not None:
                mixed = np.where(keep, source, mixed)
            images.append(Image.fromarray(np.clip(np.rint(mixed), 0, 255).astype(np.uint8)))
        return images


def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``kind:target``; ``fake`` and ``none`` have no target."""
    kind, _, target = spec.partition(":")
    if kind in {"fake", "none"} and not target:
        return kind, ""
    if kind not in {"diffusers", "openai"} or not target:
        raise InvalidRequest(f"Unknown image backend '{spec}'. {SPEC_HELP}")
    if kind == "openai" and "#" not in target:
        raise InvalidRequest(
            f"The OpenAI Images backend '{spec}' names no model. Add it after '#', e.g. "
            "'openai:http://localhost:8001/v1#sd-turbo'."
        )
    return kind, target


def build_image_backend(settings: ImageSettings) -> ImageBackend | None:
    """The configured image engine, loaded; None when images are not configured."""
    kind, target = parse_spec(settings.backend)
    if kind == "none":
        return None
    if kind == "fake":
        return FakeImages(settings.sizes)
    if kind == "diffusers":
        from townsquare.backends.diffusers_images import DiffusersImages

        return DiffusersImages(target, settings)
    from townsquare.backends.openai_images import OpenAIImages

    return OpenAIImages(target, settings)
