"""Content-addressed blob storage for image files.

A blob is named by the SHA-256 of its bytes, so the same file is stored once and a name can
be checked against its content. ``BlobStore`` is the interface, chosen by
``images.blob_store`` (``open_blobs``):

- ``LocalBlobs`` keeps blobs in a directory (``<data_dir>/blobs`` by default): one replica, or
  replicas that share one volume;
- ``S3Blobs`` in an S3-compatible object store (AWS S3, MinIO, SeaweedFS, Ceph, R2) through
  boto3, with presigned GETs for redirects;
- ``DatabaseBlobs`` as rows of the ``blobs`` table: several replicas without an object store.

A store that does not answer raises ``BlobStoreUnavailable`` (503, naming the store).

A file is written before its row is stored, so a crash between the two leaves a file no row
uses: ``features/imagine/service.py``'s ``sweep_orphans`` removes such files once they are
older than ``images.orphan_grace_s`` (writing a blob again refreshes its age).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from typing_extensions import override

from townsquare.errors import BlobStoreUnavailable, ConfigurationError, NotFound
from townsquare.storage.tables import BlobRow, utcnow

if TYPE_CHECKING:
    from townsquare.settings import ImageSettings, S3Settings

DIGEST = re.compile(r"^[0-9a-f]{64}$")


def digest_of(data: bytes) -> str:
    """The name a blob is stored under: the hex SHA-256 of its bytes."""
    return hashlib.sha256(data).hexdigest()


class BlobStore(ABC):
    """Immutable blobs under the SHA-256 of their content."""

    @abstractmethod
    def put(self, data: bytes) -> str:
        """Store ``data`` (once, whole or not at all); returns its digest."""

    @abstractmethod
    def get(self, digest: str) -> bytes:
        """The blob's bytes; ``NotFound`` when it is not stored."""

    @abstractmethod
    def delete(self, digest: str, *, older_than_s: float | None = None) -> None:
        """Remove the blob (no error when it is already gone); with ``older_than_s``, only if
        it was not written (nor written again) for that long."""

    @abstractmethod
    def exists(self, digest: str) -> bool:
        """Whether the blob is stored."""

    @abstractmethod
    def older_than(self, seconds: float) -> Iterator[str]:
        """Blobs not written (nor written again) for ``seconds``; partial writes that old
        left by a crash are removed on the way."""

    def url(self, digest: str, ttl_s: int) -> str | None:
        """A URL that serves the blob for ``ttl_s`` seconds without townsquare (a presigned
        GET), or None where the store has none."""
        return None


class LocalBlobs(BlobStore):
    """Blobs as files ``root/ab/abcdef...``: written to a temporary file, synced, then renamed
    into place, so a reader never sees half a blob and a crash leaves no partial file."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, digest: str) -> Path:
        if not DIGEST.match(digest):
            raise NotFound(f"'{digest}' is not a blob name.")
        return self.root / digest[:2] / digest

    @override
    def put(self, data: bytes) -> str:
        digest = digest_of(data)
        path = self._path(digest)
        if path.exists():
            # written again: a sweep of files no row uses spares it while its row is stored
            with contextlib.suppress(FileNotFoundError):
                os.utime(path)
            if path.exists():
                return digest
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest

    @override
    def get(self, digest: str) -> bytes:
        try:
            return self._path(digest).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"There is no stored image file {digest}.") from None

    @override
    def delete(self, digest: str, *, older_than_s: float | None = None) -> None:
        path = self._path(digest)
        if older_than_s is not None:
            try:
                if path.stat().st_mtime >= time.time() - older_than_s:
                    return  # written again since it was found old: its row may be coming
            except FileNotFoundError:
                return
        path.unlink(missing_ok=True)

    @override
    def exists(self, digest: str) -> bool:
        return self._path(digest).is_file()

    @override
    def older_than(self, seconds: float) -> Iterator[str]:
        cutoff = time.time() - seconds
        for folder in self.root.iterdir():
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                try:
                    old = path.stat().st_mtime < cutoff
                except FileNotFoundError:
                    continue
                if not old:
                    continue
                if path.name.startswith(".tmp-"):
                    path.unlink(missing_ok=True)
                elif DIGEST.match(path.name):
                    yield path.name


class S3Blobs(BlobStore):
    """Blobs as objects ``<prefix><ab>/<abcdef...>`` in an S3-compatible bucket. An object PUT
    is atomic, so a reader never sees half a blob; writing a blob again refreshes its
    LastModified, which the orphan sweep reads."""

    def __init__(self, settings: S3Settings, *, client: Any = None) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:  # pragma: no cover - the 's3' extra
            raise ConfigurationError(
                "images.blob_store is 's3' but boto3 is not installed: pip install "
                "'townsquare[s3]'."
            ) from None
        self.bucket = settings.bucket
        self.prefix = settings.prefix
        self.name = f"the S3 store {settings.endpoint_url or 'AWS'} (bucket {self.bucket})"
        secret = settings.secret_access_key
        self.client = client or boto3.client(
            "s3",
            endpoint_url=settings.endpoint_url,
            region_name=settings.region,
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            config=Config(
                connect_timeout=settings.timeout_s,
                read_timeout=settings.timeout_s,
                retries={"max_attempts": 2, "mode": "standard"},
                signature_version="s3v4",
                s3={"addressing_style": "path"},
            ),
        )

    def _key(self, digest: str) -> str:
        if not DIGEST.match(digest):
            raise NotFound(f"'{digest}' is not a blob name.")
        return f"{self.prefix}{digest[:2]}/{digest}"

    def _call(self, method: str, **params: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, method)(Bucket=self.bucket, **params)
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                raise NotFound("There is no stored image file with that name.") from None
            raise BlobStoreUnavailable(
                f"Image files are kept in {self.name}, which refused the request ({code}: "
                f"{error.response.get('Error', {}).get('Message', '')}). Check the bucket "
                "and its credentials (images.s3.*)."
            ) from None
        except BotoCoreError as error:
            raise BlobStoreUnavailable(
                f"Image files are kept in {self.name}, which is not answering ({error}). "
                "Try again in a minute; an operator checks the store."
            ) from None

    def make_bucket(self) -> bool:
        """Create the bucket if it is missing; whether it was created."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
            return False
        except ClientError:
            self._call("create_bucket")
            return True

    @override
    def put(self, data: bytes) -> str:
        digest = digest_of(data)
        self._call("put_object", Key=self._key(digest), Body=data, ContentType="image/png")
        return digest

    @override
    def get(self, digest: str) -> bytes:
        try:
            body = self._call("get_object", Key=self._key(digest))["Body"]
        except NotFound:
            raise NotFound(f"There is no stored image file {digest}.") from None
        try:
            return bytes(body.read())
        except Exception as error:  # the connection dropped mid-body
            raise BlobStoreUnavailable(
                f"Reading an image file from {self.name} failed half-way ({error}). Try again."
            ) from None
        finally:
            body.close()

    @override
    def delete(self, digest: str, *, older_than_s: float | None = None) -> None:
        key = self._key(digest)
        if older_than_s is not None:
            try:
                head = self._call("head_object", Key=key)
            except NotFound:
                return
            if head["LastModified"].timestamp() >= time.time() - older_than_s:
                return  # written again since it was found old: its row may be coming
        self._call("delete_object", Key=key)

    @override
    def exists(self, digest: str) -> bool:
        try:
            self._call("head_object", Key=self._key(digest))
        except NotFound:
            return False
        return True

    @override
    def older_than(self, seconds: float) -> Iterator[str]:
        cutoff = time.time() - seconds
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = self._call("list_objects_v2", Prefix=self.prefix, MaxKeys=1000, **extra)
            for item in page.get("Contents", []):
                name = item["Key"].rpartition("/")[2]
                if DIGEST.match(name) and item["LastModified"].timestamp() < cutoff:
                    yield name
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    @override
    def url(self, digest: str, ttl_s: int) -> str | None:
        return str(
            self.client.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.bucket,
                    "Key": self._key(digest),
                    "ResponseContentType": "image/png",
                },
                ExpiresIn=ttl_s,
            )
        )


class DatabaseBlobs(BlobStore):
    """Blobs as rows of the ``blobs`` table: every replica reads what any wrote, with nothing
    to run beside the database. Fits small deployments (images of a few hundred KB); a
    bigger one keeps them in an object store."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    @staticmethod
    def _check(digest: str) -> None:
        if not DIGEST.match(digest):
            raise NotFound(f"'{digest}' is not a blob name.")

    @staticmethod
    def _down(error: Exception) -> BlobStoreUnavailable:
        kind = type(error).__name__
        return BlobStoreUnavailable(
            f"Image files are kept in the database, which is not answering ({kind}). Try "
            "again in a minute."
        )

    @override
    def put(self, data: bytes) -> str:
        digest = digest_of(data)
        try:
            with self.sessions() as db:
                refreshed = db.execute(
                    update(BlobRow).where(BlobRow.digest == digest).values(written_at=utcnow())
                )
                if not getattr(refreshed, "rowcount", 0):
                    db.add(BlobRow(digest=digest, data=data, written_at=utcnow()))
                try:
                    db.commit()
                except IntegrityError:  # another writer stored the same bytes first
                    db.rollback()
        except OperationalError as error:
            raise self._down(error) from None
        return digest

    @override
    def get(self, digest: str) -> bytes:
        self._check(digest)
        try:
            with self.sessions() as db:
                data = db.scalar(select(BlobRow.data).where(BlobRow.digest == digest))
        except OperationalError as error:
            raise self._down(error) from None
        if data is None:
            raise NotFound(f"There is no stored image file {digest}.")
        return bytes(data)

    @override
    def delete(self, digest: str, *, older_than_s: float | None = None) -> None:
        self._check(digest)
        query = delete(BlobRow).where(BlobRow.digest == digest)
        if older_than_s is not None:
            query = query.where(BlobRow.written_at < utcnow() - timedelta(seconds=older_than_s))
        try:
            with self.sessions() as db:
                db.execute(query)
                db.commit()
        except OperationalError as error:
            raise self._down(error) from None

    @override
    def exists(self, digest: str) -> bool:
        self._check(digest)
        with self.sessions() as db:
            return db.scalar(select(BlobRow.digest).where(BlobRow.digest == digest)) is not None

    @override
    def older_than(self, seconds: float) -> Iterator[str]:
        cutoff = utcnow() - timedelta(seconds=seconds)
        after = ""
        while True:  # by key, a page at a time: no cursor held open while the caller works
            with self.sessions() as db:
                page = list(
                    db.scalars(
                        select(BlobRow.digest)
                        .where(BlobRow.written_at < cutoff, BlobRow.digest > after)
                        .order_by(BlobRow.digest)
                        .limit(500)
                    )
                )
            yield from page
            if len(page) < 500:
                return
            after = page[-1]


def open_blobs(
    settings: ImageSettings, data_dir: Path, sessions: sessionmaker[Session]
) -> BlobStore:
    """The blob store ``images.blob_store`` names."""
    if settings.blob_store == "s3":
        return S3Blobs(settings.s3)
    if settings.blob_store == "database":
        return DatabaseBlobs(sessions)
    return LocalBlobs(settings.blob_dir or data_dir / "blobs")
