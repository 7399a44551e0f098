"""Imagine and Reimagine: the one path every image made here goes out through.

``ImageService.make`` runs it, in this order, for every route, tool and command:

1. the prompt's length limit (413) and the safety pipeline's moderation of the prompt;
2. the member's and the group's daily image allowance;
3. the engine makes the pixels (bounded: ``images.concurrency`` at once, ``images.max_waiting``
   waiting, then 429);
4. the output check (Open-NSFW; blocked images are withheld and audited);
5. ``Provenance.mark``: a fresh payload, registered with the generation record (and the
   parent's payload for a remix), embedded and read back;
6. the PNG goes into the content-addressed blob store and the rows into the database, in one
   transaction.

Anything failing after step 3 undoes what it had done (records, blobs), so a failed request
leaves nothing half-stored. Only the marked bytes are ever stored, so every route that serves
an image file serves a marked one.

All methods block (model, numpy, database): call them from worker threads.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from townsquare.admission import Bounded
from townsquare.backends.base import Message
from townsquare.backends.images import ImageBackend, Size
from townsquare.errors import (
    BlobStoreUnavailable,
    ContentBlocked,
    ImagesNotConfigured,
    InvalidField,
    PayloadTooLarge,
)
from townsquare.features.imagine.schemas import (
    MAX_SEED,
    STYLES,
    ImageOut,
    ImagineRequest,
    ReimagineRequest,
    VersionNode,
    VersionTree,
)
from townsquare.quotas import Quotas
from townsquare.safety.nsfw import NsfwCheck
from townsquare.safety.pipeline import Context, Decision, GuardedText, SafetyEvent
from townsquare.safety.provenance import Provenance, encode_image, load_image
from townsquare.settings import Settings
from townsquare.social import access
from townsquare.storage.blobs import BlobStore
from townsquare.storage.social_tables import Group, ImageRow
from townsquare.storage.tables import User

log = logging.getLogger("townsquare.imagine")


@dataclass(frozen=True)
class Made:
    """An image that went the whole path: its row and its (marked) PNG bytes."""

    row: ImageRow
    png: bytes


@dataclass(frozen=True)
class Ask:
    """One request to make images, whatever the route."""

    prompt: str
    size: Size | None = None
    n: int = 1
    seed: int | None = None
    style: str = "none"
    negative_prompt: str | None = None
    strength: float = 0.6
    source: str = "imagine"
    mask_sent: bool = False  # an upload came with a mask (checked before it is decoded)


def new_image_id() -> str:
    """A public id for an image: unguessable, so a leaked id does not enumerate others."""
    return "img_" + secrets.token_urlsafe(12)


class ImageService:
    """Imagine, Reimagine, galleries and version trees over one image engine."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        backend: ImageBackend | None,
        *,
        provenance: Callable[[], Provenance],
        guarded: GuardedText,
        quotas: Quotas,
        blobs: BlobStore,
        nsfw: NsfwCheck | None,
        on_outcome: Callable[[str, str], None] | None = None,
    ) -> None:
        self.sessions = sessions
        self.settings = settings.images
        self.backend = backend
        self.provenance = provenance
        self.guarded = guarded
        self.quotas = quotas
        self.blobs = blobs
        self.nsfw = nsfw
        self.on_outcome = on_outcome or (lambda source, outcome: None)
        self.working = Bounded(
            "Image generation",
            concurrency=self.settings.concurrency,
            max_waiting=self.settings.max_waiting,
            retry_after_s=settings.text.retry_after_s,
            setting="images.concurrency + images.max_waiting",
        )

    # ---------------------------------------------------------------- checks

    def engine(self) -> ImageBackend:
        """The image engine, or a 503 that names the settings when none is configured."""
        if self.backend is None:
            raise ImagesNotConfigured()
        return self.backend

    def check_prompt(self, prompt: str) -> str:
        """The prompt stripped; 413 over ``images.max_prompt_chars``, 422 when empty."""
        prompt = prompt.strip()
        if not prompt:
            raise InvalidField("The prompt is empty. Say what to picture.", "prompt")
        limit = self.settings.max_prompt_chars
        if len(prompt) > limit:
            raise PayloadTooLarge(
                f"The prompt is {len(prompt)} characters; the limit is {limit} "
                "(images.max_prompt_chars). Shorten it."
            )
        return prompt

    def size_of(self, text: str | None) -> Size:
        """The size asked for (or the default), checked against what the engine makes."""
        size = Size.parse(text or self.settings.default_size)
        self.engine().check_size(size)
        return size

    def nearest_size(self, image: Image.Image) -> Size:
        """The allowed size (images.sizes, as the engine makes them) whose shape is nearest the
        image's: remixes never run at an uploaded image's own size."""
        sizes = self.engine().sizes
        ratio = image.width / max(1, image.height)
        default = Size.parse(self.settings.default_size)
        return min(
            sizes,
            key=lambda s: (abs(math.log((s.width / s.height) / ratio)), s != default),
        )

    def _check_n(self, n: int) -> None:
        if not 1 <= n <= self.settings.max_n:
            raise InvalidField(
                f"n is {n}; ask for 1 to {self.settings.max_n} images (images.max_n).", "n"
            )

    def _screen(self, ask: Ask, user: User | None, group_id: int | None) -> None:
        context = Context(
            feature="imagine",
            user_id=user.id if user else None,
            role=user.role if user else None,
            group_id=group_id,
        )
        text = ask.prompt if not ask.negative_prompt else f"{ask.prompt}\n{ask.negative_prompt}"
        self.guarded.screen([Message("user", text)], context)

    # ---------------------------------------------------------------- the single path

    def make(
        self,
        user: User | None,
        ask: Ask,
        *,
        group: Group | None = None,
        source_image: Image.Image | None = None,
        parent: ImageRow | None = None,
        mask: Image.Image | None = None,
        upload: Callable[[], tuple[Image.Image, Image.Image | None]] | None = None,
    ) -> list[Made]:
        """Make, check, mark and store images for ``ask``: a remix of ``source_image`` (a
        stored ``parent``), or of an ``upload`` (decoded only once admitted to the engine's
        queue, as the source and its mask), new images otherwise."""
        engine = self.engine()
        prompt = self.check_prompt(ask.prompt)
        ask = replace(ask, prompt=prompt)
        self._check_n(ask.n)
        if ask.size is not None:
            engine.check_size(ask.size)
        if mask is not None and not engine.supports_mask:
            raise InvalidField(f"This image engine ({engine.model_id}) takes no masks.", "mask")
        remix = source_image is not None or upload is not None
        if upload is not None and not engine.supports_mask and ask.mask_sent:
            raise InvalidField(f"This image engine ({engine.model_id}) takes no masks.", "mask")
        if remix and not engine.supports_edit:
            raise InvalidField(f"This image engine ({engine.model_id}) cannot remix.", "image")
        group_id = group.id if group else None
        self._screen(ask, user, group_id)
        user_id = user.id if user else None
        role = user.role if user else None
        self.quotas.before_images(
            user_id,
            role,
            group_id,
            ask.n,
            user_limit=self.settings.user_images_per_day,
            group_limit=self.settings.group_images_per_day,
        )
        seed = ask.seed if ask.seed is not None else secrets.randbelow(MAX_SEED - 1024)
        styled = prompt + (f", {STYLES[ask.style]}" if STYLES.get(ask.style) else "")

        def work() -> list[Made]:
            source, source_mask = source_image, mask
            if upload is not None:  # decoded here, behind the queue: never more at once
                source, source_mask = upload()
            # a remix is made at an allowed size: the one asked for, or the allowed size
            # nearest the source's shape (never the upload's own size)
            size = ask.size or (self.nearest_size(source) if source is not None else None)
            pictures: list[tuple[Image.Image, int]] = []
            for i in range(ask.n):  # one seed per image: each one can be made again alone
                image_seed = min(seed + i, MAX_SEED)
                if source is None:
                    size = ask.size or self.size_of(None)
                    made = engine.generate(
                        styled,
                        size=size,
                        n=1,
                        seed=image_seed,
                        negative_prompt=ask.negative_prompt or None,
                    )
                else:
                    made = engine.edit(
                        source,
                        styled,
                        strength=ask.strength,
                        mask=source_mask,
                        seed=image_seed,
                        n=1,
                        size=size,
                    )
                pictures.extend((picture, image_seed) for picture in made[:1])
            return self._finish(pictures, user, ask, group_id=group_id, parent=parent)

        try:
            results = self.working.run(work)
        except Exception as exc:
            self.quotas.release_images(user_id, role, group_id, ask.n)
            self.on_outcome(ask.source, type(exc).__name__)
            raise
        if len(results) < ask.n:
            self.quotas.release_images(user_id, role, group_id, ask.n - len(results))
        self.on_outcome(ask.source, "made")
        return results

    def _finish(
        self,
        pictures: list[tuple[Image.Image, int]],
        user: User | None,
        ask: Ask,
        *,
        group_id: int | None,
        parent: ImageRow | None,
    ) -> list[Made]:
        scores: list[float | None] = [None] * len(pictures)
        if self.nsfw is not None:
            scores = list(self.nsfw.scores([p for p, _ in pictures]))
        kept = []
        for (picture, seed), score in zip(pictures, scores, strict=True):
            if score is not None and self.nsfw is not None and self.nsfw.blocked(score):
                self._audit_withheld(user, group_id, ask, score)
                continue
            kept.append((picture, seed, score))
        if not kept:
            raise ContentBlocked(
                "The image made for this prompt was withheld by the image safety check "
                "(sexual content, S12). Change the prompt and try again.",
                ["S12"],
            )
        provenance = self.provenance()
        engine = self.engine()
        payloads: list[str] = []
        digests: list[str] = []
        made: list[Made] = []
        try:
            rows = []
            for picture, seed, score in kept:
                marked, record = provenance.mark(
                    picture,
                    source=ask.source,
                    user_id=user.id if user else None,
                    model=engine.model_id,
                    prompt=ask.prompt,
                    parent_payload=parent.payload if parent else None,
                )
                payloads.append(record.payload)
                png = encode_image(marked)
                digests.append(self.blobs.put(png))
                row = ImageRow(
                    external_id=new_image_id(),
                    user_id=user.id if user else None,
                    group_id=group_id,
                    parent_id=parent.id if parent else None,
                    root_id=(parent.root_id or parent.id) if parent else None,
                    blob=digests[-1],
                    width=marked.width,
                    height=marked.height,
                    prompt=ask.prompt,
                    negative_prompt=ask.negative_prompt or "",
                    style=ask.style,
                    seed=seed,
                    strength=ask.strength if parent is not None else None,
                    model=engine.model_id,
                    source=ask.source,
                    payload=record.payload,
                    nsfw_score=score,
                )
                rows.append((row, png))
            with self.sessions() as db:
                for row, _ in rows:
                    db.add(row)
                db.flush()
                for row, _ in rows:
                    if row.root_id is None:
                        row.root_id = row.id  # a new image is the root of its own tree
                db.commit()
                for row, png in rows:
                    db.refresh(row)
                    db.expunge(row)
                    made.append(Made(row, png))
        except BaseException:
            provenance.forget(payloads)
            for digest in digests:
                # a store that is down now: the orphan sweep removes the file later
                with contextlib.suppress(BlobStoreUnavailable):
                    self.blobs.delete(digest)
            raise
        return made

    def _audit_withheld(
        self, user: User | None, group_id: int | None, ask: Ask, score: float
    ) -> None:
        decision = Decision(
            allowed=False,
            hazards=("S12",),
            reason=f"image withheld by the output check (Open-NSFW score {score:.2f})",
        )
        self.guarded.pipeline.record(
            SafetyEvent(
                "output",
                "imagine",
                user.id if user else None,
                decision,
                ask.prompt[:200],
                group_id,
            )
        )

    # ---------------------------------------------------------------- features

    def imagine(self, db: Session, user: User, body: ImagineRequest, *, source: str) -> list[Made]:
        """``POST /api/imagine``: new images, in a group when ``group_id`` names one of the
        member's groups (404 otherwise)."""
        group = access.group_visible_to(db, user, body.group_id) if body.group_id else None
        size = self.size_of(body.size)
        db.commit()  # no connection held while the engine works
        ask = Ask(
            prompt=body.prompt,
            size=size,
            n=body.n,
            seed=body.seed,
            style=body.style,
            negative_prompt=body.negative_prompt,
            source=source,
        )
        return self.make(user, ask, group=group)

    def reimagine(self, db: Session, user: User, image_id: str, body: ReimagineRequest) -> Made:
        """Remix a version the member can see (404 otherwise) into a new version of its tree,
        in the same group."""
        parent = access.image_visible_to(db, user, image_id)
        group = db.get(Group, parent.group_id) if parent.group_id else None
        db.expunge(parent)
        db.commit()
        source = Image.open(io.BytesIO(self.blobs.get(parent.blob))).convert("RGB")
        ask = Ask(
            prompt=body.prompt,
            seed=body.seed,
            style=body.style,
            strength=body.strength,
            source="reimagine",
        )
        return self.make(user, ask, group=group, source_image=source, parent=parent)[0]

    def edit_upload(
        self,
        user: User,
        data: bytes,
        ask: Ask,
        *,
        mask: bytes | None = None,
    ) -> list[Made]:
        """``/v1/images/edits``: remix an uploaded image (the upload limits apply)."""
        limits = self.provenance().limits

        def decode() -> tuple[Image.Image, Image.Image | None]:
            image = load_image(data, limits).convert("RGB")
            return image, load_image(mask, limits) if mask is not None else None

        return self.make(user, replace(ask, mask_sent=mask is not None), upload=decode)

    def gallery(
        self,
        db: Session,
        user: User,
        *,
        group: Group | None = None,
        limit: int = 20,
        before: str | None = None,
    ) -> tuple[list[ImageRow], str | None]:
        """The member's own images, or a group's (newest first), a page at a time."""
        query = select(ImageRow)
        if group is not None:
            query = query.where(ImageRow.group_id == group.id)
        else:
            query = query.where(ImageRow.user_id == user.id)
        if before:
            cursor = db.scalar(select(ImageRow.id).where(ImageRow.external_id == before))
            if cursor is None:
                raise InvalidField(f"?before={before} is not an image id from a page.", "before")
            query = query.where(ImageRow.id < cursor)
        rows = list(db.scalars(query.order_by(ImageRow.id.desc()).limit(limit + 1)))
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, (rows[-1].external_id if more and rows else None)

    def versions(self, db: Session, user: User, image_id: str) -> VersionTree:
        """The version tree of an image the member can see."""
        image = access.image_visible_to(db, user, image_id)
        root_id = image.root_id or image.id
        rows = list(
            db.scalars(
                select(ImageRow)
                .where(ImageRow.root_id == root_id, access.visible_images(user))
                .order_by(ImageRow.id)
                .limit(self.settings.max_versions)
            )
        )
        names = public_names(db, rows)
        nodes = {row.id: VersionNode(**to_out(row, names).model_dump()) for row in rows}
        top: list[VersionNode] = []
        for row in rows:
            node = nodes[row.id]
            if row.parent_id in nodes:
                nodes[row.parent_id].children.append(node)
            else:
                top.append(node)
        root = db.scalar(select(ImageRow.external_id).where(ImageRow.id == root_id))
        return VersionTree(root_id=root or image.external_id, count=len(rows), tree=top)

    def delete(self, db: Session, user: User, image_id: str) -> None:
        """Delete one version (its author, a moderator of its group, an admin): its file, its
        row; versions remixed from it hang from its parent instead."""
        image = access.image_of_author(db, user, image_id)
        db.execute(
            update(ImageRow).where(ImageRow.parent_id == image.id).values(parent_id=image.parent_id)
        )
        blob = image.blob
        db.delete(image)
        db.commit()
        self.forget_blobs(db, [blob])

    def forget_blobs(self, db: Session, digests: list[str]) -> None:
        """Delete the files no image row uses any more (after their rows were deleted)."""
        if not digests:
            return
        used = set(db.scalars(select(ImageRow.blob).where(ImageRow.blob.in_(digests))))
        for digest in set(digests) - used:
            self.blobs.delete(digest)


def sweep_orphans(
    sessions: sessionmaker[Session], blobs: BlobStore, grace_s: float, batch: int = 500
) -> int:
    """Delete the image files no row uses that are older than ``grace_s`` (a crash between
    writing the file and storing its row; see ``storage/blobs.py``); the number deleted.
    Reads the files in batches, one query per batch."""
    deleted = 0
    chunk: list[str] = []

    def settle() -> int:
        with sessions() as db:
            used = set(db.scalars(select(ImageRow.blob).where(ImageRow.blob.in_(chunk))))
        gone = [d for d in chunk if d not in used]
        for digest in gone:
            blobs.delete(digest, older_than_s=grace_s)
        chunk.clear()
        return len(gone)

    for digest in blobs.older_than(grace_s):
        chunk.append(digest)
        if len(chunk) >= batch:
            deleted += settle()
    if chunk:
        deleted += settle()
    return deleted


def public_names(db: Session, rows: list[ImageRow]) -> dict[str, Any]:
    """The external ids of the users, groups and images ``rows`` point at (one query each)."""
    users = {r.user_id for r in rows if r.user_id}
    groups = {r.group_id for r in rows if r.group_id}
    images = {i for r in rows for i in (r.parent_id, r.root_id) if i}
    people = db.execute(
        select(User.id, User.external_id, User.name).where(User.id.in_(users))
    ).all()
    return {
        "users": {uid: external or name for uid, external, name in people},
        "groups": {
            gid: external
            for gid, external in db.execute(
                select(Group.id, Group.external_id).where(Group.id.in_(groups))
            ).all()
        },
        "images": {
            iid: external
            for iid, external in db.execute(
                select(ImageRow.id, ImageRow.external_id).where(ImageRow.id.in_(images))
            ).all()
        },
    }


def to_out(row: ImageRow, names: dict[str, Any]) -> ImageOut:
    """The public shape of an image row."""
    return ImageOut(
        id=row.external_id,
        url=f"/api/images/{row.external_id}/file",
        width=row.width,
        height=row.height,
        prompt=row.prompt,
        negative_prompt=row.negative_prompt,
        style=row.style,
        seed=row.seed,
        strength=row.strength,
        model=row.model,
        source=row.source,
        group_id=names["groups"].get(row.group_id),
        parent_id=names["images"].get(row.parent_id),
        root_id=names["images"].get(row.root_id),
        author=names["users"].get(row.user_id),
        created_at=row.created_at,
    )


def outs(db: Session, rows: list[ImageRow]) -> list[ImageOut]:
    """Rows in their public shape."""
    names = public_names(db, rows)
    return [to_out(row, names) for row in rows]
