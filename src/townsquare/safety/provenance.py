"""Provenance: mark generated images, keep a registry of the marks, and look images up.

``Provenance.mark`` hides a fresh random payload in an image and records which generation it
came from; ``Provenance.detect`` reads a payload back and finds its record. Image decoding is
done here too, with every limit explicit: only PNG, JPEG and WebP, a byte limit (enforced by
the HTTP layer), a pixel limit checked from the header before any pixel is decoded (so
decompression bombs are refused cheaply) and a minimum size.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import io
import os
import secrets
import tempfile
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from townsquare.admission import Bounded
from townsquare.errors import ConfigurationError, InvalidImage, PayloadTooLarge, TownsquareError
from townsquare.safety import watermark
from townsquare.settings import Settings, WatermarkSettings
from townsquare.storage.social_tables import ImageRow, ProvenanceRecord
from townsquare.storage.tables import DeploymentKey

FORMATS = ("PNG", "JPEG", "WEBP")
KEY_FILE = "watermark.key"


def resolve_key(settings: Settings, sessions: sessionmaker[Session] | None = None) -> bytes:
    """The watermark key: the setting, or a random one kept in ``<data_dir>/watermark.key``.

    With ``sessions``, the key's fingerprint is checked against the one the database records
    (the first replica to start records its own): a replica whose key differs, or that would
    mint a new one while others already mark images, refuses to start (``ConfigurationError``)
    instead of marking images no other replica can read or signing URLs they refuse.
    """
    if settings.watermark.key is not None:
        secret = settings.watermark.key.get_secret_value()
        if len(secret) < 16:
            raise ConfigurationError(
                "watermark.key is shorter than 16 characters. Use a long random secret, e.g. "
                "the output of `python -c 'import secrets; print(secrets.token_hex(32))'`."
            )
        key = hashlib.sha256(secret.encode()).digest()
        if sessions is not None:
            _agree(sessions, key, "watermark.key (TOWNSQUARE_WATERMARK__KEY)")
        return key
    path = Path(settings.data_dir) / KEY_FILE
    created = False
    if not path.exists():
        known = _recorded(sessions) if sessions is not None else None
        # a process of the same data directory may have made (then recorded) it meanwhile
        if known is not None and not path.exists():
            raise ConfigurationError(
                f"Other replicas already mark images with a watermark key (fingerprint "
                f"{known[:12]}, recorded in the database), and this one has none: {path} is "
                "missing and watermark.key is unset. Give every replica the same key: set "
                "TOWNSQUARE_WATERMARK__KEY from the deployment's Secret (docs/scaling.md), or "
                "copy watermark.key from the data directory that made it."
            )
        created = known is None and _create_key_file(path)
    secret = path.read_text().strip()
    if len(secret) < KEY_HEX_CHARS:
        raise ConfigurationError(
            f"{path} holds {len(secret)} characters; a watermark key needs {KEY_HEX_CHARS} "
            "(it may have been cut short by a crash). If no image was marked with it yet, "
            "delete the file and start again; otherwise restore it from a backup."
        )
    key = hashlib.sha256(secret.encode()).digest()
    if sessions is not None:
        try:
            _agree(sessions, key, str(path))
        except ConfigurationError:
            if created:  # made just now and never used: leave nothing behind
                path.unlink(missing_ok=True)
            raise
    return key


KEY_HEX_CHARS = 64
KEY_NAME = "watermark"


def fingerprint(key: bytes) -> str:
    """A name for the key that reveals nothing of it (kept in ``deployment_keys``)."""
    return hashlib.sha256(b"townsquare key fingerprint\x00" + key).hexdigest()


def _recorded(sessions: sessionmaker[Session]) -> str | None:
    with sessions() as db:
        return db.scalar(select(DeploymentKey.fingerprint).where(DeploymentKey.name == KEY_NAME))


def _agree(sessions: sessionmaker[Session], key: bytes, source: str) -> None:
    """Record the key's fingerprint if none is; refuse a key that differs from the record."""
    mine = fingerprint(key)
    known = _recorded(sessions)
    if known is None:
        try:
            with sessions() as db:
                db.add(DeploymentKey(name=KEY_NAME, fingerprint=mine))
                db.commit()
            return
        except IntegrityError:  # another replica recorded its key at the same moment
            known = _recorded(sessions)
    if known != mine:
        raise ConfigurationError(
            f"This replica's watermark key (from {source}, fingerprint {mine[:12]}) is not "
            f"the one the other replicas use (fingerprint {str(known)[:12]}, recorded in the "
            "database). Images marked by one could not be read by the other, and signed image "
            "links would fail. Set the same TOWNSQUARE_WATERMARK__KEY on every replica from "
            "the deployment's Secret. To change the key on purpose (marks made under the old "
            "one can no longer be read), delete the row 'watermark' of deployment_keys first."
        )


def _create_key_file(path: Path) -> bool:
    """Create the key file whole or not at all: written to a private temporary file first,
    then linked into place (``link`` fails if the name exists), so a process starting at the
    same moment reads either no file or the complete key, never an empty one. Whether this
    call made it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".watermark-key-")
    try:
        with os.fdopen(fd, "w") as handle:  # mkstemp makes it 0600
            handle.write(secrets.token_hex(KEY_HEX_CHARS // 2) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, path)
    except FileExistsError:
        return False  # another process made it first: use theirs
    finally:
        os.unlink(tmp)
    return True


@cache
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or None on other C libraries."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def release_freed_memory() -> None:
    """Hand freed memory back to the system. A decoded upload takes tens of MB in Pillow
    blocks; glibc keeps such freed blocks in per-thread arenas, so without this a burst of
    large uploads leaves the process hundreds of MB bigger for good (bench/load.py)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def load_image(data: bytes, limits: WatermarkSettings) -> Image.Image:
    """Decode an uploaded PNG, JPEG or WebP, refusing what the watermark cannot take."""
    if len(data) > limits.max_upload_bytes:
        raise PayloadTooLarge(
            f"The image is {len(data)} bytes; the limit is {limits.max_upload_bytes} "
            "(watermark.max_upload_bytes). Send a smaller file."
        )
    try:
        with warnings.catch_warnings():
            # the pixel limit below is ours (watermark.max_pixels), checked before decoding
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:
        raise PayloadTooLarge(
            f"The image declares more pixels than the limit of {limits.max_pixels} "
            "(watermark.max_pixels). Resize it first."
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise InvalidImage(
            "The upload is not a PNG, JPEG or WebP image. Send the image file itself."
        ) from None
    width, height = image.size
    if width * height > limits.max_pixels:
        raise PayloadTooLarge(
            f"The image is {width}x{height} = {width * height} pixels; the limit is "
            f"{limits.max_pixels} (watermark.max_pixels). Resize it first."
        )
    if max(width, height) < limits.min_side:
        raise InvalidImage(
            f"The image is {width}x{height} pixels; at least {limits.min_side} pixels on the "
            "long side are needed (watermark.min_side). Send the original, not a thumbnail."
        )
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidImage(
            f"The image could not be decoded ({exc}); the file may be truncated or corrupt. "
            "Send the complete file."
        ) from None
    return image


def encode_image(image: Image.Image, fmt: str = "PNG", quality: int = 95) -> bytes:
    """Image file bytes (PNG by default: lossless, so the mark is intact)."""
    buffer = io.BytesIO()
    fmt = fmt.upper()
    if fmt == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    options: dict[str, Any] = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def prompt_hash(prompt: str) -> str:
    """SHA-256 of a prompt, stored instead of the prompt itself in provenance records."""
    return hashlib.sha256(prompt.encode()).hexdigest()


@dataclass(frozen=True)
class Found:
    """What a provenance lookup learnt: the detection and, if registered, its record."""

    detection: watermark.Detection
    record: ProvenanceRecord | None
    # the stored version this payload belongs to, and the version it was remixed from
    image: dict[str, Any] | None = None

    @property
    def made_here(self) -> bool:
        """True when a mark was found and its payload is in this registry."""
        return self.detection.found and self.record is not None

    def public(self) -> dict[str, Any]:
        """What anyone may see: whether it was made here, and how sure the detector is."""
        return {
            "made_here": self.made_here,
            "watermark_found": self.detection.found,
            "p_value": self.detection.p_value,
            "bit_errors": self.detection.bit_errors,
            "coded_bits": self.detection.coded_bits,
        }

    def full(self) -> dict[str, Any]:
        """The public answer plus the generation record (for admins)."""
        answer = self.public()
        record = self.record
        answer["record"] = (
            None
            if record is None
            else {
                "payload": record.payload,
                "created_at": record.created_at.isoformat(),
                "source": record.source,
                "generation_id": record.generation_id,
                "user_id": record.user_id,
                "model": record.model,
                "prompt_sha256": record.prompt_hash,
                "parent_payload": record.parent_payload,
            }
        )
        answer["image"] = self.image
        return answer


class Provenance:
    """Marks images with registered payloads and looks marked images up."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.sessions = sessions
        self.limits = settings.watermark
        self.key = resolve_key(settings, sessions)
        self.detecting = Bounded(
            "Image checking",
            concurrency=self.limits.detect_concurrency,
            max_waiting=self.limits.detect_max_waiting,
            retry_after_s=settings.text.retry_after_s,
            setting="watermark.detect_concurrency + watermark.detect_max_waiting",
        )

    def mark(
        self,
        image: Image.Image,
        *,
        source: str,
        user_id: int | None = None,
        model: str = "",
        prompt: str = "",
        generation_id: int | None = None,
        parent_payload: str | None = None,
    ) -> tuple[Image.Image, ProvenanceRecord]:
        """Embed a fresh payload and register it; returns the marked image and its record.

        ``parent_payload`` links a remix to the image it was made from. The mark is read back
        before this returns (``watermark.embed(verify=True)``); an image whose mark cannot be
        found is refused (``WatermarkError``) and its record removed."""
        watermark.check_size(
            *image.size, min_side=self.limits.min_side, max_pixels=self.limits.max_pixels
        )  # before a payload is registered for an image that cannot be marked
        record = self._register(
            source=source,
            user_id=user_id,
            model=model,
            prompt_hash=prompt_hash(prompt) if prompt else "",
            generation_id=generation_id,
            parent_payload=parent_payload,
        )
        try:
            marked = watermark.embed(
                image,
                int(record.payload, 16),
                key=self.key,
                psnr=self.limits.psnr,
                min_side=self.limits.min_side,
                max_pixels=self.limits.max_pixels,
            )
        except BaseException:
            self.forget([record.payload])
            raise
        return marked, record

    def forget(self, payloads: list[str]) -> None:
        """Remove registry records of images that were never handed out (a failed request)."""
        if payloads:
            with self.sessions() as db:
                db.execute(delete(ProvenanceRecord).where(ProvenanceRecord.payload.in_(payloads)))
                db.commit()

    def _register(self, **fields: Any) -> ProvenanceRecord:
        for _ in range(8):
            payload = secrets.randbits(watermark.PAYLOAD_BITS)
            with self.sessions() as db:
                record = ProvenanceRecord(payload=watermark.payload_hex(payload), **fields)
                db.add(record)
                try:
                    db.commit()
                except IntegrityError:
                    db.rollback()
                    continue  # that payload is taken (a 2^-48 event); draw another
                db.refresh(record)
                db.expunge(record)
                return record
        raise TownsquareError("Could not draw an unused watermark payload; check the database.")

    def detect_upload(self, data: bytes) -> Found:
        """Decode and check an uploaded image, at most ``detect_concurrency`` at a time (call
        from a worker thread); ``Busy`` when too many wait."""
        try:
            return self.detecting.run(lambda: self.detect(load_image(data, self.limits)))
        finally:
            release_freed_memory()

    def detect(self, image: Image.Image) -> Found:
        """Read the mark (if any) and find its registry record."""
        detection = watermark.detect(image, key=self.key, max_pixels=self.limits.max_pixels)
        record = None
        if detection.found and detection.payload is not None:
            hex_payload = watermark.payload_hex(detection.payload)
            with self.sessions() as db:
                record = db.scalar(
                    select(ProvenanceRecord).where(ProvenanceRecord.payload == hex_payload)
                )
                if record is not None:
                    db.expunge(record)
                    return Found(detection, record, _lineage(db, hex_payload))
        return Found(detection, record)


def _lineage(db: Session, payload: str) -> dict[str, Any] | None:
    """The stored version a payload belongs to and the version it was remixed from."""
    image = db.scalar(select(ImageRow).where(ImageRow.payload == payload))
    if image is None:
        return None
    ids = {i for i in (image.parent_id, image.root_id) if i is not None}
    rows = db.execute(select(ImageRow.id, ImageRow.external_id).where(ImageRow.id.in_(ids)))
    names = {image_id: external for image_id, external in rows.all()}
    return {
        "id": image.external_id,
        "source": image.source,
        "parent_id": names.get(image.parent_id) if image.parent_id else None,
        "root_id": names.get(image.root_id) if image.root_id else None,
    }
