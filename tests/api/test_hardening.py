"""Defects found by fuzzing, by an attack on the running server and by a first run as a new user.
Each test failed before its fix."""

from __future__ import annotations

import io
import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import auth, make_settings
from tests.town import build_town
from townsquare.app import create_app
from townsquare.errors import ConfigurationError
from townsquare.safety.provenance import KEY_FILE, resolve_key
from townsquare.services import Services
from townsquare.settings import Settings
from townsquare.social.ingest import KINDS, ingest


@pytest.fixture
def keys(services: Services) -> dict[str, str]:
    return build_town(services)


# --- 500s on ordinary bad input ----------------------------------------------------------


def test_integers_beyond_64_bits_are_422(client: TestClient, keys: dict[str, str]) -> None:
    admin = auth(keys["admin"])
    for url in [
        "/api/conversations/9223372036854775808",
        "/api/listings?offset=9223372036854775808",
        "/api/audit?before_id=9223372036854775808",
        "/api/listings/search?q=bike&min_price=inf",
        "/api/listings/search?q=bike&max_price=1e18",
    ]:
        response = client.get(url, headers=admin)
        assert response.status_code == 422, (url, response.text)
        assert "Fix these fields" in response.json()["error"]["message"]


def test_deeply_nested_json_is_400(client: TestClient, keys: dict[str, str]) -> None:
    admin = {**auth(keys["admin"]), "content-type": "application/json"}
    body = b"[" * 200_000
    for url in ["/api/listings:batch", "/api/listings/x", "/api/conversations"]:
        method = client.put if url == "/api/listings/x" else client.post
        response = method(url, content=body, headers=admin)
        assert response.status_code == 400, (url, response.text)


def test_a_taken_user_name_is_a_row_error(client: TestClient, keys: dict[str, str]) -> None:
    admin = auth(keys["admin"])
    taken = client.put("/api/users/u-new", json={"name": "root"}, headers=admin)
    assert taken.status_code == 422
    assert "'root' is taken" in str(taken.json()["error"]["rows"])
    both = client.post(
        "/api/users:batch?partial=true",
        json=[
            {"external_id": "u-a", "name": "same"},
            {"external_id": "u-b", "name": "same"},
            {"external_id": "u-c", "name": "member"},
        ],
        headers=admin,
    )
    assert both.status_code == 200, both.text
    report = both.json()
    assert report["created"] == 1 and [r["row"] for r in report["rejected"]] == [2, 3]
    # renaming a user to their own name is not a clash
    same = client.put("/api/users/u-member", json={"name": "member"}, headers=admin)
    assert same.status_code == 200


def test_a_member_listed_twice_and_a_lone_dm_participant_are_422(
    client: TestClient, keys: dict[str, str]
) -> None:
    admin = auth(keys["admin"])
    group = client.post(
        "/api/groups:batch",
        json=[
            {
                "external_id": "g2",
                "name": "Twice",
                "members": [{"user": "u-member"}, {"user": "u-member", "role": "moderator"}],
            }
        ],
        headers=admin,
    )
    assert group.status_code == 422 and "more than once" in group.text
    lone = client.put(
        "/api/dm-threads/t9", json={"participants": ["u-member", "u-member"]}, headers=admin
    )
    assert lone.status_code == 422 and "two different participants" in lone.text


@pytest.mark.parametrize("size", [(1, 20000), (20000, 1), (300, 2)])
def test_strip_images_are_422_at_provenance(
    client: TestClient, keys: dict[str, str], size: tuple[int, int]
) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 80, 40)).save(buffer, "PNG")
    response = client.post(
        "/api/provenance/detect",
        files={"file": ("strip.png", buffer.getvalue(), "image/png")},
        headers=auth(keys["member"]),
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_image"


def test_a_500_keeps_its_request_id_and_the_server_keeps_going(services: Services) -> None:
    app = create_app(services=services)

    def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/boom", boom)
    # raise_server_exceptions=True: an exception escaping the app (which makes the server drop
    # the connection) fails the test
    with TestClient(app) as client:
        response = client.get("/boom", headers={"X-Request-ID": "req-42"})
        assert response.status_code == 500
        assert response.headers["x-request-id"] == "req-42"
        assert "request id req-42" in response.json()["error"]["message"]
        assert client.get("/healthz").status_code == 200


# --- stored XSS ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "row"),
    [
        ("reels", {"creator": "u-creator", "duration_s": 5, "media_url": "javascript:alert(1)"}),
        ("posts", {"author": "u-member", "image_url": "data:text/html,<script>x</script>"}),
        (
            "listings",
            {
                "seller": "u-member",
                "title": "t",
                "price": "1",
                "category": "x",
                "images": ["https://ok.example/a.jpg", "JavaScript:alert(1)"],
            },
        ),
    ],
)
def test_only_http_urls_are_stored(
    client: TestClient, keys: dict[str, str], kind: str, row: dict[str, Any]
) -> None:
    response = client.put(f"/api/{kind}/x1", json=row, headers=auth(keys["admin"]))
    assert response.status_code == 422
    assert "http:// or https:// URL" in response.text


def test_every_response_carries_a_content_security_policy(client: TestClient) -> None:
    for url in ["/login", "/healthz", "/api/me"]:
        policy = client.get(url).headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy


# --- the watermark key ---------------------------------------------------------------------


def _key_in(data_dir: str, start: float, out: Any) -> None:
    while time.time() < start:
        pass
    out.put(resolve_key(make_settings(Path(data_dir))).hex())


def test_processes_starting_together_share_one_complete_key(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    for trial in range(10):
        data_dir = tmp_path / f"t{trial}"
        out = context.Queue()
        start = time.time() + 0.2
        workers = [context.Process(target=_key_in, args=(str(data_dir), start, out)) for _ in "ab"]
        for worker in workers:
            worker.start()
        keys = {out.get(timeout=20) for _ in workers}
        for worker in workers:
            worker.join()
        stored = (data_dir / KEY_FILE).read_text().strip()
        assert len(keys) == 1 and len(stored) == 64
        assert (data_dir / KEY_FILE).stat().st_mode & 0o777 == 0o600
        assert not [p for p in data_dir.iterdir() if p.name != KEY_FILE]  # no temporary left


def test_an_empty_or_short_key_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_text("")
    with pytest.raises(ConfigurationError, match="0 characters"):
        resolve_key(make_settings(tmp_path))
    (tmp_path / KEY_FILE).write_text("abc\n")
    with pytest.raises(ConfigurationError, match="restore it from a backup"):
        resolve_key(make_settings(tmp_path))


# --- time zones ----------------------------------------------------------------------------


def test_times_are_stored_in_utc_and_answered_with_their_offset(
    client: TestClient, keys: dict[str, str]
) -> None:
    admin = auth(keys["admin"])
    sent = client.put(
        "/api/posts/p-tz",
        json={"author": "u-member", "text": "tz", "created_at": "2026-03-01T10:00:00+02:00"},
        headers=admin,
    )
    assert sent.status_code == 201, sent.text
    post = client.get("/api/posts/p-tz", headers=admin).json()
    assert post["created_at"] in {"2026-03-01T08:00:00Z", "2026-03-01T08:00:00+00:00"}
    listed = client.get("/api/posts", headers=admin).json()["data"]
    assert all(p["created_at"].endswith(("Z", "+00:00")) for p in listed)


# --- files ---------------------------------------------------------------------------------


def test_the_data_directory_and_database_are_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "town"
    built = Services.build(make_settings(data_dir))
    try:
        assert data_dir.stat().st_mode & 0o777 == 0o700
        if built.settings.resolved_database_url.startswith("sqlite"):  # not PostgreSQL's files
            assert (data_dir / "townsquare.db").stat().st_mode & 0o777 == 0o600
    finally:
        import asyncio

        asyncio.run(built.aclose())


# --- an interrupted batch ------------------------------------------------------------------


def test_a_batch_committed_but_never_indexed_is_indexed_at_start_up(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    built = Services.build(settings)
    keys = build_town(built)
    # the crash: rows committed, the process gone before it indexed them
    with built.sessions.begin() as db:
        ingest(
            db,
            KINDS["listings"],
            [
                {
                    "external_id": "l-crash",
                    "seller": "u-member",
                    "title": "Velvet armchair",
                    "price": "90",
                    "category": "furniture",
                }
            ],
            settings=settings.ingest,
            actor=None,
        )
    import asyncio

    asyncio.run(built.aclose())
    with TestClient(create_app(Settings(**settings.model_dump()))) as client:
        deadline = time.monotonic() + 20
        found: list[str] = []
        while time.monotonic() < deadline and "l-crash" not in found:
            hits = client.get(
                "/api/listings/search?q=velvet armchair", headers=auth(keys["member"])
            ).json()
            found = [hit["id"] for hit in hits["data"]]
            time.sleep(0.1)
        assert "l-crash" in found
