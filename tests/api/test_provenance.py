"""Provenance: registry, POST /api/provenance/detect, bad uploads, and the CLI."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select
from typer.testing import CliRunner

from tests.conftest import add_user, auth
from townsquare.cli import app as cli
from townsquare.safety.provenance import encode_image
from townsquare.services import Services
from townsquare.storage.social_tables import ProvenanceRecord


def photo() -> Image.Image:
    return Image.fromarray(skimage.data.coffee())


def upload(data: bytes, name: str = "image.png") -> dict[str, tuple[str, bytes, str]]:
    return {"file": (name, data, "application/octet-stream")}


@pytest.fixture
def marked(services: Services) -> tuple[bytes, ProvenanceRecord]:
    image, record = services.provenance().mark(
        photo(), source="imagine", user_id=42, model="tiny-sd", prompt="a cup of coffee"
    )
    return encode_image(image, "JPEG", quality=85), record


def test_member_learns_only_that_it_was_made_here(
    client: TestClient, member_key: str, marked: tuple[bytes, ProvenanceRecord]
) -> None:
    data, _ = marked
    response = client.post("/api/provenance/detect", files=upload(data), headers=auth(member_key))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["made_here"] is True
    assert body["p_value"] < 1e-6
    # nothing about who made it or how: only these keys (the record's user id, 42, used to be
    # checked as a substring, which a p-value's digits could contain)
    assert set(body) == {"made_here", "watermark_found", "p_value", "bit_errors", "coded_bits"}


def test_admin_gets_the_generation_record(
    client: TestClient, admin_key: str, marked: tuple[bytes, ProvenanceRecord]
) -> None:
    data, record = marked
    response = client.post("/api/provenance/detect", files=upload(data), headers=auth(admin_key))
    body = response.json()
    assert body["made_here"] is True
    assert body["record"]["payload"] == record.payload
    assert body["record"]["user_id"] == 42
    assert body["record"]["model"] == "tiny-sd"
    assert body["record"]["source"] == "imagine"
    assert len(body["record"]["prompt_sha256"]) == 64
    assert "coffee" not in response.text  # only the prompt's hash is kept


def test_unmarked_image_is_not_made_here(client: TestClient, admin_key: str) -> None:
    data = encode_image(photo(), "PNG")
    body = client.post("/api/provenance/detect", files=upload(data), headers=auth(admin_key)).json()
    assert body["made_here"] is False and body["watermark_found"] is False
    assert body["record"] is None


def test_other_installations_marks_are_not_read(client: TestClient, admin_key: str) -> None:
    from townsquare.safety import watermark

    foreign = watermark.embed(photo(), 12345, key=b"some other installation's key")
    body = client.post(
        "/api/provenance/detect",
        files=upload(encode_image(foreign, "PNG")),
        headers=auth(admin_key),
    ).json()
    assert body["made_here"] is False


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge image (a decompression bomb's first bytes)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def test_bad_uploads_get_clear_errors(
    services: Services, client: TestClient, member_key: str, marked: tuple[bytes, ProvenanceRecord]
) -> None:
    good, _ = marked
    cases = {
        "not an image": (b"hello, world", 422, "not a PNG, JPEG or WebP"),
        "empty": (b"", 422, "empty"),
        "truncated": (good[: len(good) // 3], 422, "truncated"),
        "too small": (encode_image(photo().resize((120, 80)), "PNG"), 422, "at least 256"),
        "bomb": (png_header_only(30000, 30000), 413, "watermark.max_pixels"),
    }
    for label, (data, status, words) in cases.items():
        response = client.post(
            "/api/provenance/detect", files=upload(data), headers=auth(member_key)
        )
        assert response.status_code == status, (label, response.text)
        assert words in response.json()["error"]["message"], label
    # nothing already stored was lost
    with services.sessions() as db:
        assert len(db.scalars(select(ProvenanceRecord)).all()) == 1


def test_upload_limit_is_its_own_setting(tmp_path: Path) -> None:
    from tests.conftest import make_settings
    from townsquare.app import create_app
    from townsquare.backends.fake import FakeText

    settings = make_settings(tmp_path)
    settings.watermark.max_upload_bytes = 3_000_000
    services = Services.build(settings, text=FakeText())
    key = add_user(services, "someone")
    noisy = np.random.default_rng(0).integers(0, 256, (900, 900, 3), dtype=np.uint8)
    big = encode_image(Image.fromarray(noisy), "PNG")  # ~2.4 MB: over the general 1 MB limit
    assert settings.limits.max_body_bytes < len(big) < settings.watermark.max_upload_bytes
    with TestClient(create_app(settings, services=services)) as client:
        ok = client.post("/api/provenance/detect", files=upload(big), headers=auth(key))
        assert ok.status_code == 200, ok.text
        settings.watermark.max_upload_bytes = 2_000_000
    with TestClient(create_app(settings, services=services)) as client:
        refused = client.post("/api/provenance/detect", files=upload(big), headers=auth(key))
        assert refused.status_code == 413
        assert "watermark.max_upload_bytes" in refused.json()["error"]["message"]


def test_deleting_a_user_unlinks_their_images(
    services: Services, client: TestClient, admin_key: str
) -> None:
    put = client.put("/api/users/u-maker", json={"name": "maker"}, headers=auth(admin_key))
    assert put.status_code in (200, 201), put.text
    with services.sessions() as db:
        from townsquare.storage.tables import User

        maker = db.scalar(select(User).where(User.external_id == "u-maker"))
        assert maker is not None
        maker_id, external = maker.id, "u-maker"
    image, record = services.provenance().mark(photo(), source="imagine", user_id=maker_id)
    response = client.delete(f"/api/users/{external}", headers=auth(admin_key))
    assert response.status_code in (200, 204), response.text
    found = services.provenance().detect(image)
    assert found.made_here and found.record is not None
    assert found.record.payload == record.payload and found.record.user_id is None


def test_cli_embed_and_detect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOWNSQUARE_DATA_DIR", str(tmp_path / "data"))
    source = tmp_path / "coffee.jpg"
    photo().save(source, quality=92)
    runner = CliRunner()
    made = runner.invoke(cli, ["watermark", "embed", str(source), "--model", "m1"])
    assert made.exit_code == 0, made.output
    target = tmp_path / "coffee.marked.png"
    with Image.open(target) as written:
        assert written.size == photo().size
    found = runner.invoke(cli, ["watermark", "detect", str(target), "--json"])
    assert found.exit_code == 0, found.output
    assert '"made_here": true' in found.output and '"model": "m1"' in found.output
    clean = runner.invoke(cli, ["watermark", "detect", str(source)])
    assert clean.exit_code == 1 and "No watermark found" in clean.output
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    bad = runner.invoke(cli, ["watermark", "detect", str(junk)])
    assert bad.exit_code == 1 and "not a PNG, JPEG or WebP" in bad.output
    # the key was made once and kept
    assert (tmp_path / "data" / "watermark.key").stat().st_mode & 0o777 == 0o600


def test_image_checks_are_bounded_and_answer_429_beyond(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most watermark.detect_concurrency checks run and detect_max_waiting wait; the
    next upload is refused with 429 at once instead of taking more memory."""
    import asyncio
    import threading

    import httpx

    from tests.conftest import LiveServer, make_settings
    from townsquare.backends.fake import FakeText
    from townsquare.safety import watermark

    services = Services.build(
        make_settings(tmp_path, watermark={"detect_concurrency": 1, "detect_max_waiting": 0}),
        text=FakeText(),
    )
    key = add_user(services, "mia")
    real_detect, inside, release = watermark.detect, threading.Event(), threading.Event()

    def held_detect(*args: object, **kwargs: object) -> watermark.Detection:
        inside.set()
        release.wait(10)
        return real_detect(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(watermark, "detect", held_detect)
    data = encode_image(photo(), "PNG")
    statuses: list[int] = []
    with (
        LiveServer(services) as server,
        httpx.Client(base_url=server.url, headers=auth(key), timeout=30) as http,
    ):
        first = threading.Thread(
            target=lambda: statuses.append(
                http.post("/api/provenance/detect", files=upload(data)).status_code
            )
        )
        first.start()
        assert inside.wait(10)
        refused = http.post("/api/provenance/detect", files=upload(data))
        release.set()
        first.join()
        again = http.post("/api/provenance/detect", files=upload(data))
    asyncio.run(services.aclose())
    assert statuses == [200] and again.status_code == 200
    assert refused.status_code == 429 and refused.headers["retry-after"]
    assert "watermark.detect_concurrency" in refused.json()["error"]["message"]


def test_detection_works_on_the_small_frame_not_a_copy_of_the_whole_image(
    services: Services,
) -> None:
    """A 4096-pixel upload is read at the detector's working size: its float64 copy (270 MB
    here) is never made, and the answer is the same as from the full-size computation."""
    import tracemalloc

    from townsquare.safety import watermark

    marked, record = services.provenance().mark(photo(), source="test")
    big = marked.resize((4096, 2731), Image.Resampling.BICUBIC)  # the same aspect
    tracemalloc.start()
    found = watermark.detect(big, key=services.provenance().key, max_pixels=4096 * 4096)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert found.found and watermark.payload_hex(found.payload) == record.payload
    assert peak < 60_000_000, peak  # numpy work at 512 px, not at 4096 px
    full = watermark.detect_array(np.asarray(big), services.provenance().key)
    assert full.payload == found.payload and abs(full.bit_errors - found.bit_errors) <= 2
