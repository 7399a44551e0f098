"""What every command shares: the Typer apps, the consoles, settings and the data directory."""

from __future__ import annotations

import asyncio
from typing import Any

import typer
from rich.console import Console

from townsquare.errors import TownsquareError
from townsquare.settings import Settings

app = typer.Typer(
    help="townsquare: a self-hostable AI layer for social, community and marketplace apps.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
users_app = typer.Typer(help="Create and list users and their API keys.", no_args_is_help=True)
app.add_typer(users_app, name="users")
seed_app = typer.Typer(help="Fill the database with example content.", no_args_is_help=True)
app.add_typer(seed_app, name="seed")
index_app = typer.Typer(help="Maintain the search indexes.", no_args_is_help=True)
app.add_typer(index_app, name="index")
suggest_app = typer.Typer(help="Draft text with the writing features.", no_args_is_help=True)
app.add_typer(suggest_app, name="suggest")
watermark_app = typer.Typer(
    help="Mark images with the invisible watermark and check images for it.",
    no_args_is_help=True,
)
app.add_typer(watermark_app, name="watermark")
feedback_app = typer.Typer(help="Export members' feedback for training.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")
privacy_app = typer.Typer(help="Retention of members' words.", no_args_is_help=True)
app.add_typer(privacy_app, name="privacy")
batch_app = typer.Typer(
    help="Work over the whole town, in this process or on a Ray cluster (--ray).",
    no_args_is_help=True,
)
app.add_typer(batch_app, name="batch")
model_app = typer.Typer(
    help="The optional bigger local model (Qwen2.5-Coder-0.5B-Instruct).", no_args_is_help=True
)
app.add_typer(model_app, name="model")
console = Console()
err = Console(stderr=True, soft_wrap=True)  # never cut a path or a fix in two


def settings_or_exit() -> Settings:
    """The settings, resolved once per command; a bad value exits with what to fix."""
    try:
        settings = Settings()
    except ValueError as exc:
        err.print(f"[red]The settings are invalid:[/red] {exc}\nFix the TOWNSQUARE_* variables.")
        raise typer.Exit(2) from exc
    announce_data_dir(settings)
    return settings


def announce_data_dir(settings: Settings) -> None:
    """Say which data directory the command uses (on stderr), and warn when it is new: a
    command run with another TOWNSQUARE_DATA_DIR would otherwise silently start another town
    (a new database and a new watermark key)."""
    path = settings.data_dir
    if settings.database_url and not (path / "watermark.key").exists():
        return  # the database lives elsewhere; the data directory only holds the key
    if path.exists() and any(path.iterdir()):
        err.print(f"[dim]data directory: {path}[/dim]")
    else:
        err.print(
            f"[yellow]data directory: {path} is new[/yellow] (a new database and watermark key "
            "will be made there). If your town lives elsewhere, set TOWNSQUARE_DATA_DIR."
        )


def fail(exc: TownsquareError) -> typer.Exit:
    """Print a townsquare error's message and exit with 1."""
    err.print(f"[red]Error:[/red] {exc.message}")
    return typer.Exit(1)


def command_engine(settings: Settings) -> Any:
    """An engine on the configured database (its connections close when the command's process
    ends)."""
    from townsquare.storage.db import make_engine

    return make_engine(
        settings.resolved_database_url,
        prepared_statements=settings.database_prepared_statements,
    )


def migrated_sessions(settings: Settings) -> Any:
    """Sessions on the configured database, migrated to the newest schema."""
    from townsquare.storage.db import make_sessions, migrate

    engine = command_engine(settings)
    migrate(engine)
    return make_sessions(engine)


def build_services(settings: Settings) -> Any:
    """The services for a command; the chat model loads only if the command generates."""
    from townsquare.services import Services

    return Services.build(settings, lazy_text=True)


def run_as(as_user: str, work: Any) -> None:
    """Build services, find the user, run ``work(services, db, user)``, close; errors to exits."""
    from townsquare.identity import find_user

    services = build_services(settings_or_exit())

    async def run() -> None:
        try:
            with services.sessions() as db:
                user = find_user(db, as_user)
                if user is None:
                    err.print(f"[red]Error:[/red] no user '{as_user}'. Use --as NAME.")
                    raise typer.Exit(1)
                await work(services, db, user)
        finally:
            await services.aclose()

    try:
        asyncio.run(run())
    except TownsquareError as exc:
        raise fail(exc) from exc
