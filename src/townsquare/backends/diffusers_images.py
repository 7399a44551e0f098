"""A diffusers pipeline saved on disk (SD 1.5/2.1, SD-Turbo, SDXL-Turbo, PixArt, FLUX...).

Loaded once with ``DiffusionPipeline.from_pretrained(dir)``; remixes use the image-to-image
pipeline built from the same components (``AutoPipelineForImage2Image.from_pipe``: no second
copy of the weights), and masked edits the inpainting one when the model family has it.
Nothing is downloaded: the directory must hold the whole pipeline.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from PIL import Image
from typing_extensions import override

from townsquare.backends.images import ImageBackend, Size
from townsquare.errors import BackendError, ConfigurationError, InvalidField
from townsquare.settings import ImageSettings

log = logging.getLogger("townsquare.images")


class DiffusersImages(ImageBackend):
    """Runs a local diffusers pipeline; one call at a time (a pipeline is not thread-safe)."""

    def __init__(self, directory: str, settings: ImageSettings) -> None:
        super().__init__(settings.sizes)
        import torch
        from diffusers import DiffusionPipeline
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()

        path = Path(directory).expanduser()
        if not (path / "model_index.json").is_file():
            raise ConfigurationError(
                f"{path} is not a diffusers pipeline directory (no model_index.json). Save one "
                "with `pipe.save_pretrained(dir)` or download it with `hf download "
                "stabilityai/sd-turbo --local-dir dir`, then set images.backend to "
                "'diffusers:dir'."
            )
        cuda = torch.cuda.is_available()
        self.device = ("cuda" if cuda else "cpu") if settings.device == "auto" else settings.device
        if self.device == "cuda" and not cuda:
            raise ConfigurationError("images.device is 'cuda' but torch sees no CUDA device.")
        dtype_name = settings.dtype
        if dtype_name == "auto":
            dtype_name = "float16" if self.device == "cuda" else "float32"
        self.dtype = getattr(torch, dtype_name)
        self.steps = settings.steps
        self.guidance_scale = settings.guidance_scale
        self._torch = torch
        self._lock = threading.Lock()
        try:
            self.pipe: Any = DiffusionPipeline.from_pretrained(  # type: ignore[no-untyped-call]
                str(path), dtype=self.dtype, local_files_only=True
            ).to(self.device)
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"Could not load the pipeline in {path}: {exc}") from exc
        self.pipe.set_progress_bar_config(disable=True)
        self.model_id = path.name
        self._image2image: Any = None
        self._inpaint: Any = None
        scale = int(getattr(self.pipe, "vae_scale_factor", 8)) * 2
        for size in self.sizes:
            if size.width % scale or size.height % scale:
                raise ConfigurationError(
                    f"images.sizes has {size}, which this pipeline cannot make: both sides must "
                    f"be multiples of {scale}."
                )
        log.info("image pipeline %s loaded on %s (%s)", self.model_id, self.device, dtype_name)

    def _generator(self, seed: int | None) -> Any:
        if seed is None:
            return None
        return self._torch.Generator(device="cpu").manual_seed(seed)

    def _options(self, steps: int | None) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if steps or self.steps:
            options["num_inference_steps"] = steps or self.steps
        if self.guidance_scale is not None:
            options["guidance_scale"] = self.guidance_scale
        return options

    def _run(self, pipe: Any, **kwargs: Any) -> list[Image.Image]:
        with self._lock, self._torch.inference_mode():
            try:
                result = pipe(**kwargs)
            except (RuntimeError, ValueError, TypeError) as exc:
                raise BackendError(f"The image pipeline failed: {exc}") from exc
        return [image.convert("RGB") for image in result.images]

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
        kwargs: dict[str, Any] = {
            "prompt": prompt,
            "width": size.width,
            "height": size.height,
            "num_images_per_prompt": n,
            "generator": self._generator(seed),
            **self._options(steps),
        }
        if negative_prompt:
            kwargs["negative_prompt"] = negative_prompt
        return self._run(self.pipe, **kwargs)

    def _remixer(self, masked: bool) -> Any:
        from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

        try:
            if masked:
                if self._inpaint is None:
                    self._inpaint = AutoPipelineForInpainting.from_pipe(self.pipe)
                    self._inpaint.set_progress_bar_config(disable=True)
                return self._inpaint
            if self._image2image is None:
                self._image2image = AutoPipelineForImage2Image.from_pipe(self.pipe)
                self._image2image.set_progress_bar_config(disable=True)
            return self._image2image
        except ValueError as exc:
            what = "masked edits" if masked else "remixes"
            raise InvalidField(
                f"This image model ({self.model_id}) has no pipeline for {what}: {exc}",
                "mask" if masked else "image",
            ) from exc

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
        scale = int(getattr(self.pipe, "vae_scale_factor", 8)) * 2
        width, height = max(scale, width // scale * scale), max(scale, height // scale * scale)
        source = image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
        kwargs: dict[str, Any] = {
            "prompt": prompt,
            "image": source,
            "strength": strength,
            "num_images_per_prompt": n,
            "generator": self._generator(seed),
            **self._options(None),
        }
        if mask is not None:
            # OpenAI's convention (transparent = change) turned into diffusers' (white = change)
            alpha = mask.convert("RGBA").resize((width, height)).getchannel("A")
            kwargs["mask_image"] = alpha.point(lambda a: 255 if a == 0 else 0)
            kwargs["width"], kwargs["height"] = width, height
        steps = kwargs.get("num_inference_steps")
        if steps is not None and steps * strength < 1:  # img2img runs steps * strength steps
            kwargs["num_inference_steps"] = max(steps, int(1 / max(strength, 0.05)) + 1)
        return self._run(self._remixer(mask is not None), **kwargs)

    @override
    def close(self) -> None:
        self.pipe = self._image2image = self._inpaint = None
