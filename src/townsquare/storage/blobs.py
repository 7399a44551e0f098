"""Content-addressed blob storage for image files.

A blob is named by the SHA-256 of its bytes, so the same file is stored once and a name can
be checked against its content. ``BlobStore`` is the interface; ``LocalBlobs`` keeps blobs in a
directory (``<data_dir>/blobs`` by default). An object store (S3, GCS, MinIO) fits the same
methods: put under the digest as key, get, delete, exists, and list the old ones.

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
from pathlib import Path

from typing_extensions import override

from townsquare.errors import NotFound

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
