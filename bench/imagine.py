"""Imagine benchmark -> bench/results/imagine.json (figures in bench/RESULTS.md).

What every image costs on top of the engine, and whether the mark survives where it is hardest.

1. pipeline_overhead_ms: ``ImageService.make`` end to end (prompt moderation with the embedded
   classifier, quotas, the Open-NSFW output check, the watermark with its read-back check, the
   PNG, the blob store and the database rows) minus the seconds spent inside the engine,
   at 512 x 512 and 1024 x 1024, p50/p95.
2. pipeline_overhead_ratio: that overhead divided by the engine's own generate time measured
   in the same run: (a) the tiny random pipeline of the tests (a floor, not a real model);
   (b) a pipeline with SD-Turbo's architecture (the UNet, VAE and text encoder of Stable
   Diffusion 2.1 at full size, one step, as SD-Turbo runs) built from configs with random
   weights: no weights are downloadable here, but the compute is the real model's, so its
   time is a real 512 x 512 CPU generation (its pixels are noise).
3. detected_made_here: images made through the full path, then a social-media chain (long
   side resized to 1080, JPEG quality 80), then ``Provenance.detect``: made here, and the
   record is the image's own. On smooth, flat synthetic pictures (gradients and soft shapes,
   where a mark is hardest to hide and to find) and on the tiny pipeline's outputs (512 x 512
   only: its VAE downsamples by 2, so 1024 x 1024 would be slower than a real model).
4. embed_verified_failures: how often the watermark's read-back check had to embed again more
   strongly, or refused the image.

    python bench/imagine.py [--n 40] [--skip-real]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from tests.features.imagine.tiny_pipeline import build_tiny_pipeline  # noqa: E402
from typing_extensions import override  # noqa: E402

from townsquare.backends.fake import FakeText  # noqa: E402
from townsquare.backends.images import ImageBackend, Size  # noqa: E402
from townsquare.features.imagine.service import Ask  # noqa: E402
from townsquare.safety import watermark  # noqa: E402
from townsquare.services import Services  # noqa: E402
from townsquare.settings import ImageSettings, Settings  # noqa: E402
from townsquare.storage.tables import User  # noqa: E402

OUT = ROOT / "bench/results/imagine.json"
SIZES = ((512, 512), (1024, 1024))


def smooth_picture(seed: int, width: int, height: int) -> Image.Image:
    """A smooth, flat picture: a two-colour gradient, a few soft discs, a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    a, b = rng.uniform(30, 225, 3), rng.uniform(30, 225, 3)
    angle = rng.uniform(0, np.pi)
    t = np.cos(angle) * xx + np.sin(angle) * yy
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-9)
    out = a + (b - a) * t[..., None]
    for _ in range(int(rng.integers(1, 5))):
        cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.08, 0.3)
        disc = 1 / (1 + np.exp((np.hypot(xx - cx, yy - cy) - r) / 0.01))  # soft-edged
        out += disc[..., None] * rng.uniform(-60, 60, 3)
    out += rng.normal(0, 0.8, out.shape)  # sensor-like grain, far below the mark
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


class Timed(ImageBackend):
    """Wraps an engine and adds up the seconds spent inside it."""

    def __init__(self, inner: ImageBackend | None, sizes: list[str], kind: str) -> None:
        super().__init__(sizes)
        self.inner = inner
        self.kind = kind
        self.model_id = kind
        self.spent = 0.0
        self.seed = 0

    @override
    def generate(
        self,
        prompt: str,
        *,
        size: Size,
        n: int = 1,
        seed: int | None = None,
        negative_prompt: str | None = None,
        steps: int | None = None,
    ) -> list[Image.Image]:
        started = time.perf_counter()
        try:
            if self.inner is None:
                self.seed += 1
                return [smooth_picture(self.seed, size.width, size.height)]
            return self.inner.generate(prompt, size=size, n=n, seed=seed)
        finally:
            self.spent += time.perf_counter() - started

    @override
    def edit(
        self,
        image: Image.Image,
        prompt: str,
        *,
        strength: float = 0.6,
        mask: Image.Image | None = None,
        seed: int | None = None,
        n: int = 1,
        size: Size | None = None,
    ) -> list[Image.Image]:
        raise NotImplementedError


def social(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    k = 1080 / max(image.size)
    image = image.resize(
        (round(image.width * k), round(image.height * k)), Image.Resampling.BICUBIC
    )
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def run_path(
    engine: Timed, n: int, data_dir: Path, embed: Any, sizes_px: tuple[tuple[int, int], ...] = SIZES
) -> dict[str, Any]:
    """``n`` images per size through the full path; overhead, detection, read-back retries."""
    sizes = [f"{w}x{h}" for w, h in sizes_px]
    settings = Settings(
        data_dir=data_dir,
        log_json=False,
        text={"backend": "fake"},
        safety={"moderation": "embedded"},
        assistant={"tool_mode": "off"},
        images=ImageSettings(
            sizes=sizes,
            default_size=sizes[0],
            nsfw_check="block",
            user_images_per_day=0,
            group_images_per_day=0,
        ),
    )
    services = Services.build(settings, text=FakeText(), embed=embed, images=engine)
    with services.sessions.begin() as db:
        db.add(User(name="bench", role="member"))
    with services.sessions() as db:
        user = db.query(User).filter_by(name="bench").one()
        db.expunge(user)
    services.images.make(user, Ask("warm up", size=Size(*sizes_px[0])))  # load the classifiers
    out: dict[str, Any] = {}
    for w, h in sizes_px:
        overheads, found, engine_s = [], 0, []
        for i in range(n):
            before = engine.spent
            started = time.perf_counter()
            made = services.images.make(user, Ask(f"a quiet lake, picture {i}", size=Size(w, h)))
            total = time.perf_counter() - started
            spent = engine.spent - before
            engine_s.append(spent)
            overheads.append(1000 * (total - spent))
            detection = services.provenance().detect(social(made[0].png))
            found += bool(
                detection.made_here
                and detection.record is not None
                and detection.record.payload == made[0].row.payload
            )
        out[f"{w}x{h}"] = {
            "images": n,
            "pipeline_overhead_ms_p50": statistics.median(overheads),
            "pipeline_overhead_ms_p95": float(np.percentile(overheads, 95)),
            "engine_ms_p50": 1000 * statistics.median(engine_s),
            "detected_made_here": found / n,
        }
    asyncio.run(services.aclose())
    return out


def verify_counts(n: int) -> dict[str, Any]:
    """How often the read-back check re-embedded or refused, on the smooth pictures."""
    key = b"bench-imagine"
    attempts = []
    refused = 0
    for i in range(n):
        for w, h in SIZES:
            try:
                _, used = watermark.embed_counted(smooth_picture(10_000 + i, w, h), i, key=key)
                attempts.append(used)
            except watermark.WatermarkError:
                refused += 1
    total = len(attempts) + refused
    return {
        "images": total,
        "strengthened": sum(a > 1 for a in attempts),
        "refused": refused,
        "embed_verified_failures": (sum(a > 1 for a in attempts) + refused) / total,
    }


def real_architecture_ms(runs: int) -> dict[str, Any]:
    """One-step 512 x 512 generation with SD-Turbo's architecture (random weights)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    started = time.perf_counter()
    unet = UNet2DConditionModel(  # Stable Diffusion 2.1 (SD-Turbo's UNet), 865 M parameters
        sample_size=64,
        cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20),
        use_linear_projection=True,
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
    )
    encoder = CLIPTextModel(
        CLIPTextConfig(  # OpenCLIP ViT-H text tower's shape (23 layers)
            hidden_size=1024,
            intermediate_size=4096,
            num_attention_heads=16,
            num_hidden_layers=23,
            projection_dim=1024,
            hidden_act="gelu",
        )
    )
    with tempfile.TemporaryDirectory() as tmp:
        tiny = build_tiny_pipeline(Path(tmp))  # only for its tokenizer files
        tokenizer = CLIPTokenizer.from_pretrained(tiny / "tokenizer")
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=encoder,
        tokenizer=tokenizer,
        scheduler=EulerDiscreteScheduler(steps_offset=1, timestep_spacing="trailing"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    build_s = time.perf_counter() - started
    times = []
    with torch.inference_mode():
        for i in range(runs + 1):
            started = time.perf_counter()
            pipe(
                "a lake",
                num_inference_steps=1,
                guidance_scale=0.0,
                height=512,
                width=512,
                generator=torch.Generator().manual_seed(i),
            )
            if i:  # the first run warms up
                times.append(1000 * (time.perf_counter() - started))
    return {
        "architecture": "Stable Diffusion 2.1 (SD-Turbo), 1 step, guidance 0, random weights",
        "unet_parameters_m": round(sum(p.numel() for p in unet.parameters()) / 1e6),
        "build_s": round(build_s, 1),
        "generate_ms_p50": statistics.median(times),
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="images per size and engine")
    parser.add_argument("--skip-real", action="store_true", help="no SD-Turbo-size run")
    args = parser.parse_args()
    from townsquare.backends.sentence_embed import SentenceEmbeddings, bundled_embedding_path

    embed = SentenceEmbeddings(bundled_embedding_path())
    sizes = [f"{w}x{h}" for w, h in SIZES]
    report: dict[str, Any] = {
        "machine": f"{os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        smooth = Timed(None, sizes, "smooth-synthetic")
        report["smooth"] = run_path(smooth, args.n, Path(tmp) / "smooth", embed)
        from townsquare.backends.diffusers_images import DiffusersImages

        # 512 x 512 only: the tiny VAE downsamples by 2, not 8, so at 1024 x 1024 its UNet's
        # attention would run over 65,536 positions, far slower than any real model
        directory = build_tiny_pipeline(Path(tmp) / "tiny")
        tiny = DiffusersImages(
            str(directory),
            ImageSettings(sizes=["512x512"], default_size="512x512", steps=2, device="cpu"),
        )
        report["tiny_pipeline"] = run_path(
            Timed(tiny, ["512x512"], "tiny-sd"),
            max(4, args.n // 4),
            Path(tmp) / "tiny-run",
            embed,
            ((512, 512),),
        )
    report["verify"] = verify_counts(args.n)
    if not args.skip_real:
        report["sd_turbo_architecture_512"] = real_architecture_ms(3)
    for key in ("smooth", "tiny_pipeline"):
        for row in report[key].values():
            row["pipeline_overhead_ratio"] = row["pipeline_overhead_ms_p50"] / max(
                row["engine_ms_p50"], 1e-9
            )
    if "sd_turbo_architecture_512" in report:
        real = report["sd_turbo_architecture_512"]["generate_ms_p50"]
        report["overhead_vs_sd_turbo_512"] = (
            report["smooth"]["512x512"]["pipeline_overhead_ms_p50"] / real
        )
    report["detected_made_here"] = min(
        row["detected_made_here"]
        for key in ("smooth", "tiny_pipeline")
        for row in report[key].values()
    )
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
