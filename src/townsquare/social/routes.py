"""Social routes: ingestion for host apps (admins), and reads that go through ``access``.

Every route declares its access rule in ``openapi_extra["x-access"]``; the authorization
matrix test reads it and checks each persona's status against it.
"""

from __future__ import annotations

import functools
import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from townsquare.api.deps import AdminUser, CurrentUser, DbDep, Limit, Offset, ServicesDep
from townsquare.bounds import MAX_INT
from townsquare.errors import InvalidRequest, PayloadTooLarge
from townsquare.services import Services
from townsquare.social import reads
from townsquare.social.ingest import KINDS, Kind, delete_entity, ingest
from townsquare.social.schemas import IngestReport
from townsquare.social.views import (
    AuditOut,
    GroupOut,
    ListingOut,
    MessageOut,
    Page,
    PostOut,
    ReelOut,
    ThreadOut,
)
from townsquare.storage.social_tables import (
    Listing,
    Post,
    Reel,
)
from townsquare.storage.tables import User


def rule(name: str) -> dict[str, Any]:
    """The route options that declare its access rule (read by the authorization matrix test)."""
    return {"openapi_extra": {"x-access": name}}


router = APIRouter(prefix="/api", tags=["social"])


# --- ingestion --------------------------------------------------------------------------


async def _rows(request: Request) -> list[Any]:
    body = await request.body()
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip()
    try:
        if kind in {"application/x-ndjson", "application/jsonl", "application/x-jsonlines"}:
            return [json.loads(line) for line in body.decode("utf-8").splitlines() if line.strip()]
        rows = json.loads(body)
    except RecursionError as exc:
        raise InvalidRequest("The body is nested too deeply to read. Send flat rows.") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(
            f"The body is not valid JSON ({exc}). Send a JSON array, or JSON Lines with "
            "Content-Type: application/x-ndjson."
        ) from exc
    if not isinstance(rows, list):
        raise InvalidRequest("A batch must be a JSON array of rows (or JSON Lines).")
    return rows


SEARCHABLE = {"listings": Listing, "posts": Post, "reels": Reel}


def _reindex(services: Services, db: Session, kind: Kind, external_ids: list[Any]) -> None:
    """Index what this request changed (on the request's worker thread), so search never lags
    behind ingestion. Work is proportional to the rows sent."""
    table: Any = SEARCHABLE.get(kind.name)
    if table is None or not services.settings.search.index_on_ingest:
        return
    wanted = [e for e in external_ids if isinstance(e, str)]
    ids = list(db.scalars(select(table.id).where(table.external_id.in_(wanted))))
    db.commit()  # one connection at a time: the indexer uses its own sessions
    if ids:
        services.indexer.sync(kind.name, ids)


def _ingest_and_index(
    services: Services,
    db: Session,
    kind: Kind,
    rows: list[Any],
    admin: User,
    *,
    partial: bool = False,
) -> IngestReport:
    """Store the rows, commit, index what changed: one worker thread, one connection at a time."""
    report = ingest(db, kind, rows, settings=services.settings.ingest, actor=admin, partial=partial)
    db.commit()
    _reindex(services, db, kind, [r.get("external_id") for r in rows if isinstance(r, dict)])
    return report


def _add_ingest_routes(kind: Kind) -> None:
    async def put_one(
        external_id: str,
        request: Request,
        response: Response,
        admin: AdminUser,
        db: DbDep,
        services: ServicesDep,
    ) -> dict[str, str]:
        try:
            body = json.loads(await request.body())
        except RecursionError as exc:
            raise InvalidRequest("The body is nested too deeply to read.") from exc
        except ValueError as exc:
            raise InvalidRequest(f"The body is not valid JSON ({exc}).") from exc
        if not isinstance(body, dict):
            raise InvalidRequest(f"Send one {kind.label} as a JSON object.")
        if body.setdefault("external_id", external_id) != external_id:
            raise InvalidRequest("external_id in the body differs from the one in the URL.")
        report = await run_in_threadpool(_ingest_and_index, services, db, kind, [body], admin)
        if kind.name == "messages":  # live streams, and @-mentions of the assistant
            await services.group_chat.received([external_id])
        status = "created" if report.created else "updated" if report.updated else "unchanged"
        response.status_code = 201 if report.created else 200
        return {"id": external_id, "status": status}

    async def put_batch(
        request: Request,
        admin: AdminUser,
        db: DbDep,
        services: ServicesDep,
        partial: Annotated[
            bool, Query(description="Store the valid rows, report the bad.")
        ] = False,
    ) -> IngestReport:
        rows = await _rows(request)
        limit = services.settings.ingest.max_batch_rows
        if len(rows) > limit:
            raise PayloadTooLarge(
                f"The batch has {len(rows)} rows; the limit is {limit} (ingest.max_batch_rows). "
                "Split it into smaller batches."
            )
        report = await run_in_threadpool(
            functools.partial(_ingest_and_index, services, db, kind, rows, admin, partial=partial)
        )
        if kind.name == "messages":  # live streams, and @-mentions of the assistant
            await services.group_chat.received(
                [str(r.get("external_id")) for r in rows if isinstance(r, dict)]
            )
        return report

    def delete_one(
        external_id: str,
        admin: AdminUser,
        db: DbDep,
        services: ServicesDep,
        hard: Annotated[bool, Query(description="Delete messages for real.")] = False,
    ) -> dict[str, str]:
        removal = delete_entity(db, kind, external_id, actor=admin, hard=hard)
        db.commit()
        for hook in services.deletion_hooks:
            hook(removal)
        return {"id": external_id, "status": removal.outcome}

    name = kind.name.replace("-", "_")
    router.put(
        f"/{kind.name}/{{external_id}}",
        name=f"put_{name}",
        summary=f"Create or replace one {kind.label}",
        **rule("admin"),
    )(put_one)
    router.post(
        f"/{kind.name}:batch",
        name=f"batch_{name}",
        summary=f"Upsert many {kind.name} (JSON array or JSON Lines)",
        **rule("admin"),
    )(put_batch)
    router.delete(
        f"/{kind.name}/{{external_id}}",
        name=f"delete_{name}",
        summary=f"Delete one {kind.label}",
        **rule("admin"),
    )(delete_one)


# --- reads (the queries live in social/reads.py) -------------------------------------------


@router.get("/me", **rule("authenticated"))
def me(user: CurrentUser) -> dict[str, Any]:
    """Who the key or session belongs to."""
    return {
        "name": user.name,
        "id": user.external_id,
        "role": user.role,
        "display_name": user.display_name,
    }


@router.get("/groups", **rule("authenticated"))
def my_groups(user: CurrentUser, db: DbDep) -> Page[GroupOut]:
    """The groups the member belongs to (admins: all groups)."""
    return Page(data=reads.my_groups(db, user))


@router.get("/groups/{group_id}", **rule("group-member"))
def get_group(group_id: str, user: CurrentUser, db: DbDep) -> GroupOut:
    """One group, with the member's role in it."""
    return reads.group(db, user, group_id)


@router.get("/groups/{group_id}/messages", **rule("group-member"))
def group_messages(
    group_id: str, user: CurrentUser, db: DbDep, limit: Limit = 50, offset: Offset = 0
) -> Page[MessageOut]:
    """The group's messages, newest first (deleted ones are left out)."""
    return Page(data=reads.group_messages(db, user, group_id, limit=limit, offset=offset))


@router.delete("/groups/{group_id}/messages/{message_id}", **rule("group-moderator"))
def moderate_message(
    group_id: str, message_id: str, user: CurrentUser, db: DbDep
) -> dict[str, str]:
    """A moderator (or admin) hides a message in their group. Recorded in the audit log."""
    reads.hide_message(db, user, group_id, message_id)
    db.commit()
    return {"id": message_id, "status": "hidden"}


@router.get("/posts", **rule("authenticated"))
def feed(user: CurrentUser, db: DbDep, limit: Limit = 20, offset: Offset = 0) -> Page[PostOut]:
    """Public posts and posts of the member's groups, newest first."""
    return Page(data=reads.feed(db, user, limit=limit, offset=offset))


@router.get("/posts/{post_id}", **rule("post-viewer"))
def get_post(post_id: str, user: CurrentUser, db: DbDep) -> PostOut:
    """One post with its comments."""
    return reads.post(db, user, post_id)


@router.get("/dm-threads", **rule("authenticated"))
def my_threads(
    user: CurrentUser, db: DbDep, limit: Limit = 50, offset: Offset = 0
) -> Page[ThreadOut]:
    """The member's own DM threads."""
    return Page(data=reads.my_threads(db, user, limit=limit, offset=offset))


@router.get("/dm-threads/{thread_id}/messages", **rule("dm-participant"))
def thread_messages(
    thread_id: str, user: CurrentUser, db: DbDep, limit: Limit = 50, offset: Offset = 0
) -> Page[MessageOut]:
    """A DM thread's messages, newest first; participants only."""
    return Page(data=reads.thread_messages(db, user, thread_id, limit=limit, offset=offset))


@router.get("/listings", **rule("authenticated"))
def listings(
    user: CurrentUser, db: DbDep, category: str | None = None, limit: Limit = 20, offset: Offset = 0
) -> Page[ListingOut]:
    """Active listings (and the member's own), newest first."""
    return Page(data=reads.listings(db, user, category=category, limit=limit, offset=offset))


@router.get("/listings/{listing_id}", **rule("listing-viewer"))
def get_listing(listing_id: str, user: CurrentUser, db: DbDep) -> ListingOut:
    """One listing, with the seller's accepted description."""
    return reads.listing(db, user, listing_id)


@router.get("/reels/{reel_id}", **rule("reel-viewer"))
def get_reel(reel_id: str, user: CurrentUser, db: DbDep) -> ReelOut:
    """One reel."""
    return reads.reel(db, user, reel_id)


@router.get("/audit", **rule("admin"))
def audit_log(
    admin: AdminUser,
    db: DbDep,
    limit: Limit = 50,
    before_id: Annotated[int | None, Query(ge=1, le=MAX_INT)] = None,
) -> Page[AuditOut]:
    """Admin and moderator actions, newest first."""
    return Page(data=reads.audit_log(db, limit=limit, before_id=before_id))


for _kind in KINDS.values():
    _add_ingest_routes(_kind)
