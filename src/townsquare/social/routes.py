"""Social routes: ingestion for host apps (admins), and reads that go through ``access``.

Every route declares its access rule in ``openapi_extra["x-access"]``; the authorization
matrix test reads it and checks each persona's status against it.
"""

from __future__ import annotations

import functools
import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from townsquare.api.deps import MAX_INT, AdminUser, CurrentUser, DbDep, Limit, Offset, ServicesDep
from townsquare.errors import InvalidRequest, NotFound, PayloadTooLarge
from townsquare.services import Services
from townsquare.social import access, audit
from townsquare.social.ingest import KINDS, Kind, delete_entity, ingest
from townsquare.social.schemas import IngestReport
from townsquare.social.views import (
    AuditOut,
    CommentOut,
    GroupOut,
    ListingOut,
    MessageOut,
    Page,
    PostOut,
    ReelOut,
    ThreadOut,
)
from townsquare.storage.social_tables import (
    Comment,
    DMMessage,
    DMParticipant,
    DMThread,
    Group,
    GroupMessage,
    Listing,
    Membership,
    Post,
    Reel,
)
from townsquare.storage.tables import User


def rule(name: str) -> dict[str, Any]:
    return {"openapi_extra": {"x-access": name}}


router = APIRouter(prefix="/api", tags=["social"])


def _pairs(db: Session, query: Any) -> dict[Any, Any]:
    """A two-column query as a dict."""
    return {key: value for key, value in db.execute(query)}


def _names(db: Session, ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    rows = db.execute(select(User.id, User.external_id, User.name).where(User.id.in_(ids)))
    return {id_: ext or name for id_, ext, name in rows}


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
        return await run_in_threadpool(
            functools.partial(_ingest_and_index, services, db, kind, rows, admin, partial=partial)
        )

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


# --- reads -------------------------------------------------------------------------------


@router.get("/me", **rule("authenticated"))
def me(user: CurrentUser) -> dict[str, Any]:
    """Who the key or session belongs to."""
    return {
        "name": user.name,
        "id": user.external_id,
        "role": user.role,
        "display_name": user.display_name,
    }


def _group_out(db: Session, user: User, group: Group) -> GroupOut:
    members = db.scalar(select(func.count()).where(Membership.group_id == group.id)) or 0
    return GroupOut(
        id=group.external_id,
        name=group.name,
        kind=group.kind,
        description=group.description,
        my_role=access.membership_role(db, user, group.id),
        members=members,
    )


@router.get("/groups", **rule("authenticated"))
def my_groups(user: CurrentUser, db: DbDep) -> Page[GroupOut]:
    """The groups the member belongs to (admins: all groups)."""
    query = select(Group).order_by(Group.name)
    if not access.is_admin(user):
        query = query.join(Membership, Membership.group_id == Group.id).where(
            Membership.user_id == user.id
        )
    return Page(data=[_group_out(db, user, g) for g in db.scalars(query)])


@router.get("/groups/{group_id}", **rule("group-member"))
def get_group(group_id: str, user: CurrentUser, db: DbDep) -> GroupOut:
    return _group_out(db, user, access.group_visible_to(db, user, group_id))


@router.get("/groups/{group_id}/messages", **rule("group-member"))
def group_messages(
    group_id: str, user: CurrentUser, db: DbDep, limit: Limit = 50, offset: Offset = 0
) -> Page[MessageOut]:
    """The group's messages, newest first (deleted ones are left out)."""
    group = access.group_visible_to(db, user, group_id)
    rows = list(
        db.scalars(
            select(GroupMessage)
            .where(GroupMessage.group_id == group.id, GroupMessage.deleted_at.is_(None))
            .order_by(GroupMessage.created_at.desc(), GroupMessage.id.desc())
            .limit(limit)
            .offset(offset)
        )
    )
    names = _names(db, {m.author_id for m in rows})
    replies = _pairs(
        db,
        select(GroupMessage.id, GroupMessage.external_id).where(
            GroupMessage.id.in_({m.reply_to_id for m in rows if m.reply_to_id})
        ),
    )
    return Page(
        data=[
            MessageOut(
                id=m.external_id,
                author=names[m.author_id],
                text=m.text,
                reply_to=replies.get(m.reply_to_id) if m.reply_to_id else None,
                created_at=m.created_at,
            )
            for m in rows
        ]
    )


@router.delete("/groups/{group_id}/messages/{message_id}", **rule("group-moderator"))
def moderate_message(
    group_id: str, message_id: str, user: CurrentUser, db: DbDep
) -> dict[str, str]:
    """A moderator (or admin) hides a message in their group. Recorded in the audit log."""
    group = access.moderated_group(db, user, group_id)
    message = db.scalar(
        select(GroupMessage).where(
            GroupMessage.external_id == message_id, GroupMessage.group_id == group.id
        )
    )
    if message is None:
        raise NotFound(f"Group '{group_id}' has no message '{message_id}'.")
    from datetime import UTC, datetime

    message.deleted_at = message.deleted_at or datetime.now(UTC)
    audit.record(db, user, "moderate.hide_message", f"{group_id}/{message_id}")
    db.commit()
    return {"id": message_id, "status": "hidden"}


def _post_out(
    db: Session,
    post: Post,
    names: dict[int, str],
    groups: dict[int, str],
    comments: list[Comment] | None = None,
) -> PostOut:
    return PostOut(
        id=post.external_id,
        author=names[post.author_id],
        group=groups.get(post.group_id) if post.group_id else None,
        text=post.text,
        image_url=post.image_url,
        created_at=post.created_at,
        comments=None
        if comments is None
        else [
            CommentOut(
                id=c.external_id, author=names[c.author_id], text=c.text, created_at=c.created_at
            )
            for c in comments
        ],
    )


@router.get("/posts", **rule("authenticated"))
def feed(user: CurrentUser, db: DbDep, limit: Limit = 20, offset: Offset = 0) -> Page[PostOut]:
    """Public posts and posts of the member's groups, newest first."""
    posts = list(
        db.scalars(
            select(Post)
            .where(access.visible_posts(user))
            .order_by(Post.created_at.desc(), Post.id.desc())
            .limit(limit)
            .offset(offset)
        )
    )
    names = _names(db, {p.author_id for p in posts})
    groups = _pairs(
        db,
        select(Group.id, Group.external_id).where(
            Group.id.in_({p.group_id for p in posts if p.group_id})
        ),
    )
    return Page(data=[_post_out(db, p, names, groups) for p in posts])


@router.get("/posts/{post_id}", **rule("post-viewer"))
def get_post(post_id: str, user: CurrentUser, db: DbDep) -> PostOut:
    """One post with its comments."""
    post = access.post_visible_to(db, user, post_id)
    comments = list(
        db.scalars(
            select(Comment)
            .where(Comment.post_id == post.id)
            .order_by(Comment.created_at, Comment.id)
        )
    )
    names = _names(db, {post.author_id} | {c.author_id for c in comments})
    groups = (
        _pairs(db, select(Group.id, Group.external_id).where(Group.id == post.group_id))
        if post.group_id
        else {}
    )
    return _post_out(db, post, names, groups, comments)


@router.get("/dm-threads", **rule("authenticated"))
def my_threads(
    user: CurrentUser, db: DbDep, limit: Limit = 50, offset: Offset = 0
) -> Page[ThreadOut]:
    """The member's own DM threads."""
    threads = list(
        db.scalars(
            select(DMThread)
            .join(DMParticipant, DMParticipant.thread_id == DMThread.id)
            .where(DMParticipant.user_id == user.id)
            .order_by(DMThread.id)
            .limit(limit)
            .offset(offset)
        )
    )
    out = []
    for thread in threads:
        ids = set(
            db.scalars(select(DMParticipant.user_id).where(DMParticipant.thread_id == thread.id))
        )
        out.append(ThreadOut(id=thread.external_id, participants=sorted(_names(db, ids).values())))
    return Page(data=out)


@router.get("/dm-threads/{thread_id}/messages", **rule("dm-participant"))
def thread_messages(
    thread_id: str, user: CurrentUser, db: DbDep, limit: Limit = 50, offset: Offset = 0
) -> Page[MessageOut]:
    """A DM thread's messages, newest first; participants only."""
    thread = access.thread_visible_to(db, user, thread_id)
    rows = list(
        db.scalars(
            select(DMMessage)
            .where(DMMessage.thread_id == thread.id, DMMessage.deleted_at.is_(None))
            .order_by(DMMessage.created_at.desc(), DMMessage.id.desc())
            .limit(limit)
            .offset(offset)
        )
    )
    names = _names(db, {m.author_id for m in rows})
    return Page(
        data=[
            MessageOut(
                id=m.external_id,
                author=names[m.author_id],
                text=m.text,
                reply_to=None,
                created_at=m.created_at,
            )
            for m in rows
        ]
    )


def _listing_out(listing: Listing, names: dict[int, str]) -> ListingOut:
    return ListingOut(
        id=listing.external_id,
        seller=names[listing.seller_id],
        title=listing.title,
        description=listing.description or "",
        attributes=listing.attributes,
        price=f"{listing.price_cents / 100:.2f}",
        currency=listing.currency,
        category=listing.category,
        condition=listing.condition,
        location=listing.location,
        images=listing.image_refs,
        status=listing.status,
    )


@router.get("/listings", **rule("authenticated"))
def listings(
    user: CurrentUser, db: DbDep, category: str | None = None, limit: Limit = 20, offset: Offset = 0
) -> Page[ListingOut]:
    """Active listings (and the member's own), newest first."""
    query = select(Listing).where(access.visible_listings(user))
    if category:
        query = query.where(Listing.category == category)
    rows = list(db.scalars(query.order_by(Listing.id.desc()).limit(limit).offset(offset)))
    names = _names(db, {r.seller_id for r in rows})
    return Page(data=[_listing_out(r, names) for r in rows])


@router.get("/listings/{listing_id}", **rule("listing-viewer"))
def get_listing(listing_id: str, user: CurrentUser, db: DbDep) -> ListingOut:
    listing = access.listing_visible_to(db, user, listing_id)
    return _listing_out(listing, _names(db, {listing.seller_id}))


@router.get("/reels/{reel_id}", **rule("reel-viewer"))
def get_reel(reel_id: str, user: CurrentUser, db: DbDep) -> ReelOut:
    reel = access.reel_visible_to(db, user, reel_id)
    names = _names(db, {reel.creator_id})
    return ReelOut(
        id=reel.external_id,
        creator=names[reel.creator_id],
        caption=reel.caption,
        transcript=reel.transcript,
        tags=reel.tags,
        duration_s=reel.duration_s,
        media_url=reel.media_url,
        visibility=reel.visibility,
    )


@router.get("/audit", **rule("admin"))
def audit_log(
    admin: AdminUser,
    db: DbDep,
    limit: Limit = 50,
    before_id: Annotated[int | None, Query(ge=1, le=MAX_INT)] = None,
) -> Page[AuditOut]:
    """Admin and moderator actions, newest first."""
    return Page(
        data=[
            AuditOut.model_validate(e, from_attributes=True)
            for e in audit.recent(db, limit=limit, before_id=before_id)
        ]
    )


for _kind in KINDS.values():
    _add_ingest_routes(_kind)
