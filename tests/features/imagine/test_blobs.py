"""The content-addressed blob store."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from townsquare.errors import NotFound
from townsquare.storage.blobs import LocalBlobs


def test_blobs_are_named_by_their_content_and_stored_once(tmp_path: Path) -> None:
    blobs = LocalBlobs(tmp_path / "blobs")
    digest = blobs.put(b"a picture")
    assert digest == hashlib.sha256(b"a picture").hexdigest()
    assert blobs.put(b"a picture") == digest  # the same bytes: the same single file
    assert blobs.get(digest) == b"a picture" and blobs.exists(digest)
    files = [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
    assert files == [tmp_path / "blobs" / digest[:2] / digest]
    assert oct(os.stat(tmp_path / "blobs").st_mode & 0o777) == "0o700"
    blobs.delete(digest)
    blobs.delete(digest)  # already gone: no error
    assert not blobs.exists(digest)
    with pytest.raises(NotFound):
        blobs.get(digest)


def test_names_that_are_not_digests_never_reach_the_file_system(tmp_path: Path) -> None:
    blobs = LocalBlobs(tmp_path / "blobs")
    for bad in ("../../etc/passwd", "ab", "A" * 64, ""):
        with pytest.raises(NotFound):
            blobs.get(bad)


def test_a_failed_write_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs = LocalBlobs(tmp_path / "blobs")

    def broken_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        blobs.put(b"half a picture")
    assert [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == []
