"""Marking images and checking them for the watermark."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from townsquare.cli.common import (
    console,
    err,
    fail,
    migrated_sessions,
    settings_or_exit,
    watermark_app,
)
from townsquare.errors import TownsquareError


def _provenance() -> Any:
    from townsquare.safety.provenance import Provenance

    settings = settings_or_exit()
    try:
        return Provenance(migrated_sessions(settings), settings)
    except TownsquareError as exc:
        err.print(f"[red]Error:[/red] {exc}")
        raise typer.Exit(2) from exc


def _read_image(path: Path, provenance: Any) -> Any:
    from townsquare.safety.provenance import load_image

    if not path.is_file():
        err.print(f"[red]Error:[/red] there is no file {path}.")
        raise typer.Exit(2)
    try:
        return load_image(path.read_bytes(), provenance.limits)
    except TownsquareError as exc:
        raise fail(exc) from exc


@watermark_app.command("embed")
def watermark_embed(
    file: Annotated[Path, typer.Argument(help="PNG, JPEG or WebP image to mark.")],
    out: Annotated[
        Path | None,
        typer.Option(help="Where to write the marked image; default FILE.marked.png."),
    ] = None,
    source: Annotated[str, typer.Option(help="What made the image, for the record.")] = "cli",
    model: Annotated[str, typer.Option(help="The model that generated it, if any.")] = "",
    prompt: Annotated[str, typer.Option(help="Its prompt (only a SHA-256 hash is kept).")] = "",
) -> None:
    """Mark an image and register its payload in the provenance registry."""
    from townsquare.safety.provenance import encode_image

    provenance = _provenance()
    image = _read_image(file, provenance)
    target = out or file.with_name(f"{file.stem}.marked.png")
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(target.suffix.lower(), "PNG")
    marked, record = provenance.mark(image, source=source, model=model, prompt=prompt)
    target.write_bytes(encode_image(marked, fmt))
    console.print(f"Marked {file} -> {target} (payload {record.payload}, record {record.id}).")


@watermark_app.command("detect")
def watermark_detect(
    file: Annotated[Path, typer.Argument(help="PNG, JPEG or WebP image to check.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the full answer as JSON.")] = False,
) -> None:
    """Say whether an image carries this installation's watermark, and its record.

    Exits 0 when the mark is found, 1 when it is not.
    """
    import json

    provenance = _provenance()
    found = provenance.detect(_read_image(file, provenance))
    answer = found.full()
    if as_json:
        console.print_json(json.dumps(answer))
    elif found.detection.found:
        record = answer["record"]
        console.print(
            f"[green]Watermark found[/green] in {file} (p = {found.detection.p_value:.1e}, "
            f"{found.detection.bit_errors}/{found.detection.coded_bits} coded bits wrong)."
        )
        if record is None:
            console.print(
                "Its payload is not in this registry (made by another installation "
                "with the same key, or the record was deleted)."
            )
        else:
            console.print(
                f"Record {record['payload']}: made {record['created_at']} by "
                f"{record['source']}, user {record['user_id']}, model {record['model'] or '-'}."
            )
    else:
        console.print(f"No watermark found in {file} (p = {found.detection.p_value:.2g}).")
    raise typer.Exit(0 if found.detection.found else 1)
