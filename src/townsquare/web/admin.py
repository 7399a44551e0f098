"""The admin pages: users and keys, the moderation log, red-team runs, feedback, the audit log,
provenance lookup, settings (read-only, secrets masked) and health. Every page is admin-only
(403 for others), like the API it mirrors."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import select

from townsquare.api.deps import DbDep, ServicesDep
from townsquare.bounds import MAX_INT
from townsquare.errors import InvalidField, InvalidImage, NotFound
from townsquare.features.feedback import service as feedback
from townsquare.identity import create_user, issue_key
from townsquare.safety import log as moderation_log
from townsquare.safety import redteam
from townsquare.safety.taxonomy import CODES, HAZARDS
from townsquare.settings import iter_settings
from townsquare.social import access, audit, reads
from townsquare.storage.tables import ApiKey, RedteamRunRow, User
from townsquare.web.common import Viewer, ViewerDep, render

router = APIRouter(prefix="/admin", include_in_schema=False)
ADMIN: dict[str, Any] = {"x-access": "admin"}
PAGE = 50
SECTIONS = (
    ("users", "Users and keys"),
    ("moderation", "Moderation log"),
    ("redteam", "Red-team runs"),
    ("feedback", "Feedback"),
    ("audit", "Audit log"),
    ("provenance", "Provenance lookup"),
    ("settings", "Settings"),
    ("health", "Health"),
)


def _admin(who: Viewer) -> Viewer:
    access.require_admin(who.user)
    return who


def _page(
    request: Request, template: str, who: Viewer, section: str, **context: Any
) -> HTMLResponse:
    title = dict(SECTIONS)[section]
    return render(
        request,
        template,
        who,
        "admin",
        sections=SECTIONS,
        section=section,
        title=title,
        **context,
    )


@router.get("", openapi_extra=ADMIN)
def overview(request: Request, who: ViewerDep) -> RedirectResponse:
    """The admin pages start at users and keys."""
    _admin(who)
    return RedirectResponse("/admin/users", status_code=303)


@router.get("/users", openapi_extra=ADMIN)
def users(
    request: Request,
    who: ViewerDep,
    db: DbDep,
    before_id: Annotated[int | None, Query(ge=1, le=MAX_INT)] = None,
) -> HTMLResponse:
    """Users, newest first, with their keys (prefix, label, revoked or not)."""
    _admin(who)
    query = select(User).order_by(User.id.desc()).limit(PAGE)
    if before_id is not None:
        query = query.where(User.id < before_id)
    rows = list(db.scalars(query))
    keys: dict[int, list[ApiKey]] = {}
    for key in db.scalars(
        select(ApiKey).where(ApiKey.user_id.in_([u.id for u in rows])).order_by(ApiKey.id)
    ):
        keys.setdefault(key.user_id, []).append(key)
    return _page(
        request,
        "admin/users.html",
        who,
        "users",
        users=rows,
        keys=keys,
        next_before=rows[-1].id if len(rows) == PAGE else None,
        new_key=None,
        roles=("member", "creator", "admin"),
    )


@router.post("/users", openapi_extra=ADMIN)
def add_user(
    request: Request,
    who: ViewerDep,
    db: DbDep,
    name: Annotated[str, Form(max_length=64)],
    role: Annotated[Literal["member", "creator", "admin"], Form()] = "member",
    display_name: Annotated[str, Form(max_length=128)] = "",
) -> HTMLResponse:
    """Create a user; their first key is shown once, on this answer."""
    _admin(who)
    user, key = create_user(db, name.strip(), role=role, display_name=display_name.strip())
    audit.record(db, who.user, "user.create", user.name, role=role)
    db.commit()
    return render(request, "fragments/new_key.html", who, user=user, key=key)


@router.post("/users/{user_id}/keys", openapi_extra=ADMIN)
def add_key(user_id: int, request: Request, who: ViewerDep, db: DbDep) -> HTMLResponse:
    """Issue another key for a user (shown once)."""
    _admin(who)
    if not 1 <= user_id <= MAX_INT or (user := db.get(User, user_id)) is None:
        raise NotFound(f"There is no user {user_id}.")
    key = issue_key(db, user, label="issued on the admin page")
    audit.record(db, who.user, "key.issue", user.name)
    db.commit()
    return render(request, "fragments/new_key.html", who, user=user, key=key)


@router.post("/keys/{key_id}/revoke", openapi_extra=ADMIN)
def revoke(key_id: int, request: Request, who: ViewerDep, db: DbDep) -> HTMLResponse:
    """Revoke a key: requests with it are refused from now on."""
    _admin(who)
    if not 1 <= key_id <= MAX_INT or (row := db.get(ApiKey, key_id)) is None:
        raise NotFound(f"There is no key {key_id}.")
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
        audit.record(db, who.user, "key.revoke", row.prefix)
        db.commit()
    return render(request, "fragments/key.html", who, key=row)


@router.get("/moderation", openapi_extra=ADMIN)
def moderation(
    request: Request,
    who: ViewerDep,
    db: DbDep,
    feature: Annotated[str, Query(max_length=64)] = "",
    code: Annotated[str, Query(max_length=8)] = "",
    stage: Annotated[str, Query(max_length=8)] = "",
    before_id: Annotated[int | None, Query(ge=1, le=MAX_INT)] = None,
) -> HTMLResponse:
    """Refused (and warned) inputs and outputs, filtered by feature, hazard code and stage."""
    _admin(who)
    if code and code not in CODES:
        raise InvalidField(f"code '{code}' is unknown; use one of {', '.join(CODES)}.", "code")
    if stage and stage not in ("input", "output"):
        raise InvalidField("stage must be 'input' or 'output'.", "stage")
    rows = moderation_log.entries(
        db,
        limit=PAGE,
        before_id=before_id,
        feature=feature or None,
        code=code or None,
        stage=stage or None,
    )
    return _page(
        request,
        "admin/moderation.html",
        who,
        "moderation",
        entries=rows,
        codes={code: HAZARDS[code].name for code in CODES},
        form={"feature": feature, "code": code, "stage": stage},
        next_before=rows[-1].id if len(rows) == PAGE else None,
    )


@router.get("/redteam", openapi_extra=ADMIN)
def redteam_runs(request: Request, who: ViewerDep, db: DbDep) -> HTMLResponse:
    """Red-team runs with their attack success and over-refusal rates (bars), and reports."""
    _admin(who)
    rows = db.scalars(select(RedteamRunRow).order_by(RedteamRunRow.id.desc()).limit(PAGE))
    return _page(
        request,
        "admin/redteam.html",
        who,
        "redteam",
        runs=[redteam.run_view(r) for r in rows],
    )


@router.get("/feedback", openapi_extra=ADMIN)
def feedback_page(
    request: Request,
    who: ViewerDep,
    db: DbDep,
    feature: Annotated[str, Query(max_length=64)] = "",
    before_id: Annotated[int | None, Query(ge=1, le=MAX_INT)] = None,
) -> HTMLResponse:
    """Members' thumbs, reasons and corrections, newest first."""
    _admin(who)
    rows = feedback.recent(db, feature=feature or None, limit=PAGE, before_id=before_id)
    return _page(request, "admin/feedback.html", who, "feedback", entries=rows, feature=feature)


@router.get("/audit", openapi_extra=ADMIN)
def audit_page(
    request: Request,
    who: ViewerDep,
    db: DbDep,
    before_id: Annotated[int | None, Query(ge=1, le=MAX_INT)] = None,
) -> HTMLResponse:
    """Admin and moderator actions, newest first."""
    _admin(who)
    rows = reads.audit_log(db, limit=PAGE, before_id=before_id)
    return _page(
        request,
        "admin/audit.html",
        who,
        "audit",
        entries=rows,
        next_before=rows[-1].id if len(rows) == PAGE else None,
    )


@router.get("/provenance", openapi_extra=ADMIN)
def provenance_form(request: Request, who: ViewerDep) -> HTMLResponse:
    """Upload an image to learn whether townsquare made it, and which record."""
    _admin(who)
    return _page(request, "admin/provenance.html", who, "provenance", found=None)


@router.post("/provenance", openapi_extra=ADMIN)
def provenance_check(
    request: Request, who: ViewerDep, services: ServicesDep, file: Annotated[UploadFile, File()]
) -> HTMLResponse:
    """The detector's answer with the generation record."""
    _admin(who)
    data = file.file.read()
    if not data:
        raise InvalidImage("The upload is empty. Choose an image file.")
    found = services.provenance().detect_upload(data).full()
    return _page(request, "admin/provenance.html", who, "provenance", found=found)


@router.get("/settings", openapi_extra=ADMIN)
def settings_page(request: Request, who: ViewerDep, services: ServicesDep) -> HTMLResponse:
    """Every setting in force (secrets and URL passwords masked); change them in the
    environment or the settings file, not here."""
    _admin(who)
    rows = list(iter_settings(services.settings))
    return _page(request, "admin/settings.html", who, "settings", rows=rows)


@router.get("/health", openapi_extra=ADMIN)
async def health(request: Request, who: ViewerDep, services: ServicesDep) -> HTMLResponse:
    """The model, the database, the queues and the pools, as they are now."""
    _admin(who)
    from starlette.concurrency import run_in_threadpool

    database = await run_in_threadpool(services.database_ok)
    model = await services.text.ready()
    checks = {
        "Database reachable": database,
        "Text model ready": model,
    }
    figures = {
        "Text model": services.text.model_id,
        "Text backend": services.settings.text.backend,
        "Requests waiting for the text model": services.text.queue_depth(),
        "Sequences being generated": services.text.active_sequences(),
        "Embedding backend": services.settings.embed.backend,
        "Image backend": services.settings.images.backend,
        "Database": services.settings.resolved_database_url.split("://")[0],
        "Quota store": services.settings.quotas.store,
    }
    return _page(request, "admin/health.html", who, "health", checks=checks, figures=figures)
