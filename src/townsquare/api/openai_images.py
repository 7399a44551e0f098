"""OpenAI's Images API on townsquare (``/v1/images/generations``, ``/v1/images/edits``): the
official ``openai`` client's ``images.generate`` and ``images.edit`` work unmodified.

Both go through the image service's single path (moderation, output check, watermark, blob
store). ``response_format=url`` answers signed links (``/v1/images/files/...``) that work
without an API key until ``images.url_ttl_s`` has passed, like OpenAI's own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from townsquare.api.deps import CurrentUser, ServicesDep
from townsquare.errors import Forbidden, InvalidField, InvalidImage, ModelNotFound, NotFound
from townsquare.features.imagine.routes import file_response
from townsquare.features.imagine.schemas import MAX_SEED, STYLES
from townsquare.features.imagine.service import Ask, Made
from townsquare.services import Services
from townsquare.storage.social_tables import ImageRow

router = APIRouter(prefix="/v1", tags=["openai"])

# Accepted so that clients which always send them work; they change nothing here.
IGNORED = frozenset({"user", "quality", "moderation", "background", "input_fidelity"})
OPENAI_STYLES = {"vivid": "none", "natural": "none"}  # DALL-E 3's styles: no preset here


class ImageGenerationRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt: str = Field(min_length=1)
    model: str | None = None
    n: int = Field(1, ge=1, le=10)
    size: str | None = Field(None, description="WIDTHxHEIGHT (one of images.sizes) or auto.")
    response_format: Literal["b64_json", "url"] = "b64_json"
    output_format: Literal["png"] | None = None
    style: str | None = Field(None, description="vivid/natural, or a townsquare style preset.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="townsquare extension.")
    negative_prompt: str | None = Field(None, description="townsquare extension.")


class ImageEditFields(ImageGenerationRequest):
    strength: float = Field(0.6, ge=0.05, le=1.0, description="townsquare extension.")


def _check_fields(extra: dict[str, Any] | None) -> None:
    unknown = sorted(set(extra or {}) - IGNORED)
    if unknown:
        raise InvalidField(
            f"This server does not support {', '.join(unknown)}. Remove "
            f"{'it' if len(unknown) == 1 else 'them'} (docs/imagine.md lists the parameters).",
            unknown[0],
        )


def _ask(services: Services, body: ImageGenerationRequest, source: str) -> Ask:
    _check_fields(body.model_extra)
    engine = services.images.engine()
    if body.model is not None and body.model != engine.model_id:
        raise ModelNotFound(
            f"The image model '{body.model}' does not exist here. Available: "
            f"{engine.model_id}. GET /v1/models lists them."
        )
    style = OPENAI_STYLES.get(body.style or "none", body.style or "none")
    if style not in STYLES:
        raise InvalidField(
            f"style '{body.style}' is unknown. Use vivid, natural or one of: {', '.join(STYLES)}.",
            "style",
        )
    size = None if body.size in (None, "auto") else services.images.size_of(body.size)
    return Ask(
        prompt=body.prompt,
        size=size,
        n=body.n,
        seed=body.seed,
        style=style,
        negative_prompt=body.negative_prompt,
        strength=getattr(body, "strength", 0.6),
        source=source,
    )


def _sign(services: Services, image_id: str, expires: int) -> str:
    key = hashlib.sha256(b"townsquare image url\x00" + services.provenance().key).digest()
    return hmac.new(key, f"{image_id}:{expires}".encode(), hashlib.sha256).hexdigest()


def _answer(request: Request, services: Services, made: list[Made], fmt: str) -> dict[str, Any]:
    data: list[dict[str, Any]] = []
    expires = int(time.time()) + services.settings.images.url_ttl_s
    for item in made:
        if fmt == "url":
            row_id = item.row.external_id
            signature = _sign(services, row_id, expires)
            url = request.url_for("signed_image_file", name=f"{row_id}.png")
            data.append({"url": f"{url}?expires={expires}&sig={signature}"})
        else:
            data.append({"b64_json": base64.b64encode(item.png).decode()})
        data[-1]["revised_prompt"] = item.row.prompt
    return {"created": int(time.time()), "data": data, "output_format": "png"}


@router.post("/images/generations", openapi_extra={"x-access": "authenticated"})
def image_generations(
    body: ImageGenerationRequest, request: Request, user: CurrentUser, services: ServicesDep
) -> dict[str, Any]:
    """Make images (OpenAI's ``images.generate``); every one carries the provenance mark."""
    ask = _ask(services, body, "v1")
    made = services.images.make(user, ask)
    return _answer(request, services, made, body.response_format)


async def _file(form: Any, *names: str) -> bytes | None:
    for name in names:
        for value in form.getlist(name):
            if isinstance(value, UploadFile):
                return await value.read()
    return None


@router.post(
    "/images/edits",
    openapi_extra={
        "x-access": "authenticated",
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["image", "prompt"],
                        "properties": {
                            "image": {"type": "string", "format": "binary"},
                            "mask": {"type": "string", "format": "binary"},
                            "prompt": {"type": "string"},
                            "n": {"type": "integer"},
                            "size": {"type": "string"},
                            "response_format": {"type": "string", "enum": ["b64_json", "url"]},
                            "strength": {"type": "number"},
                            "seed": {"type": "integer"},
                        },
                    }
                }
            },
            "required": True,
        },
    },
)
async def image_edits(request: Request, user: CurrentUser, services: ServicesDep) -> dict[str, Any]:
    """Remix an uploaded image (OpenAI's ``images.edit``; multipart ``image``, optional
    ``mask`` whose transparent pixels are the ones to change). The result is marked."""
    form = await request.form(max_files=4, max_fields=32)
    try:
        image = await _file(form, "image", "image[]")
        mask = await _file(form, "mask")
        fields = {
            k: v for k, v in form.multi_items() if not isinstance(v, UploadFile) and k != "image[]"
        }
    finally:
        await form.close()
    if not image:
        raise InvalidImage("Send the image to edit as the multipart file field 'image'.")
    try:
        body = ImageEditFields.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidField(f"{where}: {first['msg']}", where) from None
    ask = _ask(services, body, "v1-edit")
    made = await run_in_threadpool(services.images.edit_upload, user, image, ask, mask=mask)
    return _answer(request, services, made, body.response_format)


@router.get(
    "/images/files/{name}",
    name="signed_image_file",
    openapi_extra={"x-access": "signed-url"},
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def signed_image_file(
    name: str,
    services: ServicesDep,
    expires: int = Query(0, ge=0),
    sig: str = Query("", max_length=128),
) -> Response:
    """An image from a ``response_format=url`` answer: no API key, the link's signature and
    expiry are the permission."""
    image_id = name.removesuffix(".png")
    expected = _sign(services, image_id, expires).encode()
    if not sig or not hmac.compare_digest(sig.encode(), expected):
        raise Forbidden("This image link is not valid. Use the URL exactly as /v1/images gave it.")
    if expires < time.time():
        raise Forbidden("This image link has expired (images.url_ttl_s). Ask for the image again.")
    with services.sessions() as db:
        digest = db.scalar(select(ImageRow.blob).where(ImageRow.external_id == image_id))
    if digest is None:
        raise NotFound("The image behind this link was deleted.")
    return file_response(services, digest)
