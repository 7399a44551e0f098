"""Every blob store keeps the same contract: local files, the database, and a real
S3-compatible object store (SeaweedFS, started once per session)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, make_settings
from tests.s3server import SeaweedS3
from townsquare.errors import BlobStoreUnavailable, NotFound
from townsquare.settings import S3Settings
from townsquare.storage.blobs import BlobStore, DatabaseBlobs, LocalBlobs, S3Blobs, open_blobs
from townsquare.storage.db import make_engine, make_sessions, migrate


def s3_store(server: SeaweedS3) -> S3Blobs:
    """A store in the session's bucket, under a prefix of its own."""
    settings = {**server.settings("townsquare"), "prefix": f"t{uuid.uuid4().hex[:12]}/"}
    store = S3Blobs(S3Settings(**settings))
    store.make_bucket()
    assert not store.make_bucket()  # there now: found, not made again
    return store


def test_init_makes_the_bucket_once(s3_server: SeaweedS3) -> None:
    store = S3Blobs(S3Settings(**s3_server.settings(f"made-{uuid.uuid4().hex[:8]}")))
    assert store.make_bucket() and not store.make_bucket()


@pytest.fixture(params=["local", "database", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "local":
        yield LocalBlobs(tmp_path / "blobs")
    elif request.param == "database":
        engine = make_engine(make_settings(tmp_path).resolved_database_url)
        migrate(engine)
        yield DatabaseBlobs(make_sessions(engine))
        engine.dispose()
    else:
        yield s3_store(request.getfixturevalue("s3_server"))


def test_every_store_names_blobs_by_content_and_keeps_them_whole(store: BlobStore) -> None:
    picture = b"\x89PNG a picture" * 1000
    digest = store.put(picture)
    assert digest == hashlib.sha256(picture).hexdigest()
    assert store.put(picture) == digest  # the same bytes: the same blob
    assert store.get(digest) == picture and store.exists(digest)
    other = store.put(b"another picture")
    store.delete(digest)
    store.delete(digest)  # already gone: no error
    assert not store.exists(digest) and store.get(other) == b"another picture"
    with pytest.raises(NotFound):
        store.get(digest)
    for bad in ("../../etc/passwd", "ab", "A" * 64, ""):
        with pytest.raises(NotFound):
            store.get(bad)


def test_every_store_lists_old_blobs_and_spares_young_ones(store: BlobStore) -> None:
    digests = {store.put(f"picture {i}".encode()) for i in range(3)}
    assert set(store.older_than(3600)) == set()  # all written just now
    assert set(store.older_than(-5)) == digests  # a cutoff in the future: all are "old"
    victim = sorted(digests)[0]
    store.delete(victim, older_than_s=3600)  # young: kept (its row may be on its way)
    assert store.exists(victim)
    store.delete(victim, older_than_s=-5)
    assert not store.exists(victim)
    assert set(store.older_than(-5)) == digests - {victim}


def test_the_object_store_presigns_gets_that_work_without_townsquare(
    s3_server: SeaweedS3,
) -> None:
    store = s3_store(s3_server)
    digest = store.put(b"\x89PNG signed")
    url = store.url(digest, 60)
    assert url is not None and url.startswith(s3_server.url)
    fetched = httpx.get(url)
    assert fetched.status_code == 200 and fetched.content == b"\x89PNG signed"
    assert fetched.headers["content-type"] == "image/png"
    assert httpx.get(url.replace("Signature=", "Signature=0")).status_code == 403
    assert LocalBlobs(Path("/tmp")).url(digest, 60) is None  # no such thing on a disk


def test_a_store_that_is_down_or_misconfigured_says_which_and_what_to_check(
    s3_server: SeaweedS3,
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    down = S3Blobs(
        S3Settings(**{**s3_server.settings("townsquare"), "endpoint_url": nowhere, "timeout_s": 1})
    )
    with pytest.raises(BlobStoreUnavailable, match="not answering") as error:
        down.put(b"x")
    assert "127.0.0.1" in error.value.message and error.value.status_code == 503
    no_bucket = S3Blobs(S3Settings(**s3_server.settings("no-such-bucket-here")))
    with pytest.raises(BlobStoreUnavailable, match=r"no-such-bucket-here.*NoSuchBucket.*images"):
        no_bucket.get("0" * 64)
    wrong_secret = S3Blobs(
        S3Settings(**{**s3_server.settings("townsquare"), "secret_access_key": "wrong"})
    )
    with pytest.raises(BlobStoreUnavailable, match="credentials"):
        wrong_secret.get("0" * 64)


def test_the_setting_picks_the_store(tmp_path: Path, s3_server: SeaweedS3) -> None:
    settings = make_settings(tmp_path)
    engine = make_engine(settings.resolved_database_url)
    sessions = make_sessions(engine)
    assert isinstance(open_blobs(settings.images, tmp_path, sessions), LocalBlobs)
    as_db = settings.images.model_copy(update={"blob_store": "database"})
    assert isinstance(open_blobs(as_db, tmp_path, sessions), DatabaseBlobs)
    as_s3 = make_settings(
        tmp_path, images={"blob_store": "s3", "s3": s3_server.settings("townsquare")}
    ).images
    assert isinstance(open_blobs(as_s3, tmp_path, sessions), S3Blobs)
    with pytest.raises(ValueError, match="TOWNSQUARE_IMAGES__S3__BUCKET"):
        make_settings(tmp_path, images={"blob_store": "s3"})
    engine.dispose()
