"""The town's content: users and keys, the demo town, ingestion from files, the indexes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from townsquare.cli.common import (
    app,
    build_services,
    command_engine,
    console,
    err,
    fail,
    feedback_app,
    index_app,
    migrated_sessions,
    privacy_app,
    seed_app,
    settings_or_exit,
    users_app,
)
from townsquare.errors import TownsquareError


@users_app.command("create")
def users_create(
    name: str,
    role: Annotated[str, typer.Option(help="member, creator or admin.")] = "member",
    display_name: Annotated[str, typer.Option(help="Name shown to others.")] = "",
) -> None:
    """Create a user and print their first API key (shown once)."""
    from townsquare.identity import create_user
    from townsquare.storage.db import make_sessions, migrate

    engine = command_engine(settings_or_exit())
    migrate(engine)
    try:
        with make_sessions(engine).begin() as db:
            user, key = create_user(db, name, role=role, display_name=display_name)
    except TownsquareError as exc:
        raise fail(exc) from exc
    typer.echo(f"Created {user.role} '{user.name}'. API key (shown only now):\n{key}")


@users_app.command("key")
def users_key(name: str) -> None:
    """Issue another API key for an existing user."""
    from townsquare.identity import find_user, issue_key
    from townsquare.storage.db import make_sessions, migrate

    engine = command_engine(settings_or_exit())
    migrate(engine)
    with make_sessions(engine).begin() as db:
        user = find_user(db, name)
        if user is None:
            err.print(
                f"[red]Error:[/red] no user '{name}'. List them with `townsquare users list`."
            )
            raise typer.Exit(1)
        key = issue_key(db, user, label="cli")
    typer.echo(key)


@users_app.command("list")
def users_list() -> None:
    """List users and their roles."""
    from sqlalchemy import select

    from townsquare.storage.db import make_sessions, migrate
    from townsquare.storage.tables import User

    engine = command_engine(settings_or_exit())
    migrate(engine)
    table = Table("id", "name", "role", "display name", "created")
    with make_sessions(engine)() as db:
        for user in db.scalars(select(User).order_by(User.id)):
            table.add_row(
                str(user.id), user.name, user.role, user.display_name, f"{user.created_at:%Y-%m-%d}"
            )
    console.print(table)


@seed_app.command("demo")
def seed_demo(
    if_empty: Annotated[
        bool, typer.Option("--if-empty", help="Do nothing when the town already exists.")
    ] = False,
) -> None:
    """Build the demo town (members, group chats, posts, creators' DMs, listings, reels)."""
    from townsquare.social.demo import is_seeded, seed

    settings = settings_or_exit()
    with migrated_sessions(settings).begin() as db:
        if is_seeded(db):
            if if_empty:
                console.print("The demo town is already there.")
                return
            err.print(
                "[red]Error:[/red] the database already has groups; seed an empty database "
                "(a new TOWNSQUARE_DATA_DIR) or use --if-empty."
            )
            raise typer.Exit(1)
        keys = seed(db, settings.ingest, lambda kind, n: console.print(f"  {kind:<13} {n:>5}"))
    url = f"http://{settings.server.host}:{settings.server.port}/login"
    typer.echo(f"Demo town ready. Log in at {url} as one of them (keys shown only now):")
    for name, key in keys.items():
        typer.echo(f"  {name:<16} {key}")


@app.command("ingest")
def ingest_file(
    kind: Annotated[
        str,
        typer.Argument(
            help="users, groups, messages, posts, comments, "
            "dm-threads, dm-messages, listings, reels or interactions."
        ),
    ],
    path: Annotated[
        Path,
        typer.Argument(help="A JSON Lines file, one row per line.", exists=True, dir_okay=False),
    ],
    partial: Annotated[bool, typer.Option(help="Store valid rows, report bad ones.")] = False,
) -> None:
    """Upsert rows from a JSON Lines file, like POST /api/<kind>:batch, in batches."""
    import json

    from rich.progress import Progress

    from townsquare.errors import InvalidBatch
    from townsquare.social.ingest import KINDS, ingest

    if kind not in KINDS:
        err.print(f"[red]Error:[/red] unknown kind '{kind}'. Use one of: {', '.join(KINDS)}.")
        raise typer.Exit(2)
    settings = settings_or_exit()
    sessions = migrated_sessions(settings)
    lines = path.read_text(encoding="utf-8").splitlines()
    rows: list[Any] = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as exc:
                err.print(f"[red]Error:[/red] line {number} is not valid JSON: {exc}")
                raise typer.Exit(1) from exc
    size = settings.ingest.max_batch_rows
    totals = {"created": 0, "updated": 0, "unchanged": 0, "rejected": 0}
    with Progress(console=err, transient=True) as progress:
        task = progress.add_task(f"Ingesting {kind}", total=len(rows))
        for start in range(0, len(rows), size):
            batch = rows[start : start + size]
            try:
                with sessions.begin() as db:
                    report = ingest(
                        db,
                        KINDS[kind],
                        batch,
                        settings=settings.ingest,
                        actor=None,
                        partial=partial,
                    )
            except InvalidBatch as exc:
                for bad in exc.rows:
                    err.print(f"  row {bad['row'] + start}: {'; '.join(bad['errors'])}")
                err.print(f"[red]Error:[/red] {exc.message}")
                raise typer.Exit(1) from exc
            for skipped in report.rejected:
                err.print(f"  skipped row {skipped.row + start}: {'; '.join(skipped.errors)}")
            totals["created"] += report.created
            totals["updated"] += report.updated
            totals["unchanged"] += report.unchanged
            totals["rejected"] += len(report.rejected)
            progress.advance(task, len(batch))
    console.print(", ".join(f"{v} {k}" for k, v in totals.items()))


@index_app.command("rebuild")
def index_rebuild(
    collection: Annotated[
        str | None, typer.Option(help="listings, posts or reels (default: all three).")
    ] = None,
) -> None:
    """Embed every listing, post and reel that is new or changed; drop what is gone.

    Resumable: items already indexed with the same content are skipped, so a run that was
    stopped continues where it stopped.
    """
    from rich.progress import Progress

    from townsquare.features.search.indexer import COLLECTIONS

    if collection is not None and collection not in COLLECTIONS:
        err.print(
            f"[red]Error:[/red] unknown collection '{collection}'. Use one of: "
            f"{', '.join(COLLECTIONS)}."
        )
        raise typer.Exit(2)
    services = build_services(settings_or_exit())
    try:
        with Progress(console=err, transient=True) as progress:
            for name in [collection] if collection else list(COLLECTIONS):
                task = progress.add_task(f"Indexing {name}", total=None)

                def advance(done: int, total: int, task: Any = task) -> None:
                    progress.update(task, completed=done, total=total)

                counts = services.indexer.sync(name, progress=advance)
                console.print(
                    f"{name}: {counts['indexed']} indexed, {counts['unchanged']} unchanged, "
                    f"{counts['removed']} removed"
                )
    finally:
        asyncio.run(services.aclose())


@feedback_app.command("export")
def feedback_export(
    path: Annotated[Path, typer.Argument(help="The JSON Lines file to write.")],
    kind: Annotated[
        str,
        typer.Option("--format", help="sft (chat), dpo (preference pairs) or kto (thumbs)."),
    ] = "sft",
    feature: Annotated[str | None, typer.Option(help="Only this feature, e.g. assistant.")] = None,
    since: Annotated[str | None, typer.Option(help="ISO time: feedback from then on.")] = None,
    until: Annotated[str | None, typer.Option(help="ISO time: feedback before then.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write members' feedback as training data (members who opted out are left out)."""
    import json
    from datetime import UTC, datetime

    from townsquare.features.feedback.service import export

    if kind not in {"sft", "dpo", "kto"}:
        err.print(f"[red]Error:[/red] --format must be sft, dpo or kto, not '{kind}'.")
        raise typer.Exit(2)
    if path.exists() and not force:
        err.print(f"[red]Error:[/red] {path} exists. Choose another path, or add --force.")
        raise typer.Exit(2)

    def moment(value: str | None, name: str) -> datetime | None:
        if value is None:
            return None
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            err.print(f"[red]Error:[/red] --{name} must be an ISO time, e.g. 2026-11-01T00:00Z.")
            raise typer.Exit(2) from exc
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

    start, end = moment(since, "since"), moment(until, "until")
    sessions = migrated_sessions(settings_or_exit())
    written = 0
    tmp = path.with_name(f".{path.name}.partial")
    with sessions() as db, tmp.open("w", encoding="utf-8") as out:
        for row in export(db, kind, feature=feature, since=start, until=end):  # type: ignore[arg-type]
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            written += 1
    tmp.replace(path)  # a complete file or none
    console.print(f"{written} {kind} rows written to {path}.")


@privacy_app.command("sweep")
def privacy_sweep() -> None:
    """Apply the retention settings now (privacy.moderation_log_days, privacy.prompt_days):
    what every replica also does every privacy.sweep_every_s."""
    from townsquare.privacy import sweep

    settings = settings_or_exit()
    done = sweep(migrated_sessions(settings), settings.privacy)
    console.print(
        f"{done['moderation_events']} moderation log entries deleted, "
        f"{done['prompts']} stored prompts redacted."
    )
