"""The OpenAI Images API (``/images/generations``, ``/images/edits``) through the official
client: hosted APIs and OpenAI-compatible image servers (townsquare's own ``/v1/images``
included)."""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx
import openai
from PIL import Image, UnidentifiedImageError
from typing_extensions import override

from townsquare.backends.images import ImageBackend, Size
from townsquare.errors import BackendError, BackendUnavailable, InvalidField
from townsquare.settings import ImageSettings


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


class OpenAIImages(ImageBackend):
    """Calls an OpenAI Images server. The server's own limits apply; this side keeps the
    configured sizes so a member learns them before a remote call."""

    supports_mask = True

    def __init__(self, target: str, settings: ImageSettings) -> None:
        super().__init__(settings.sizes)
        url, _, model = target.partition("#")
        self.model_id = model
        key = settings.api_key.get_secret_value() if settings.api_key else "not-needed"
        self.client = openai.OpenAI(
            base_url=url, api_key=key, timeout=settings.timeout_s, max_retries=0
        )
        self.url = url
        self._http = httpx.Client(timeout=settings.timeout_s)

    def _format(self) -> dict[str, Any]:
        # gpt-image models always answer base64 and refuse the parameter
        return {} if self.model_id.startswith("gpt-image") else {"response_format": "b64_json"}

    def _images(self, call: Any) -> list[Image.Image]:
        try:
            response = call()
        except openai.APIConnectionError as exc:
            raise BackendUnavailable(
                f"The image server at {self.url} did not answer ({exc}). Start it, or fix "
                "images.backend."
            ) from exc
        except openai.APIStatusError as exc:
            if exc.status_code in (400, 422):
                raise InvalidField(
                    f"The image server refused the request: {exc.message}", "prompt"
                ) from None
            raise BackendError(
                f"The image server at {self.url} failed ({exc.status_code}): {exc.message}"
            ) from exc
        images = []
        for item in response.data or []:
            if item.b64_json:
                data = base64.b64decode(item.b64_json)
            elif item.url:
                data = self._http.get(item.url).raise_for_status().content
            else:
                raise BackendError("The image server answered an item with neither image nor URL.")
            try:
                images.append(Image.open(io.BytesIO(data)).convert("RGB"))
            except (UnidentifiedImageError, OSError) as exc:
                raise BackendError(
                    f"The image server sent something that is not an image: {exc}"
                ) from None
        if not images:
            raise BackendError("The image server answered no images.")
        return images

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
        extra: dict[str, Any] = {}  # non-standard fields servers such as townsquare's accept
        if seed is not None:
            extra["seed"] = seed
        if negative_prompt:
            extra["negative_prompt"] = negative_prompt
        return self._images(
            lambda: self.client.images.generate(
                model=self.model_id,
                prompt=prompt,
                n=n,
                size=str(size),  # servers take any WxH
                extra_body=extra or None,
                **self._format(),
            )
        )

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
        extra: dict[str, Any] = {"strength": strength}
        if seed is not None:
            extra["seed"] = seed
        options: dict[str, Any] = {}
        if mask is not None:
            options["mask"] = ("mask.png", _png(mask), "image/png")
        if size is not None:
            options["size"] = str(size)
        return self._images(
            lambda: self.client.images.edit(
                model=self.model_id,
                image=("image.png", _png(image), "image/png"),
                prompt=prompt,
                n=n,
                extra_body=extra,
                **options,
                **self._format(),
            )
        )

    @override
    def close(self) -> None:
        self.client.close()
        self._http.close()
