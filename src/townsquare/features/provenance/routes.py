"""Provenance route: was this image made here?"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, UploadFile
from starlette.concurrency import run_in_threadpool

from townsquare.api.deps import CurrentUser, ServicesDep
from townsquare.errors import InvalidImage
from townsquare.safety.provenance import load_image

router = APIRouter(prefix="/api/provenance", tags=["provenance"])


@router.post("/detect", openapi_extra={"x-access": "authenticated"})
async def detect_provenance(
    file: UploadFile, user: CurrentUser, services: ServicesDep
) -> dict[str, Any]:
    """Upload an image (multipart field ``file``): whether townsquare made it.

    Everyone gets the yes/no and the detector's confidence; admins also get the generation
    record (when, by whom, which model, the prompt's hash).
    """
    data = await file.read()
    if not data:
        raise InvalidImage("The upload is empty. Send the image file in the 'file' field.")
    provenance = services.provenance()

    def work() -> dict[str, Any]:
        found = provenance.detect(load_image(data, provenance.limits))
        return found.full() if user.role == "admin" else found.public()

    return await run_in_threadpool(work)
