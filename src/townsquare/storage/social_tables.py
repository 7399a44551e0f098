"""Tables for the host app's content: groups, messages, posts, DMs, listings, reels, interactions.

Every ingestible row carries the host app's ``external_id`` (unique per kind): ingestion upserts
by it, so sending the same batch twice changes nothing. Messages are soft-deleted
(``deleted_at``) because conversations keep their shape; everything else is deleted for real.

A group's messages are numbered in commit order (``GroupMessage.seq``): a flush that adds
messages to a group takes the group's next numbers by raising ``Group.message_seq`` in the same
transaction, and the row lock that update holds until commit makes every other writer of that
group wait, so a reader that has seen number n has seen every number below it. Ids are not
that: on PostgreSQL a transaction can commit id 2 before another commits id 1, and a stream
reading ``id > 1`` would never deliver it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    event,
    inspect,
    update,
)
from sqlalchemy.orm import InstanceState, Mapped, Session, mapped_column

from townsquare.storage.tables import Base, UTCDateTime, utcnow

EXTERNAL_ID = 128


class Group(Base):
    """A community or a group chat."""

    __tablename__ = "groups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(EXTERNAL_ID), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16), default="chat")  # chat | community
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # the last number given to one of its messages (0019; see the module docstring)
    message_seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("group_id", "user_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16), default="member")  # member | moderator


class GroupRead(Base):
    """Where a member last read a group (its newest message when they opened its page)."""

    __tablename__ = "group_reads"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    group_id: Mapped[int] = mapped_column(
        ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True
    )
    last_message_id: Mapped[int] = mapped_column(Integer)


class GroupMessage(Base):
    __tablename__ = "group_messages"
    __table_args__ = (UniqueConstraint("group_id", "seq", name="uq_group_messages_seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(EXTERNAL_ID), unique=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), index=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    text: Mapped[str] = mapped_column(Text)
    cards: Mapped[list[dict[str, Any]] | None] = mapped_column(
        JSON, nullable=True
    )  # the assistant's
    reply_to_id: Mapped[int | None] = mapped_column(
        ForeignKey("group_messages.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # the assistant's reply: its generation, which the member who asked may rate (0017)
    generation_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # its number in the group, in commit order (0019; given at flush by _number_messages)
    seq: Mapped[int] = mapped_column(Integer)
    # the assistant's reply: the mention it answers, unique, so a mention is answered once
    # whatever replicas race (0022)
    answers_id: Mapped[int | None] = mapped_column(Integer, nullable=True, unique=True)


def _insert_order(obj: object) -> int:
    state: InstanceState[Any] = inspect(obj)
    return state.insert_order or 0


@event.listens_for(Session, "before_flush")
def _number_messages(session: Session, _context: object, _instances: object) -> None:
    """Give the group messages this flush adds their groups' next numbers (see the module
    docstring), groups in id order so two writers never wait on each other in a circle; the
    vector change log's rows likewise, from its counter."""
    added: list[GroupMessage | VectorItem] = [
        o for o in session.new if isinstance(o, GroupMessage | VectorItem)
    ]
    added.sort(key=_insert_order)
    new: dict[int, list[GroupMessage]] = defaultdict(list)
    for obj in added:
        if isinstance(obj, GroupMessage) and obj.seq is None:
            new[obj.group_id].append(obj)
    logged = [o for o in added if isinstance(o, VectorItem) and o.seq is None]
    for group_id in sorted(new):
        _take_numbers(session, new[group_id], Group.message_seq, Group.id == group_id)
    if logged:
        _take_numbers(session, logged, LogCounter.value, LogCounter.name == "vector_items")


def _take_numbers(
    session: Session,
    rows: Sequence[GroupMessage | VectorItem],
    counter: Any,
    where: Any,
) -> None:
    """Raise ``counter`` (the row ``where`` picks) by ``len(rows)`` and number ``rows`` with the
    numbers taken, in order; the row stays locked until the transaction ends."""
    last = session.execute(
        update(counter.class_)
        .where(where)
        .values({counter.key: counter + len(rows)})
        .returning(counter)
        .execution_options(synchronize_session=False)
    ).scalar_one()
    for n, row in enumerate(rows, start=last - len(rows) + 1):
        row.seq = n


class Post(Base):
    __tablename__ = "posts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(EXTERNAL_ID), unique=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    group_id: Mapped[int | None] = mapped_column(
        ForeignKey("groups.id", ondelete="CASCADE"), nullable=True, index=True
    )
    text: Mapped[str] = mapped_column(Text, default="")
    image_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class Comment(Base):
    __tablename__ = "comments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(EXTERNAL_ID), unique=True)
    post_id: Mapped[int] = mapped_column(ForeignKey("posts.id", ondelete="CASCADE"), index=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DMThread(Base):
    __tablename__ = "dm_threads"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(EXTERNAL_ID), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DMParticipant(Base):
    __tablename__ = "dm_participants"
    __table_args__ = (UniqueConstraint("thread_id", "user_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    thread_id: Mapped[int] = mapped_column(
        ForeignKey("dm_threads.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)


class DMMessage(Base):
    __tablename__ = "dm_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(EXTERNAL_ID), unique=True)
    thread_id: Mapped[int] = mapped_column(
        ForeignKey("dm_threads.id", ondelete="CASCADE"), index=True
    )
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Listing(Base):
    """A shop listing. Prices are integer minor units (cents) with an ISO 4217 currency."""

    __tablename__ = "listings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(EXTERNAL_ID), unique=True)
    seller_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(300))
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    price_cents: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3), default="EUR")
    category: Mapped[str] = mapped_column(String(64), index=True)
    condition: Mapped[str] = mapped_column(String(16), default="good")
    location: Mapped[str] = mapped_column(String(200), default="")
    lat: Mapped[float | None] = mapped_column(Float, nullable=True)
    lon: Mapped[float | None] = mapped_column(Float, nullable=True)
    image_refs: Mapped[list[str]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(16), default="active", index=True)
    # set when the seller accepts (or edits) a generated draft
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Reel(Base):
    __tablename__ = "reels"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(EXTERNAL_ID), unique=True)
    creator_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    caption: Mapped[str] = mapped_column(Text, default="")
    transcript: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    duration_s: Mapped[float] = mapped_column(Float, default=0.0)
    media_url: Mapped[str] = mapped_column(String(2048))
    visibility: Mapped[str] = mapped_column(String(16), default="public")  # public|group|private
    group_id: Mapped[int | None] = mapped_column(
        ForeignKey("groups.id", ondelete="CASCADE"), nullable=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Interaction(Base):
    """A member's signal on a reel, listing or post (view, like, save, hide)."""

    __tablename__ = "interactions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(EXTERNAL_ID), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    target_kind: Mapped[str] = mapped_column(String(16))  # reel | listing | post
    target_id: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(16))  # view | like | save | hide
    value: Mapped[float | None] = mapped_column(Float, nullable=True)  # e.g. seconds watched
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AuditEvent(Base):
    """An admin's or moderator's action: who, what, when."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    actor_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    actor_role: Mapped[str] = mapped_column(String(16), default="")
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(300), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class LogCounter(Base):
    """The last number given in a change log that readers follow by number (0020): the row is
    raised in the writer's transaction, and its lock, held until commit, keeps numbers in
    commit order (as ``Group.message_seq`` does for a group's messages)."""

    __tablename__ = "log_counters"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(Integer, default=0)


class VectorItem(Base):
    """One embedded item, and the change log every process's vector index follows.

    Every change is a new row numbered in commit order (``seq``, from the ``vector_items``
    counter), so a reader that has seen rows up to number N fetches ``seq > N`` to catch up
    and misses nothing (ids do not do that on PostgreSQL: a later id can commit first); a
    deletion leaves a tombstone (``vector`` NULL). At most one row per (collection, item).
    """

    __tablename__ = "vector_items"
    __table_args__ = (
        UniqueConstraint("collection", "item_id"),
        UniqueConstraint("seq", name="uq_vector_items_seq"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    collection: Mapped[str] = mapped_column(String(32))
    item_id: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64), default="")
    vector: Mapped[bytes | None] = mapped_column(
        LargeBinary, nullable=True
    )  # float32 little-endian
    # the item's filterable metadata (status, price, group ...), kept beside its vector
    attrs: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # its number in the change log, in commit order (0020; given at flush)
    seq: Mapped[int] = mapped_column(Integer)


class Generation(Base):
    """One generation by a writing feature: what went in, what came out, how it went.

    Feedback attaches to it later by id.
    """

    __tablename__ = "generations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    feature: Mapped[str] = mapped_column(String(64), index=True)
    user_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    output: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    model: Mapped[str] = mapped_column(String(200), default="")
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    first_try_valid: Mapped[bool] = mapped_column(Boolean, default=True)
    # what the model was given and what it answered (for training exports); None before 0011
    prompt: Mapped[list[dict[str, str]] | None] = mapped_column(JSON, nullable=True)
    answer: Mapped[str | None] = mapped_column(Text, nullable=True)


class GenerationContributor(Base):
    """A member whose words went into a generation's prompt (the member it was made for, the
    authors of the messages, posts and listings it read). Deleting the member redacts the
    generation; an export leaves it out while one of them has opted out. A generation with no
    row was recorded before 0018: whose words it holds is unknown, so it is never exported."""

    __tablename__ = "generation_contributors"

    generation_id: Mapped[int] = mapped_column(
        ForeignKey("generations.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(Integer, primary_key=True, index=True)


def add_contributors(db: Any, generation_id: int, user_ids: Any) -> None:
    """Record whose words a generation's prompt holds (ids, de-duplicated)."""
    for user_id in sorted({int(u) for u in user_ids if u is not None}):
        db.add(GenerationContributor(generation_id=generation_id, user_id=user_id))


class Feedback(Base):
    """A member's verdict on a generation they received: thumbs, a reason, a corrected text.
    One per member and generation (the latest wins); accepting or editing a draft counts."""

    __tablename__ = "feedback"
    __table_args__ = (
        UniqueConstraint("generation_id", "user_id", name="uq_feedback_generation_user"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation_id: Mapped[int] = mapped_column(ForeignKey("generations.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    rating: Mapped[str] = mapped_column(String(8))  # up | down
    reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    correction: Mapped[str | None] = mapped_column(Text, nullable=True)
    source: Mapped[str] = mapped_column(String(16), default="member")  # member | accept
    # a correction is moderated before it is stored: "ok", or "blocked" (kept out of every
    # export, shown to admins with its codes)
    correction_status: Mapped[str] = mapped_column(String(16), default="ok")
    correction_hazards: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class CreatorStyle(Base):
    """A creator's writing-style profile for suggested replies: opt-in, viewable, editable."""

    __tablename__ = "creator_styles"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    profile: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    edited: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ProvenanceRecord(Base):
    """One watermarked image: the payload hidden in it and the generation it came from.

    The prompt is kept only as a SHA-256 hash; the record says who, when and with what model.
    """

    __tablename__ = "provenance"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    payload: Mapped[str] = mapped_column(String(16), unique=True)  # hex of the mark's bits
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    source: Mapped[str] = mapped_column(String(64))  # imagine, reimagine, cli, ...
    generation_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    user_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    model: Mapped[str] = mapped_column(String(200), default="")
    prompt_hash: Mapped[str] = mapped_column(String(64), default="")
    # the payload of the image this one was remixed from (Reimagine); kept when that goes
    parent_payload: Mapped[str | None] = mapped_column(String(16), nullable=True)


class ImageRow(Base):
    """One image made here (Imagine, Reimagine, the assistant, /v1/images, the CLI): its file
    in the blob store, who made it from what, and its place in a version tree.

    A version's ``parent_id`` is the image it was remixed from and ``root_id`` the first image
    of its tree. Images in a group are seen by the group's members; the others by their author.
    Deleting the author or the group deletes the rows (cascade); children of a deleted version
    point at its parent instead.
    """

    __tablename__ = "images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(EXTERNAL_ID), unique=True)
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=True, index=True
    )
    group_id: Mapped[int | None] = mapped_column(
        ForeignKey("groups.id", ondelete="CASCADE"), nullable=True, index=True
    )
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("images.id", ondelete="SET NULL"), nullable=True, index=True
    )
    root_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    blob: Mapped[str] = mapped_column(String(64), index=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(Text, default="")
    negative_prompt: Mapped[str] = mapped_column(Text, default="")
    style: Mapped[str] = mapped_column(String(32), default="")
    seed: Mapped[int] = mapped_column(Integer, default=0)
    strength: Mapped[float | None] = mapped_column(Float, nullable=True)
    model: Mapped[str] = mapped_column(String(200), default="")
    source: Mapped[str] = mapped_column(String(32), default="imagine")
    payload: Mapped[str] = mapped_column(String(16), index=True)
    nsfw_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class GroupAssistant(Base):
    """A group's assistant persona: its name there, its instructions, which tools it may use
    (JSON list; null: all) and whether it answers at all. Edited by the group's moderators."""

    __tablename__ = "group_assistants"

    group_id: Mapped[int] = mapped_column(
        ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(40))
    system_prompt: Mapped[str] = mapped_column(Text, default="")
    tools: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_by: Mapped[int | None] = mapped_column(Integer, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Webhook(Base):
    """A host app's endpoint for events, with the secret its deliveries are signed with."""

    __tablename__ = "webhooks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    secret: Mapped[str] = mapped_column(String(128))
    events: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_by: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WebhookDelivery(Base):
    """One event for one webhook: pending until delivered, retried with backoff, 'dead' after
    the last try (kept for admins to read and retry)."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    webhook_id: Mapped[int] = mapped_column(
        ForeignKey("webhooks.id", ondelete="CASCADE"), index=True
    )
    event: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
