"""``townsquare batch``: work over a whole town, in this process or on a Ray cluster (--ray)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from townsquare.cli.common import batch_app, build_services, console, err, fail, settings_or_exit
from townsquare.errors import TownsquareError


def _runtime_env(value: str | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"--runtime-env is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise typer.BadParameter('--runtime-env is a JSON object, e.g. \'{"pip": ["townsquare"]}\'')
    return parsed


RuntimeEnvOption = Annotated[
    str | None,
    typer.Option(
        "--runtime-env",
        help="With --ray: Ray's runtime environment for the workers, as JSON (merged over "
        'townsquare\'s: HF_HUB_OFFLINE=1, no usage stats), e.g. \'{"pip": ["townsquare==0.1.0"]}\' '
        "where workers do not run the townsquare image.",
    ),
]
RayOption = Annotated[
    str | None,
    typer.Option(
        "--ray",
        help="Run on Ray: 'ray://HEAD:10001', 'HEAD:6379', 'auto', or 'local' (a Ray instance "
        "on this machine). Default: in this process.",
    ),
]


@batch_app.command("reindex")
def reindex(
    ray: RayOption = None,
    collection: Annotated[
        str | None, typer.Option(help="listings, posts or reels (default: all three).")
    ] = None,
    actors: Annotated[int, typer.Option(help="With --ray: copies of the embedding model.")] = 2,
    runtime_env: RuntimeEnvOption = None,
) -> None:
    """Embed every item of the catalogue again and rebuild both search indexes (after a new
    embedding model, or a restore)."""
    from townsquare.batch import RayEmbeddings, connect
    from townsquare.features.search.indexer import COLLECTIONS, Indexer

    names = [collection] if collection else list(COLLECTIONS)
    if collection is not None and collection not in COLLECTIONS:
        err.print(f"[red]Error:[/red] unknown collection '{collection}'.")
        raise typer.Exit(2)
    settings = settings_or_exit()
    services = build_services(settings)
    embedder: Any = None
    try:
        indexer = services.indexer
        if ray is not None:
            connect(ray, env=_runtime_env(runtime_env))
            embedder = RayEmbeddings(
                settings.embed,
                model_id=services.embed.model_id,
                dimensions=services.embed.dimensions,
                actors=actors,
            )
            # big sync batches: each one is a Ray Data job spread over the actors
            indexer = Indexer(services.sessions, embedder, services.vectors, batch_size=16_384)
        for name in names:
            counts = indexer.sync(name, force=True)
            console.print(f"{name}: {counts['indexed']} embedded, {counts['removed']} removed")
    except TownsquareError as exc:
        raise fail(exc) from exc
    finally:
        if embedder is not None:
            embedder.close()  # the job's actors (one pool for every batch)
        asyncio.run(services.aclose())


@batch_app.command("watermark-scan")
def watermark_scan(
    folder: Annotated[Path, typer.Argument(help="A folder of PNG, JPEG and WebP images.")],
    ray: RayOption = None,
    out: Annotated[
        Path | None, typer.Option(help="Write one JSON line per image here (default: stdout).")
    ] = None,
    runtime_env: RuntimeEnvOption = None,
) -> None:
    """Check every image under a folder for this installation's watermark; one JSON line per
    image with its registry record when found."""
    from sqlalchemy import select

    from townsquare.batch import image_files, scan_images
    from townsquare.cli.common import migrated_sessions
    from townsquare.safety.provenance import resolve_key
    from townsquare.storage.social_tables import ProvenanceRecord

    if not folder.is_dir():
        err.print(f"[red]Error:[/red] {folder} is not a folder.")
        raise typer.Exit(2)
    settings = settings_or_exit()
    try:
        answers = scan_images(
            image_files(folder),
            resolve_key(settings),
            max_pixels=settings.watermark.max_pixels,
            ray_address=ray,
            ray_env=_runtime_env(runtime_env),
        )
    except TownsquareError as exc:
        raise fail(exc) from exc
    payloads = {a.payload for a in answers if a.payload}
    with migrated_sessions(settings)() as db:
        records = {
            r.payload: r
            for r in db.scalars(
                select(ProvenanceRecord).where(ProvenanceRecord.payload.in_(payloads))
            )
        }
    lines = []
    for answer in answers:
        record = records.get(answer.payload or "")
        lines.append(
            json.dumps(
                {
                    **answer.__dict__,
                    "record": None
                    if record is None
                    else {"id": record.id, "source": record.source, "model": record.model},
                }
            )
        )
    text = "\n".join(lines) + ("\n" if lines else "")
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
    found = sum(a.found for a in answers)
    err.print(f"{len(answers)} images, {found} carry the watermark.")


@batch_app.command("redteam")
def redteam(
    url: Annotated[str, typer.Option(help="The townsquare (or /v1 server) to attack.")],
    ray: RayOption = None,
    suite: Annotated[str, typer.Option(help="quick or full.")] = "quick",
    key: Annotated[
        str | None, typer.Option(help="A member's API key (default: $TOWNSQUARE_REDTEAM_KEY).")
    ] = None,
    model: Annotated[str, typer.Option(help="Model name sent to /v1.")] = "default",
    shards: Annotated[int, typer.Option(help="With --ray: tasks the suite is split into.")] = 4,
    out: Annotated[Path | None, typer.Option(help="Write the summary JSON here.")] = None,
    runtime_env: RuntimeEnvOption = None,
) -> None:
    """A red-team sweep against a running server, split over Ray tasks with --ray."""
    from townsquare.batch import redteam_sweep

    if suite not in ("quick", "full"):
        err.print("[red]Error:[/red] --suite is 'quick' or 'full'.")
        raise typer.Exit(2)
    settings = settings_or_exit()
    safety = settings.safety
    try:
        summary: dict[str, Any] = redteam_sweep(
            url,
            key or os.environ.get("TOWNSQUARE_REDTEAM_KEY", ""),
            suite,
            model=model,
            max_tokens=safety.redteam_max_tokens,
            concurrency=safety.redteam_concurrency,
            datasets_dir=safety.datasets_dir,
            ray_address=ray,
            ray_env=_runtime_env(runtime_env),
            shards=shards,
        )
    except TownsquareError as exc:
        raise fail(exc) from exc
    text = json.dumps(summary, indent=2, default=str)
    if out is not None:
        out.write_text(text)
    console.print(
        f"ASR {summary['asr_overall']:.3f} over {summary['attacks']['n']} attacks, "
        f"over-refusal {summary['over_refusal']:.3f} over {summary['benign']['n']} benign"
    )
