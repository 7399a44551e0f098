"""Reads of the host app's content, as the API shows them: every query goes through
``access`` (what the user may see) and costs a bounded number of statements per page."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from townsquare.errors import NotFound
from townsquare.social import access, audit
from townsquare.social.views import (
    AuditOut,
    CommentOut,
    GroupOut,
    ListingOut,
    MessageOut,
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
)
from townsquare.storage.tables import User


def _pairs(db: Session, query: Any) -> dict[Any, Any]:
    """A two-column query as a dict."""
    return {key: value for key, value in db.execute(query)}


def _names(db: Session, ids: set[int]) -> dict[int, str]:
    """User id -> the id the host app knows them by (or their name), in one query."""
    if not ids:
        return {}
    rows = db.execute(select(User.id, User.external_id, User.name).where(User.id.in_(ids)))
    return {id_: ext or name for id_, ext, name in rows}


def _group_ids(db: Session, ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    return _pairs(db, select(Group.id, Group.external_id).where(Group.id.in_(ids)))


def group_out(db: Session, user: User, group: Group) -> GroupOut:
    """A group with its member count and the user's role in it."""
    members = db.scalar(select(func.count()).where(Membership.group_id == group.id)) or 0
    return GroupOut(
        id=group.external_id,
        name=group.name,
        kind=group.kind,
        description=group.description,
        my_role=access.membership_role(db, user, group.id),
        members=members,
    )


def my_groups(db: Session, user: User) -> list[GroupOut]:
    """The groups ``user`` belongs to (admins: all groups), by name."""
    query = select(Group).order_by(Group.name)
    if not access.is_admin(user):
        query = query.join(Membership, Membership.group_id == Group.id).where(
            Membership.user_id == user.id
        )
    return [group_out(db, user, g) for g in db.scalars(query)]


def group(db: Session, user: User, group_id: str) -> GroupOut:
    """One group the user may see (404 otherwise)."""
    return group_out(db, user, access.group_visible_to(db, user, group_id))


def group_messages(
    db: Session, user: User, group_id: str, *, limit: int, offset: int
) -> list[MessageOut]:
    """A group's messages, newest first (deleted ones left out)."""
    found = access.group_visible_to(db, user, group_id)
    rows = list(
        db.scalars(
            select(GroupMessage)
            .where(GroupMessage.group_id == found.id, GroupMessage.deleted_at.is_(None))
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
    return [
        MessageOut(
            id=m.external_id,
            author=names[m.author_id],
            text=m.text,
            reply_to=replies.get(m.reply_to_id) if m.reply_to_id else None,
            created_at=m.created_at,
            cards=m.cards or [],
            generation_id=m.generation_id,
        )
        for m in rows
    ]


def hide_message(db: Session, user: User, group_id: str, message_id: str) -> None:
    """A moderator (or admin) hides a message of their group; recorded in the audit log. The
    caller commits."""
    found = access.moderated_group(db, user, group_id)
    message = db.scalar(
        select(GroupMessage).where(
            GroupMessage.external_id == message_id, GroupMessage.group_id == found.id
        )
    )
    if message is None:
        raise NotFound(f"Group '{group_id}' has no message '{message_id}'.")
    message.deleted_at = message.deleted_at or datetime.now(UTC)
    audit.record(db, user, "moderate.hide_message", f"{group_id}/{message_id}")


def _post_out(
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


def feed(db: Session, user: User, *, limit: int, offset: int) -> list[PostOut]:
    """Public posts and posts of the user's groups, newest first."""
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
    groups = _group_ids(db, {p.group_id for p in posts if p.group_id})
    return [_post_out(p, names, groups) for p in posts]


def post(db: Session, user: User, post_id: str) -> PostOut:
    """One post the user may see, with its comments."""
    found = access.post_visible_to(db, user, post_id)
    comments = list(
        db.scalars(
            select(Comment)
            .where(Comment.post_id == found.id)
            .order_by(Comment.created_at, Comment.id)
        )
    )
    names = _names(db, {found.author_id} | {c.author_id for c in comments})
    groups = _group_ids(db, {found.group_id} if found.group_id else set())
    return _post_out(found, names, groups, comments)


def my_threads(db: Session, user: User, *, limit: int, offset: int) -> list[ThreadOut]:
    """The user's own DM threads with their participants."""
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
    members: dict[int, set[int]] = {}
    for thread_id, user_id in db.execute(
        select(DMParticipant.thread_id, DMParticipant.user_id).where(
            DMParticipant.thread_id.in_([t.id for t in threads])
        )
    ):
        members.setdefault(thread_id, set()).add(user_id)
    names = _names(db, set().union(*members.values()) if members else set())
    return [
        ThreadOut(id=t.external_id, participants=sorted(names[u] for u in members.get(t.id, set())))
        for t in threads
    ]


def thread_messages(
    db: Session, user: User, thread_id: str, *, limit: int, offset: int
) -> list[MessageOut]:
    """A DM thread's messages, newest first; participants only (404 otherwise)."""
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
    return [
        MessageOut(
            id=m.external_id,
            author=names[m.author_id],
            text=m.text,
            reply_to=None,
            created_at=m.created_at,
        )
        for m in rows
    ]


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


def listings(
    db: Session, user: User, *, category: str | None, limit: int, offset: int
) -> list[ListingOut]:
    """Active listings (and the user's own), newest first."""
    query = select(Listing).where(access.visible_listings(user))
    if category:
        query = query.where(Listing.category == category)
    rows = list(db.scalars(query.order_by(Listing.id.desc()).limit(limit).offset(offset)))
    names = _names(db, {r.seller_id for r in rows})
    return [_listing_out(r, names) for r in rows]


def listing(db: Session, user: User, listing_id: str) -> ListingOut:
    """One listing the user may see, with its accepted description."""
    found = access.listing_visible_to(db, user, listing_id)
    return _listing_out(found, _names(db, {found.seller_id}))


def reel(db: Session, user: User, reel_id: str) -> ReelOut:
    """One reel the user may see."""
    found = access.reel_visible_to(db, user, reel_id)
    names = _names(db, {found.creator_id})
    return ReelOut(
        id=found.external_id,
        creator=names[found.creator_id],
        caption=found.caption,
        transcript=found.transcript,
        tags=found.tags,
        duration_s=found.duration_s,
        media_url=found.media_url,
        visibility=found.visibility,
    )


def audit_log(db: Session, *, limit: int, before_id: int | None) -> list[AuditOut]:
    """Admin and moderator actions, newest first."""
    return [
        AuditOut.model_validate(e, from_attributes=True)
        for e in audit.recent(db, limit=limit, before_id=before_id)
    ]
