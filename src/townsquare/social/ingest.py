"""Ingestion: host apps upsert their content by external id, one row or a batch at a time.

A batch is validated whole before anything is written: every row is parsed, every reference
(``"group": "g-42"``) is looked up in one query per kind, and if any row is bad the batch is
refused with each bad row's number and reasons, nothing stored. With ``partial=True`` the good
rows are stored and the bad ones reported. Rows whose values equal what is stored are left
alone, so sending the same batch twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pydantic import ValidationError
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from townsquare.errors import Forbidden, InvalidBatch, NotFound
from townsquare.privacy import erase_member_words
from townsquare.settings import IngestSettings
from townsquare.social import audit
from townsquare.social.schemas import (
    CommentIn,
    DMMessageIn,
    DMThreadIn,
    GroupIn,
    IngestModel,
    IngestReport,
    InteractionIn,
    ListingIn,
    MessageIn,
    PostIn,
    ReelIn,
    RowError,
    UserIn,
    describe_errors,
)
from townsquare.storage.social_tables import (
    EXTERNAL_ID,
    Comment,
    DMMessage,
    DMParticipant,
    DMThread,
    Generation,
    Group,
    GroupMessage,
    ImageRow,
    Interaction,
    Listing,
    Membership,
    Post,
    ProvenanceRecord,
    Reel,
)
from townsquare.storage.tables import User

Table = Any  # an ORM class with ``id`` and ``external_id`` columns
Cache = dict[Any, Any]  # lookups a check makes, shared across the rows of one batch


@dataclass(frozen=True)
class Ref:
    """A reference from an input field to another entity, stored in ``column``."""

    field: str
    table: Table
    column: str
    label: str
    url: str


@dataclass(frozen=True)
class Kind:
    """How one kind of entity is ingested."""

    name: str  # as in the URL: /api/<name>/{external_id}
    label: str  # one of them, in messages
    model: type[IngestModel]
    table: Table
    refs: Callable[[Any], list[tuple[Ref, str | None]]]
    columns: Callable[[Any], dict[str, Any]]
    soft_delete: bool = False
    # (db, external id, model, resolved ids, cache) -> a problem, or None
    check: Callable[[Session, str, Any, dict[str, int | None], Cache], str | None] | None = None
    after: Callable[[Session, Any, Any, Resolver], None] | None = None


def _ref(field: str, table: Table, column: str, label: str, url: str) -> Ref:
    return Ref(field, table, column, label, url)


def USER(field: str, column: str) -> Ref:
    """A reference to a user from ``field``, stored in ``column`` ('-' when it is not a column)."""
    return _ref(field, User, column, "user", "users")


GROUP = _ref("group", Group, "group_id", "group", "groups")
POST = _ref("post", Post, "post_id", "post", "posts")
THREAD = _ref("thread", DMThread, "thread_id", "DM thread", "dm-threads")
REPLY = _ref("reply_to", GroupMessage, "reply_to_id", "message", "messages")
TARGETS = {
    "reel": _ref("target", Reel, "target_id", "reel", "reels"),
    "listing": _ref("target", Listing, "target_id", "listing", "listings"),
    "post": _ref("target", Post, "target_id", "post", "posts"),
}


def _created(model: Any) -> dict[str, Any]:
    return {"created_at": model.created_at} if model.created_at is not None else {}


def _cents(price: Decimal) -> int:
    return int((price * 100).to_integral_value())


class Resolver:
    """External id → internal id, per table, looked up in batches and extended as rows are added."""

    def __init__(self, db: Session) -> None:
        self.db = db
        self.ids: dict[Table, dict[str, int]] = {}

    def load(self, table: Table, external_ids: Iterable[str]) -> None:
        """Look up the ids of ``external_ids`` in ``table`` (500 per query), adding to what is
        known."""
        known = self.ids.setdefault(table, {})
        wanted = sorted(set(external_ids) - known.keys())
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            for ext, id_ in self.db.execute(
                select(table.external_id, table.id).where(table.external_id.in_(chunk))
            ):
                known[ext] = id_

    def get(self, table: Table, external_id: str) -> int | None:
        """The id of ``external_id`` in ``table``, or None when it does not exist."""
        return self.ids.get(table, {}).get(external_id)

    def add(self, table: Table, external_id: str, id_: int) -> None:
        """Remember a row added in this batch."""
        self.ids.setdefault(table, {})[external_id] = id_


def _group_members(db: Session, group: Group, model: GroupIn, resolver: Resolver) -> None:
    if model.members is None:
        return
    db.execute(delete(Membership).where(Membership.group_id == group.id))
    for member in model.members:
        user_id = resolver.get(User, member.user)
        db.add(Membership(group_id=group.id, user_id=user_id, role=member.role))


def _thread_participants(
    db: Session, thread: DMThread, model: DMThreadIn, resolver: Resolver
) -> None:
    db.execute(delete(DMParticipant).where(DMParticipant.thread_id == thread.id))
    for external in dict.fromkeys(model.participants):
        db.add(DMParticipant(thread_id=thread.id, user_id=resolver.get(User, external)))


def _members_of(db: Session, cache: Cache, group_id: int | None) -> set[int]:
    key = ("group", group_id)
    if key not in cache:
        cache[key] = set(
            db.scalars(select(Membership.user_id).where(Membership.group_id == group_id))
        )
    members: set[int] = cache[key]
    return members


def _participants_of(db: Session, cache: Cache, thread_id: int | None) -> set[int]:
    key = ("thread", thread_id)
    if key not in cache:
        cache[key] = set(
            db.scalars(select(DMParticipant.user_id).where(DMParticipant.thread_id == thread_id))
        )
    participants: set[int] = cache[key]
    return participants


def _name_free(
    db: Session, external_id: str, model: UserIn, ids: dict[str, int | None], cache: Cache
) -> str | None:
    """A user's name is unique: taken by another user (or another row of this batch) is a
    problem of this row, not a database error."""
    claimed: dict[str, str] = cache.setdefault("names", {})
    if claimed.get(model.name, external_id) != external_id:
        return f"name: '{model.name}' is also given to '{claimed[model.name]}' in this batch"
    owner = db.execute(select(User.external_id).where(User.name == model.name)).first()
    if owner is not None and owner[0] != external_id:
        return f"name: '{model.name}' is taken by another user; choose another name"
    claimed[model.name] = external_id
    return None


def _author_in_group(
    db: Session, _external_id: str, model: MessageIn, ids: dict[str, int | None], cache: Cache
) -> str | None:
    if ids["author_id"] not in _members_of(db, cache, ids["group_id"]):
        return (
            f"author: '{model.author}' is not a member of group '{model.group}'; "
            "add them to its members first"
        )
    return None


def _author_in_thread(
    db: Session, _external_id: str, model: DMMessageIn, ids: dict[str, int | None], cache: Cache
) -> str | None:
    if ids["author_id"] not in _participants_of(db, cache, ids["thread_id"]):
        return f"author: '{model.author}' is not a participant of DM thread '{model.thread}'"
    return None


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in [
        Kind(
            "users",
            "user",
            UserIn,
            User,
            refs=lambda m: [],
            columns=lambda m: {
                "name": m.name,
                "display_name": m.display_name or m.name,
                "locale": m.locale,
                "role": m.role,
            },
            check=_name_free,
        ),
        Kind(
            "groups",
            "group",
            GroupIn,
            Group,
            refs=lambda m: [(USER("members", "-"), x.user) for x in (m.members or [])],
            columns=lambda m: {"name": m.name, "kind": m.kind, "description": m.description},
            after=_group_members,
        ),
        Kind(
            "messages",
            "message",
            MessageIn,
            GroupMessage,
            refs=lambda m: [
                (GROUP, m.group),
                (USER("author", "author_id"), m.author),
                (REPLY, m.reply_to),
            ],
            columns=lambda m: {"text": m.text, **_created(m)},
            soft_delete=True,
            check=_author_in_group,
        ),
        Kind(
            "posts",
            "post",
            PostIn,
            Post,
            refs=lambda m: [(USER("author", "author_id"), m.author), (GROUP, m.group)],
            columns=lambda m: {"text": m.text, "image_url": m.image_url, **_created(m)},
        ),
        Kind(
            "comments",
            "comment",
            CommentIn,
            Comment,
            refs=lambda m: [(POST, m.post), (USER("author", "author_id"), m.author)],
            columns=lambda m: {"text": m.text, **_created(m)},
        ),
        Kind(
            "dm-threads",
            "DM thread",
            DMThreadIn,
            DMThread,
            refs=lambda m: [(USER("participants", "-"), p) for p in m.participants],
            columns=lambda m: {},
            after=_thread_participants,
        ),
        Kind(
            "dm-messages",
            "DM message",
            DMMessageIn,
            DMMessage,
            refs=lambda m: [(THREAD, m.thread), (USER("author", "author_id"), m.author)],
            columns=lambda m: {"text": m.text, **_created(m)},
            soft_delete=True,
            check=_author_in_thread,
        ),
        Kind(
            "listings",
            "listing",
            ListingIn,
            Listing,
            refs=lambda m: [(USER("seller", "seller_id"), m.seller)],
            columns=lambda m: {
                "title": m.title,
                "attributes": dict(m.attributes),
                "price_cents": _cents(m.price),
                "currency": m.currency,
                "category": m.category,
                "condition": m.condition,
                "location": m.location,
                "lat": m.lat,
                "lon": m.lon,
                "image_refs": list(m.images),
                "status": m.status,
            },
        ),
        Kind(
            "reels",
            "reel",
            ReelIn,
            Reel,
            refs=lambda m: [(USER("creator", "creator_id"), m.creator), (GROUP, m.group)],
            columns=lambda m: {
                "caption": m.caption,
                "transcript": m.transcript,
                "tags": list(m.tags),
                "duration_s": m.duration_s,
                "media_url": m.media_url,
                "visibility": m.visibility,
                **_created(m),
            },
        ),
        Kind(
            "interactions",
            "interaction",
            InteractionIn,
            Interaction,
            refs=lambda m: [(USER("user", "user_id"), m.user), (TARGETS[m.target_kind], m.target)],
            columns=lambda m: {
                "target_kind": m.target_kind,
                "action": m.action,
                "value": m.value,
                **_created(m),
            },
        ),
    ]
}


def _as_utc(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return value


@dataclass
class _Row:
    number: int
    external_id: str
    model: Any
    ids: dict[str, int | None] = field(default_factory=dict)


def ingest(
    db: Session,
    kind: Kind,
    rows: list[dict[str, Any]],
    *,
    settings: IngestSettings,
    actor: User | None,
    partial: bool = False,
) -> IngestReport:
    """Validate and upsert ``rows`` (each with an ``external_id``). The caller commits.

    Three steps: ``parse`` (each row against the kind's model), ``resolve`` (every reference
    looked up in one query per kind) and ``write`` (insert, update or leave alone). Without
    ``partial``, a bad row at any step refuses the whole batch and nothing is stored.
    """
    report = IngestReport(kind=kind.name)
    parsed = parse(kind, rows, settings, report)
    resolver = Resolver(db)
    ready = resolve(kind, parsed, resolver, report)
    if report.rejected and not partial:
        report.rejected.sort(key=lambda r: r.row)
        raise InvalidBatch(
            f"{len(report.rejected)} of {len(rows)} rows are invalid; nothing was stored. Fix the "
            "rows listed, or send ?partial=true to store the valid ones.",
            [r.model_dump() for r in report.rejected],
        )
    write(db, kind, ready, resolver, report)
    if report.rejected and not partial:  # only checks that needed the database can land here
        db.rollback()
        raise InvalidBatch(
            f"{len(report.rejected)} of {len(rows)} rows are invalid; nothing was stored.",
            [r.model_dump() for r in sorted(report.rejected, key=lambda r: r.row)],
        )
    report.rejected.sort(key=lambda r: r.row)
    if actor is not None and (report.created or report.updated):
        audit.record(
            db,
            actor,
            f"ingest.{kind.name}",
            "",
            created=report.created,
            updated=report.updated,
            rejected=len(report.rejected),
        )
    return report


def _reject(report: IngestReport, number: int, external_id: str | None, errors: list[str]) -> None:
    report.rejected.append(RowError(row=number, external_id=external_id, errors=errors))


def parse(
    kind: Kind, rows: list[Any], settings: IngestSettings, report: IngestReport
) -> list[_Row]:
    """Each row validated against the kind's model; bad rows go to ``report.rejected``."""
    good: list[_Row] = []
    seen: set[str] = set()
    context = {"max_text_chars": settings.max_text_chars}
    for number, raw in enumerate(rows, start=1):
        if not isinstance(raw, dict):
            _reject(report, number, None, ["row: must be a JSON object"])
            continue
        values = dict(raw)
        external_id = values.pop("external_id", None)
        problems: list[str] = []
        if not isinstance(external_id, str) or not external_id or len(external_id) > EXTERNAL_ID:
            problems.append(f"external_id: required, a string of 1-{EXTERNAL_ID} characters")
            external_id = None
        elif external_id in seen:
            problems.append(f"external_id: '{external_id}' appears twice in this batch")
        try:
            model = kind.model.model_validate(values, context=context)
        except ValidationError as exc:
            problems.extend(describe_errors(exc.errors()))
            model = None
        if problems or model is None or external_id is None:
            _reject(report, number, external_id, problems)
            continue
        seen.add(external_id)
        good.append(_Row(number, external_id, model))
    return good


def resolve(kind: Kind, parsed: list[_Row], resolver: Resolver, report: IngestReport) -> list[_Row]:
    """Look up every reference of the parsed rows (one query per referenced kind); rows naming
    something that does not exist (and is not earlier in this batch) are rejected."""
    wanted: dict[Table, set[str]] = {}
    for row in parsed:
        for ref, target in kind.refs(row.model):
            if target is not None:
                wanted.setdefault(ref.table, set()).add(target)
    for table, external_ids in wanted.items():
        resolver.load(table, external_ids)
    resolver.load(kind.table, [row.external_id for row in parsed])
    in_batch: set[str] = set()
    ready: list[_Row] = []
    for row in parsed:
        problems = []
        for ref, target in kind.refs(row.model):
            if target is None:
                row.ids.setdefault(ref.column, None)
                continue
            found = resolver.get(ref.table, target)
            if found is None and not (ref.table is kind.table and target in in_batch):
                problems.append(
                    f"{ref.field}: {ref.label} '{target}' does not exist; create it first "
                    f"(PUT /api/{ref.url}/{target})"
                )
            row.ids[ref.column] = found
        in_batch.add(row.external_id)
        if problems:
            _reject(report, row.number, row.external_id, problems)
        else:
            ready.append(row)
    return ready


def write(
    db: Session, kind: Kind, ready: list[_Row], resolver: Resolver, report: IngestReport
) -> None:
    """Insert new rows, update changed ones, leave equal ones alone (counted in ``report``);
    the kind's database checks (a message author in the group, a free user name) run here."""
    existing = {
        obj.external_id: obj
        for start in range(0, len(ready), 500)
        for obj in db.scalars(
            select(kind.table).where(
                kind.table.external_id.in_([r.external_id for r in ready[start : start + 500]])
            )
        )
    }
    now = datetime.now(UTC)
    cache: Cache = {}
    pending: dict[str, Any] = {}  # rows added but not yet flushed: no id yet

    def flush_pending() -> None:
        # One flush for many rows: SQLAlchemy sends the INSERTs in batches.
        if pending:
            db.flush()
            for external, added in pending.items():
                resolver.add(kind.table, external, added.id)
            pending.clear()

    for row in ready:
        # references to rows earlier in this batch (a reply in the same batch) need their ids
        for ref, target in kind.refs(row.model):
            if target is not None and row.ids.get(ref.column) is None:
                if ref.table is kind.table and target in pending:
                    flush_pending()
                row.ids[ref.column] = resolver.get(ref.table, target)
        if kind.check is not None:
            problem = kind.check(db, row.external_id, row.model, row.ids, cache)
            if problem:
                _reject(report, row.number, row.external_id, [problem])
                continue
        values = {**{c: v for c, v in row.ids.items() if c != "-"}, **kind.columns(row.model)}
        obj = existing.get(row.external_id)
        if obj is None:
            obj = kind.table(external_id=row.external_id, **values)
            db.add(obj)
            pending[row.external_id] = obj
            report.created += 1
            if kind.after is not None:
                flush_pending()
                kind.after(db, obj, row.model, resolver)
            continue
        if kind.table is User and obj.role == "admin":
            _reject(
                report,
                row.number,
                row.external_id,
                ["external_id: belongs to an admin; manage admins with the CLI"],
            )
            continue
        changed = False
        for column, value in values.items():
            if _as_utc(getattr(obj, column)) != _as_utc(value):
                setattr(obj, column, value)
                changed = True
        if kind.after is not None:
            changed = _after_changes(db, kind, obj, row.model) or changed
        if changed and hasattr(obj, "updated_at"):
            obj.updated_at = now
        if changed:
            report.updated += 1
        else:
            report.unchanged += 1
    flush_pending()


def _after_changes(db: Session, kind: Kind, obj: Any, model: Any) -> bool:
    """Re-apply members/participants only when they differ (keeps re-sends unchanged)."""
    resolver = Resolver(db)
    if kind.table is Group:
        if model.members is None:
            return False
        resolver.load(User, [m.user for m in model.members])
        wanted = {(resolver.get(User, m.user), m.role) for m in model.members}
        current = set(
            tuple(row)
            for row in db.execute(
                select(Membership.user_id, Membership.role).where(Membership.group_id == obj.id)
            )
        )
    else:
        resolver.load(User, model.participants)
        wanted = {(resolver.get(User, p), None) for p in model.participants}
        current = {
            (u, None)
            for u in db.scalars(
                select(DMParticipant.user_id).where(DMParticipant.thread_id == obj.id)
            )
        }
    if wanted == current:
        return False
    assert kind.after is not None
    kind.after(db, obj, model, resolver)
    return True


@dataclass(frozen=True)
class Removal:
    """What one delete removed, for the derived data that must follow (search indexes)."""

    kind: str
    external_id: str
    outcome: str  # "deleted" or "soft-deleted"
    items: dict[str, list[int]] = field(default_factory=dict)  # collection -> item ids
    users: list[int] = field(default_factory=list)
    blobs: list[str] = field(default_factory=list)  # image files of deleted images


def _removed_items(db: Session, kind: Kind, obj: Any) -> dict[str, list[int]]:
    """The indexed items (listings, posts, reels) a hard delete of ``obj`` removes, cascades
    included: queries bounded by what the deleted thing owns, never by the tables' size."""
    own = {Listing: "listings", Post: "posts", Reel: "reels"}
    if kind.table in own:
        return {own[kind.table]: [obj.id]}
    if kind.table is User:
        owned = [
            ("listings", select(Listing.id).where(Listing.seller_id == obj.id)),
            ("posts", select(Post.id).where(Post.author_id == obj.id)),
            ("reels", select(Reel.id).where(Reel.creator_id == obj.id)),
        ]
    elif kind.table is Group:
        owned = [
            ("posts", select(Post.id).where(Post.group_id == obj.id)),
            ("reels", select(Reel.id).where(Reel.group_id == obj.id)),
        ]
    else:
        return {}
    return {name: ids for name, query in owned if (ids := list(db.scalars(query)))}


def delete_entity(db: Session, kind: Kind, external_id: str, *, actor: User, hard: bool) -> Removal:
    """Delete one entity; messages are soft-deleted unless ``hard``. Returns what was removed.

    Deleting a user removes everything they made (cascades) and the interactions that pointed at
    it. The caller commits and then runs deletion hooks for derived data with the ``Removal``.
    """
    obj = db.scalar(select(kind.table).where(kind.table.external_id == external_id))
    if obj is None:
        raise NotFound(f"There is no {kind.label} '{external_id}'.")
    if kind.table is User and obj.role == "admin":
        raise Forbidden("Admins cannot be deleted through the API. Use the CLI on the server.")
    items: dict[str, list[int]] = {}
    users: list[int] = []
    blobs: list[str] = []
    if kind.soft_delete and not hard:
        obj.deleted_at = datetime.now(UTC)
        outcome = "soft-deleted"
    else:
        items = _removed_items(db, kind, obj)
        users = [obj.id] if kind.table is User else []
        blobs = _removed_blobs(db, kind, obj)
        _drop_interactions(db, kind, obj)
        db.delete(obj)
        outcome = "deleted"
    audit.record(db, actor, f"delete.{kind.name}", external_id, outcome=outcome)
    return Removal(kind.name, external_id, outcome, items, users, blobs)


def _removed_blobs(db: Session, kind: Kind, obj: Any) -> list[str]:
    """The image files of the images a delete of a user or a group removes (by cascade)."""
    if kind.table is User:
        return list(db.scalars(select(ImageRow.blob).where(ImageRow.user_id == obj.id)))
    if kind.table is Group:
        return list(db.scalars(select(ImageRow.blob).where(ImageRow.group_id == obj.id)))
    return []


def _drop_interactions(db: Session, kind: Kind, obj: Any) -> None:
    """Interactions point at posts, listings and reels without a foreign key: remove them too."""
    targets: list[tuple[str, Any]] = []
    if kind.table is User:
        # an image made here stays recognisable, but no longer points at the removed user
        db.execute(
            update(ProvenanceRecord).where(ProvenanceRecord.user_id == obj.id).values(user_id=None)
        )
        # what the writing features made for them holds their words (their feedback goes too)
        db.execute(delete(Generation).where(Generation.user_id == obj.id))
        # ... and so may what was made for others from their posts, messages and listings,
        # and the excerpts of their moderation decisions: redacted
        erase_member_words(db, obj.id)
        targets = [
            ("post", select(Post.id).where(Post.author_id == obj.id)),
            ("listing", select(Listing.id).where(Listing.seller_id == obj.id)),
            ("reel", select(Reel.id).where(Reel.creator_id == obj.id)),
        ]
    else:
        for name, ref in TARGETS.items():
            if ref.table is kind.table:
                targets = [(name, select(kind.table.id).where(kind.table.id == obj.id))]
    for target_kind, ids in targets:
        db.execute(
            delete(Interaction).where(
                Interaction.target_kind == target_kind, Interaction.target_id.in_(ids)
            )
        )
