"""Imagine and Reimagine routes: make images, read galleries and version trees, remix.

Handlers are plain functions: FastAPI runs them on worker threads, so the engine, the
watermark and the database never block the event loop. Every image file served here is the
marked PNG stored by the image service's single path.
"""

from __future__ import annotations

from fastapi import APIRouter, Query, Response
from fastapi.responses import RedirectResponse

from townsquare.api.deps import CurrentUser, DbDep, Limit, ServicesDep
from townsquare.features.imagine.schemas import (
    ImageList,
    ImageOut,
    ImagineRequest,
    ReimagineRequest,
    VersionTree,
)
from townsquare.features.imagine.service import outs
from townsquare.services import Services
from townsquare.social import access

router = APIRouter(tags=["imagine"])


@router.post("/api/imagine", openapi_extra={"x-access": "authenticated", "x-names": True})
def imagine(body: ImagineRequest, user: CurrentUser, db: DbDep, services: ServicesDep) -> ImageList:
    """Make images from a prompt: moderated, checked, marked and kept in your gallery (or the
    group's, with ``group_id``). 503 when no image model is configured; 429 when busy or over
    the daily allowance (``images.user_images_per_day``, ``images.group_images_per_day``)."""
    made = services.images.imagine(db, user, body, source="imagine")
    return ImageList(data=outs(db, [m.row for m in made]))


@router.get("/api/images", openapi_extra={"x-access": "authenticated"})
def my_images(
    user: CurrentUser,
    db: DbDep,
    services: ServicesDep,
    limit: Limit = 20,
    before: str | None = Query(None, max_length=128, description="next_before of a page."),
) -> ImageList:
    """Your images, newest first."""
    rows, more = services.images.gallery(db, user, limit=limit, before=before)
    return ImageList(data=outs(db, rows), next_before=more)


@router.get("/api/groups/{group_id}/images", openapi_extra={"x-access": "group-member"})
def group_images(
    group_id: str,
    user: CurrentUser,
    db: DbDep,
    services: ServicesDep,
    limit: Limit = 20,
    before: str | None = Query(None, max_length=128, description="next_before of a page."),
) -> ImageList:
    """The images made in a group (its members only), newest first."""
    group = access.group_visible_to(db, user, group_id)
    rows, more = services.images.gallery(db, user, group=group, limit=limit, before=before)
    return ImageList(data=outs(db, rows), next_before=more)


@router.get("/api/images/{image_id}", openapi_extra={"x-access": "image-viewer"})
def get_image(image_id: str, user: CurrentUser, db: DbDep) -> ImageOut:
    """One image's record: prompt, seed, author, its parent and root in the version tree."""
    return outs(db, [access.image_visible_to(db, user, image_id)])[0]


@router.get(
    "/api/images/{image_id}/file",
    openapi_extra={"x-access": "image-viewer"},
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def image_file(image_id: str, user: CurrentUser, db: DbDep, services: ServicesDep) -> Response:
    """The image's PNG (with its invisible mark)."""
    digest = access.image_visible_to(db, user, image_id).blob
    db.close()  # the file may come from an object store: no connection held meanwhile
    return file_response(services, digest)


def file_response(services: Services, digest: str) -> Response:
    """The blob's PNG, or a 307 to the object store's presigned GET (``images.s3.redirect``)."""
    settings = services.settings.images
    if settings.blob_store == "s3" and settings.s3.redirect:
        url = services.images.blobs.url(digest, settings.s3.presign_ttl_s)
        if url:
            return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
    return png_response(services.images.blobs.get(digest), digest)


def png_response(png: bytes, digest: str) -> Response:
    """A PNG that browsers may cache privately (its name is its content's hash)."""
    return Response(
        png,
        media_type="image/png",
        headers={"Cache-Control": "private, max-age=86400", "ETag": f'"{digest}"'},
    )


@router.get("/api/images/{image_id}/versions", openapi_extra={"x-access": "image-viewer"})
def versions(image_id: str, user: CurrentUser, db: DbDep, services: ServicesDep) -> VersionTree:
    """The image's version tree: every remix, with parent, prompt, author, time and seed."""
    return services.images.versions(db, user, image_id)


@router.post(
    "/api/images/{image_id}/reimagine",
    status_code=201,
    openapi_extra={"x-access": "image-viewer"},
)
def reimagine(
    image_id: str, body: ReimagineRequest, user: CurrentUser, db: DbDep, services: ServicesDep
) -> ImageOut:
    """Remix any version you can see with a new prompt: a new version in its tree (and its
    group), marked and linked to its parent in the provenance registry."""
    made = services.images.reimagine(db, user, image_id, body)
    return outs(db, [made.row])[0]


@router.delete(
    "/api/images/{image_id}", status_code=204, openapi_extra={"x-access": "image-author"}
)
def delete_image(image_id: str, user: CurrentUser, db: DbDep, services: ServicesDep) -> Response:
    """Delete a version (its author, a moderator of its group, an admin). Versions remixed from
    it stay, under its parent."""
    services.images.delete(db, user, image_id)
    return Response(status_code=204)
