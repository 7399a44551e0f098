"""Who may see what: the one place for access rules. Every route that returns social content
goes through these functions.

- group content (messages, group posts, group reels): the group's members; admins everywhere;
- a DM thread: its participants (and admins);
- public posts, active listings and public reels: every authenticated user;
- a listing that is not active: its seller (and admins); a private reel: its creator;
- moderators act within their own group.

Something a user may not see reads as missing (404), so its existence is not revealed. Being
refused an action on something one can see is 403.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, exists, or_, select, true
from sqlalchemy.orm import Session

from townsquare.errors import Forbidden, NotFound
from townsquare.storage.filters import And, Eq, Everything, Filter, In, IsNull, Or
from townsquare.storage.social_tables import (
    DMParticipant,
    DMThread,
    Generation,
    Group,
    ImageRow,
    Listing,
    Membership,
    Post,
    Reel,
)
from townsquare.storage.tables import Conversation, User


def is_admin(user: User) -> bool:
    """Whether the user is an admin (who sees everything)."""
    return user.role == "admin"


def membership_role(db: Session, user: User, group_id: int) -> str | None:
    """'member', 'moderator', or None when the user is not in the group."""
    return db.scalar(
        select(Membership.role).where(
            Membership.group_id == group_id, Membership.user_id == user.id
        )
    )


def _missing(kind: str, external_id: str) -> NotFound:
    return NotFound(f"There is no {kind} '{external_id}' that you can see.")


def group_visible_to(db: Session, user: User, external_id: str) -> Group:
    """A group the user is a member of (admins: any); 404 otherwise."""
    group = db.scalar(select(Group).where(Group.external_id == external_id))
    if group is None or not (is_admin(user) or membership_role(db, user, group.id)):
        raise _missing("group", external_id)
    return group


def moderated_group(db: Session, user: User, external_id: str) -> Group:
    """A group the user moderates (admins moderate every group)."""
    group = group_visible_to(db, user, external_id)
    if not is_admin(user) and membership_role(db, user, group.id) != "moderator":
        raise Forbidden(
            f"Only moderators of '{external_id}' may do this. Ask one of them, or an admin."
        )
    return group


def thread_visible_to(db: Session, user: User, external_id: str) -> DMThread:
    """A DM thread the user takes part in; 404 otherwise (admins included: DMs are private)."""
    thread = db.scalar(select(DMThread).where(DMThread.external_id == external_id))
    if thread is None:
        raise _missing("DM thread", external_id)
    if not is_admin(user):
        participant = db.scalar(
            select(DMParticipant.id).where(
                DMParticipant.thread_id == thread.id, DMParticipant.user_id == user.id
            )
        )
        if participant is None:
            raise _missing("DM thread", external_id)
    return thread


def _member_of(group_column: Any, user: User) -> ColumnElement[bool]:
    return exists().where(Membership.group_id == group_column, Membership.user_id == user.id)


def visible_posts(user: User) -> ColumnElement[bool]:
    """SQL condition: posts ``user`` may see."""
    if is_admin(user):
        return true()
    return or_(Post.group_id.is_(None), _member_of(Post.group_id, user))


def visible_listings(user: User) -> ColumnElement[bool]:
    """SQL condition: active listings, and the user's own in any status (admins: all)."""
    if is_admin(user):
        return true()
    return or_(Listing.status == "active", Listing.seller_id == user.id)


def visible_reels(user: User) -> ColumnElement[bool]:
    """SQL condition: public reels, reels of the user's groups and the user's own."""
    if is_admin(user):
        return true()
    return or_(
        Reel.visibility == "public",
        and_(Reel.visibility == "group", _member_of(Reel.group_id, user)),
        Reel.creator_id == user.id,
    )


# --- the same rules over the search indexes' metadata (storage/filters.py) ------------------
# Each mirrors the SQL condition above it; tests/social/test_access.py checks they agree.


def member_group_ids(db: Session, user: User) -> tuple[int, ...]:
    """The groups ``user`` belongs to (one indexed query, bounded by their memberships)."""
    return tuple(db.scalars(select(Membership.group_id).where(Membership.user_id == user.id)))


def listings_filter(user: User) -> Filter:
    """Index filter: listings ``user`` may see (mirrors ``visible_listings``)."""
    if is_admin(user):
        return Everything()
    return Or((Eq("status", "active"), Eq("seller_id", user.id)))


def posts_filter(user: User, groups: tuple[int, ...]) -> Filter:
    """Index filter: posts ``user`` may see, given their ``member_group_ids``."""
    if is_admin(user):
        return Everything()
    return Or((IsNull("group_id"), In("group_id", groups)))


def reels_filter(user: User, groups: tuple[int, ...]) -> Filter:
    """Index filter: reels ``user`` may see, given their ``member_group_ids``."""
    if is_admin(user):
        return Everything()
    return Or(
        (
            Eq("visibility", "public"),
            And((Eq("visibility", "group"), In("group_id", groups))),
            Eq("creator_id", user.id),
        )
    )


def post_visible_to(db: Session, user: User, external_id: str) -> Post:
    """A post the user may see (public, or in one of their groups); 404 otherwise."""
    post = db.scalar(select(Post).where(Post.external_id == external_id, visible_posts(user)))
    if post is None:
        raise _missing("post", external_id)
    return post


def listing_visible_to(db: Session, user: User, external_id: str) -> Listing:
    """A listing the user may see (active, or their own); 404 otherwise."""
    listing = db.scalar(
        select(Listing).where(Listing.external_id == external_id, visible_listings(user))
    )
    if listing is None:
        raise _missing("listing", external_id)
    return listing


def reel_visible_to(db: Session, user: User, external_id: str) -> Reel:
    """A reel the user may see; 404 otherwise."""
    reel = db.scalar(select(Reel).where(Reel.external_id == external_id, visible_reels(user)))
    if reel is None:
        raise _missing("reel", external_id)
    return reel


def visible_images(user: User) -> ColumnElement[bool]:
    """Images the user may see: their own, and those in their groups (admins: all)."""
    if is_admin(user):
        return true()
    return or_(ImageRow.user_id == user.id, _member_of(ImageRow.group_id, user))


def image_visible_to(db: Session, user: User, external_id: str) -> ImageRow:
    """An image the user may see (theirs, or in one of their groups); 404 otherwise."""
    image = db.scalar(
        select(ImageRow).where(ImageRow.external_id == external_id, visible_images(user))
    )
    if image is None:
        raise _missing("image", external_id)
    return image


def image_of_author(db: Session, user: User, external_id: str) -> ImageRow:
    """An image its author, a moderator of its group or an admin may delete: 404 when not
    visible, 403 when visible but someone else's."""
    image = image_visible_to(db, user, external_id)
    if image.user_id == user.id or is_admin(user):
        return image
    if image.group_id is not None and membership_role(db, user, image.group_id) == "moderator":
        return image
    raise Forbidden("Only the image's author or a moderator of its group may delete it.")


# --- who may do what (beyond seeing) -------------------------------------------------------


def is_creator(user: User) -> bool:
    """Creators (and admins) have a style profile and get suggested replies."""
    return user.role in {"creator", "admin"}


def require_creator(user: User, what: str = "This") -> User:
    """``user`` if a creator (or admin); 403 otherwise."""
    if not is_creator(user):
        raise Forbidden(f"{what} is for creators. Ask an admin to make you a creator.")
    return user


def require_admin(user: User) -> User:
    """``user`` if an admin; 403 otherwise."""
    if not is_admin(user):
        raise Forbidden("Only admins may do this. Ask an admin of this townsquare.")
    return user


def listing_of_seller(db: Session, user: User, external_id: str) -> Listing:
    """A listing its seller (or an admin) may edit: 404 when not visible, 403 when visible but
    someone else's."""
    listing = listing_visible_to(db, user, external_id)
    if listing.seller_id != user.id and not is_admin(user):
        raise Forbidden("Only the seller may draft or accept this listing's description.")
    return listing


def own_conversation(db: Session, user: User, conversation_id: int) -> Conversation:
    """The member's own assistant conversation; someone else's reads as missing (404)."""
    conversation = db.get(Conversation, conversation_id)
    if conversation is None or conversation.user_id != user.id:
        raise NotFound(
            f"Conversation {conversation_id} does not exist. List yours with "
            "GET /api/conversations."
        )
    return conversation


def own_generation(db: Session, user: User, generation_id: int) -> Generation:
    """A generation made for ``user`` (to rate it); anyone else's reads as missing (404), for
    admins too: feedback is the receiver's."""
    generation = db.get(Generation, generation_id)
    if generation is None or generation.user_id != user.id:
        raise NotFound(
            f"There is no generation {generation_id} of yours. Its id is in the response that "
            "returned it (generation_id)."
        )
    return generation
