"""Several replicas, one set of images: files kept in an object store (a real SeaweedFS) or
the database are served and remixed by a replica that did not make them, and every replica
must mark with the same key (from the deployment's Secret) or refuse to start."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.conftest import auth, free_port, make_settings
from tests.s3server import SeaweedS3
from tests.town import build_town
from townsquare.app import create_app
from townsquare.backends.fake import FakeText
from townsquare.errors import ConfigurationError
from townsquare.safety.provenance import KEY_FILE
from townsquare.services import Services
from townsquare.storage.social_tables import ImageRow, ProvenanceRecord

KEY = "a-long-shared-secret-from-the-deployment"


def _shared_database(tmp_path: Path) -> str:
    """One database for every replica: the test's PostgreSQL, or one SQLite file."""
    return os.environ.get("TOWNSQUARE_DATABASE_URL") or f"sqlite:///{tmp_path / 'town.db'}"


def _replica(tmp_path: Path, name: str, images: dict[str, Any], **overrides: Any) -> Services:
    """A replica with a data directory of its own (per-pod disk), the shared database."""
    base = {"backend": "fake", "sizes": ["256x256"], "default_size": "256x256"}
    settings = make_settings(
        tmp_path / name,
        database_url=_shared_database(tmp_path),
        images={**base, "nsfw_check": "off", **images},
        **overrides,
    )
    return Services.build(settings, text=FakeText())


def _close(services: Services) -> None:
    asyncio.run(services.aclose())


def _store(kind: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    if kind != "s3":
        return {"blob_store": kind}
    server: SeaweedS3 = request.getfixturevalue("s3_server")
    s3 = {**server.settings("townsquare"), "prefix": f"t{uuid.uuid4().hex[:10]}/"}
    return {"blob_store": "s3", "s3": s3}


@pytest.fixture
def pair(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[TestClient, TestClient, dict[str, str]]]:
    images = _store(request.param, request)
    with ExitStack() as stack:
        a = _replica(tmp_path, "a", images, watermark={"key": KEY})
        b = _replica(tmp_path, "b", images, watermark={"key": KEY})
        keys = build_town(a)
        for services in (a, b):
            stack.callback(_close, services)
        yield (
            stack.enter_context(TestClient(create_app(services=a))),
            stack.enter_context(TestClient(create_app(services=b))),
            keys,
        )


@pytest.mark.parametrize("pair", ["s3", "database"], indirect=True)
def test_an_image_made_on_one_replica_is_served_remixed_and_traced_on_another(
    pair: tuple[TestClient, TestClient, dict[str, str]],
) -> None:
    a, b, keys = pair
    member = auth(keys["member"])
    made = a.post("/api/imagine", json={"prompt": "a red bike"}, headers=member)
    assert made.status_code == 200, made.text
    image = made.json()["data"][0]
    png = a.get(image["url"], headers=member).content
    assert b.get(image["url"], headers=member).content == png  # the other replica has it
    remix = b.post(f"/api/images/{image['id']}/reimagine", json={"prompt": "blue"}, headers=member)
    assert remix.status_code == 201, remix.text
    assert a.get(remix.json()["url"], headers=member).status_code == 200
    found = b.post(
        "/api/provenance/detect",
        files={"file": ("x.png", png, "image/png")},
        headers=auth(keys["admin"]),
    ).json()
    assert found["made_here"] and found["image"]["id"] == image["id"]  # the same key on both
    linked = a.post(
        "/v1/images/generations",
        json={"prompt": "a lake", "response_format": "url"},
        headers=member,
    ).json()["data"][0]["url"]
    assert b.get(linked).headers["content-type"] == "image/png"  # signed on a, served by b


@pytest.mark.parametrize("pair", ["local"], indirect=True)
def test_files_on_a_replicas_own_disk_are_what_the_other_replica_cannot_serve(
    pair: tuple[TestClient, TestClient, dict[str, str]],
) -> None:
    a, b, keys = pair
    member = auth(keys["member"])
    image = a.post("/api/imagine", json={"prompt": "a red bike"}, headers=member).json()
    url = image["data"][0]["url"]
    assert a.get(url, headers=member).status_code == 200
    assert b.get(url, headers=member).status_code == 404  # why blob_store exists


def test_the_store_can_hand_members_a_presigned_link_instead(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    images = _store("s3", request)
    images["s3"]["redirect"] = True
    services = _replica(tmp_path, "a", images)
    keys = build_town(services)
    with TestClient(create_app(services=services)) as client:
        member = auth(keys["member"])
        image = client.post("/api/imagine", json={"prompt": "a kite"}, headers=member).json()
        answer = client.get(image["data"][0]["url"], headers=member, follow_redirects=False)
        assert answer.status_code == 307 and answer.headers["cache-control"] == "no-store"
        fetched = httpx.get(answer.headers["location"])  # straight from the store
        assert fetched.status_code == 200 and fetched.content.startswith(b"\x89PNG")
        # the access check still runs first: no link for a member who may not see it
        assert (
            client.get(image["data"][0]["url"], headers=auth(keys["outsider"])).status_code == 404
        )
    asyncio.run(services.aclose())


def test_with_the_store_down_image_routes_answer_503_and_store_nothing(tmp_path: Path) -> None:
    s3 = {
        "bucket": "townsquare",
        "endpoint_url": f"http://127.0.0.1:{free_port()}",  # nothing listens there
        "access_key_id": "x",
        "secret_access_key": "y",
        "timeout_s": 1,
    }
    services = _replica(tmp_path, "a", {"blob_store": "s3", "s3": s3})
    keys = build_town(services)
    with TestClient(create_app(services=services)) as client:
        answer = client.post(
            "/api/imagine", json={"prompt": "a kite", "n": 2}, headers=auth(keys["member"])
        )
        assert answer.status_code == 503, answer.text
        error = answer.json()["error"]
        assert error["code"] == "blob_store_unavailable" and "127.0.0.1" in error["message"]
    with services.sessions() as db:
        assert db.scalar(select(func.count()).select_from(ImageRow)) == 0
        assert db.scalar(select(func.count()).select_from(ProvenanceRecord)) == 0
    asyncio.run(services.aclose())


def test_a_replica_that_would_mint_its_own_watermark_key_refuses_to_start(
    tmp_path: Path,
) -> None:
    first = _replica(tmp_path, "a", {})
    first.provenance()  # the first replica makes and records its key
    assert (tmp_path / "a" / KEY_FILE).is_file()
    second = _replica(tmp_path, "b", {})  # a pod with a disk of its own and no key set
    with pytest.raises(ConfigurationError, match="TOWNSQUARE_WATERMARK__KEY"):
        second.provenance()
    assert not (tmp_path / "b" / KEY_FILE).exists()  # minted nothing
    third = _replica(tmp_path, "c", {}, watermark={"key": KEY})  # a different key
    with pytest.raises(ConfigurationError, match="not the one the other replicas use"):
        third.provenance()
    restarted = _replica(tmp_path, "a", {})  # the first one again: its own key agrees
    assert restarted.provenance().key == first.provenance().key
    for services in (first, second, third, restarted):
        asyncio.run(services.aclose())


def test_replicas_given_the_same_key_from_the_secret_agree(tmp_path: Path) -> None:
    replicas = [_replica(tmp_path, name, {}, watermark={"key": KEY}) for name in "abc"]
    assert len({r.provenance().key for r in replicas}) == 1
    assert not any((tmp_path / name / KEY_FILE).exists() for name in "abc")
    for services in replicas:
        asyncio.run(services.aclose())


def test_a_server_whose_key_disagrees_does_not_start(tmp_path: Path) -> None:
    first = _replica(tmp_path, "a", {}, watermark={"key": KEY})
    first.provenance()
    settings = make_settings(
        tmp_path / "b", database_url=_shared_database(tmp_path), watermark={"key": "x" * 32}
    )
    with (
        pytest.raises(ConfigurationError, match="TOWNSQUARE_WATERMARK__KEY"),
        TestClient(create_app(settings)),
    ):
        pass
    asyncio.run(first.aclose())
