"""Provenance route: was this image made here?"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, UploadFile

from townsquare.api.deps import CurrentUser, ServicesDep
from townsquare.errors import InvalidImage

router = APIRouter(prefix="/api/provenance", tags=["provenance"])


@router.post("/detect", openapi_extra={"x-access": "authenticated"})
def detect_provenance(file: UploadFile, user: CurrentUser, services: ServicesDep) -> dict[str, Any]:
    """Upload an image (multipart field ``file``): whether townsquare made it.

    Everyone gets the yes/no and the detector's confidence; admins also get the generation
    record (when, by whom, which model, the prompt's hash). Checks run a few at a time
    (``watermark.detect_concurrency``); beyond the waiting line the answer is 429.
    """
    data = file.file.read()
    if not data:
        raise InvalidImage("The upload is empty. Send the image file in the 'file' field.")
    found = services.provenance().detect_upload(data)
    return found.full() if user.role == "admin" else found.public()
