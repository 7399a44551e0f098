"""The ``townsquare`` command line: serve, init, chat, users, settings, doctor."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from townsquare.errors import TownsquareError
from townsquare.settings import Settings, env_name, iter_settings

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
console = Console()
err = Console(stderr=True)


def _settings() -> Settings:
    try:
        return Settings()
    except ValueError as exc:
        err.print(f"[red]The settings are invalid:[/red] {exc}\nFix the TOWNSQUARE_* variables.")
        raise typer.Exit(2) from exc


def _fail(exc: TownsquareError) -> typer.Exit:
    err.print(f"[red]Error:[/red] {exc.message}")
    return typer.Exit(1)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind (server.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (server.port).")] = None,
) -> None:
    """Start the HTTP server (API, /v1, web pages) with the configured backends."""
    import uvicorn

    from townsquare.app import create_app
    from townsquare.observability import configure_logging

    settings = _settings()
    configure_logging(settings.log_level, as_json=settings.log_json)
    host = host or settings.server.host
    port = port or settings.server.port
    err.print(f"townsquare on http://{host}:{port}  (log in at http://{host}:{port}/login)")
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        # on SIGTERM, streams still open after this long are closed so the process exits
        timeout_graceful_shutdown=max(1, round(settings.server.shutdown_timeout_s)),
    )


@app.command()
def init() -> None:
    """Migrate the database and, if it has no users, create the first admin and print its key."""
    from townsquare.identity import count_users, create_user
    from townsquare.storage.db import make_engine, make_sessions, migrate

    settings = _settings()
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    with make_sessions(engine).begin() as db:
        if count_users(db):
            console.print("Database is up to date; users already exist.")
            return
        user, key = create_user(db, "admin", role="admin", display_name="Admin")
    host, port = settings.server.host, settings.server.port
    typer.echo(
        f"Created the first admin, '{user.name}'. Its API key (shown only now, keep it):\n\n"
        f"    {key}\n\n"
        f"Log in at http://{host}:{port}/login with this key, or call the API with\n"
        f"    curl -H 'Authorization: Bearer {key}' http://{host}:{port}/api/conversations"
    )
    engine.dispose()


@users_app.command("create")
def users_create(
    name: str,
    role: Annotated[str, typer.Option(help="member, creator or admin.")] = "member",
    display_name: Annotated[str, typer.Option(help="Name shown to others.")] = "",
) -> None:
    """Create a user and print their first API key (shown once)."""
    from townsquare.identity import create_user
    from townsquare.storage.db import make_engine, make_sessions, migrate

    engine = make_engine(_settings().resolved_database_url)
    migrate(engine)
    try:
        with make_sessions(engine).begin() as db:
            user, key = create_user(db, name, role=role, display_name=display_name)
    except TownsquareError as exc:
        raise _fail(exc) from exc
    typer.echo(f"Created {user.role} '{user.name}'. API key (shown only now):\n{key}")


@users_app.command("key")
def users_key(name: str) -> None:
    """Issue another API key for an existing user."""
    from townsquare.identity import find_user, issue_key
    from townsquare.storage.db import make_engine, make_sessions, migrate

    engine = make_engine(_settings().resolved_database_url)
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

    from townsquare.storage.db import make_engine, make_sessions, migrate
    from townsquare.storage.tables import User

    engine = make_engine(_settings().resolved_database_url)
    migrate(engine)
    table = Table("id", "name", "role", "display name", "created")
    with make_sessions(engine)() as db:
        for user in db.scalars(select(User).order_by(User.id)):
            table.add_row(
                str(user.id), user.name, user.role, user.display_name, f"{user.created_at:%Y-%m-%d}"
            )
    console.print(table)


def _migrated_sessions(settings: Settings) -> Any:
    from townsquare.storage.db import make_engine, make_sessions, migrate

    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    return make_sessions(engine)


@seed_app.command("demo")
def seed_demo(
    if_empty: Annotated[
        bool, typer.Option("--if-empty", help="Do nothing when the town already exists.")
    ] = False,
) -> None:
    """Build the demo town (members, group chats, posts, creators' DMs, listings, reels)."""
    from townsquare.social.demo import is_seeded, seed

    settings = _settings()
    with _migrated_sessions(settings).begin() as db:
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
    settings = _settings()
    sessions = _migrated_sessions(settings)
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
    from townsquare.services import Services

    if collection is not None and collection not in COLLECTIONS:
        err.print(
            f"[red]Error:[/red] unknown collection '{collection}'. Use one of: "
            f"{', '.join(COLLECTIONS)}."
        )
        raise typer.Exit(2)
    services = Services.build(_settings())
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


@app.command("search")
def search_cli(
    query: str,
    category: Annotated[str | None, typer.Option(help="Only this category.")] = None,
    max_price: Annotated[float | None, typer.Option(help="Highest price.")] = None,
    near: Annotated[str | None, typer.Option(help="'lat,lon' or a place name.")] = None,
    as_user: Annotated[str, typer.Option("--as", help="Search as this user.")] = "admin",
) -> None:
    """Search the marketplace from the terminal, as the server would answer a member."""
    from townsquare.features.search.schemas import ListingFilters
    from townsquare.features.search.service import search_listings
    from townsquare.identity import find_user
    from townsquare.services import Services

    services = Services.build(_settings())

    async def run() -> None:
        try:
            with services.sessions() as db:
                user = find_user(db, as_user)
                if user is None:
                    err.print(f"[red]Error:[/red] no user '{as_user}'. Use --as NAME.")
                    raise typer.Exit(1)
                filters = ListingFilters(category=category, max_price=max_price, near=near)
                results = search_listings(
                    db,
                    user,
                    query,
                    filters,
                    page=1,
                    page_size=10,
                    embedder=services.embed,
                    vectors=services.vectors,
                )
        finally:
            await services.aclose()
        table = Table("id", "title", "price", "category", "location", "matched")
        for hit in results.data:
            table.add_row(
                hit.id,
                hit.title,
                f"{hit.price} {hit.currency}",
                hit.category,
                hit.location,
                ", ".join(hit.matched),
            )
        console.print(table)
        console.print(f"{results.total} matching listings.")

    try:
        asyncio.run(run())
    except TownsquareError as exc:
        raise _fail(exc) from exc


def _run_as(as_user: str, work: Any) -> None:
    """Build services, find the user, run ``work(services, db, user)``, close; errors to exits."""
    from townsquare.identity import find_user
    from townsquare.services import Services

    services = Services.build(_settings())

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
        raise _fail(exc) from exc


@suggest_app.command("comments")
def suggest_comments_cli(
    post_id: Annotated[str, typer.Argument(help="The post's external id.")],
    count: Annotated[int, typer.Option(min=1, max=5, help="How many (1-5).")] = 3,
    tone: Annotated[
        str, typer.Option(help="supportive, curious, funny or congratulatory.")
    ] = "supportive",
    as_user: Annotated[str, typer.Option("--as", help="Suggest as this user.")] = "admin",
) -> None:
    """Suggest comments on a post, as the API would for that user."""
    from pydantic import ValidationError

    from townsquare.features.suggestions.schemas import CommentRequest
    from townsquare.features.suggestions.service import suggest_comments
    from townsquare.social import access

    try:
        request = CommentRequest(count=count, tone=tone)
    except ValidationError as exc:
        err.print(f"[red]Error:[/red] {exc.errors()[0]['msg']} (--tone).")
        raise typer.Exit(2) from exc

    async def work(services: Any, db: Any, user: Any) -> None:
        post = access.post_visible_to(db, user, post_id)
        result = await suggest_comments(
            db, services.sessions, user, post, request, text=services.guarded_text
        )
        for suggestion in result.suggestions:
            console.print(f"- {suggestion}", markup=False, highlight=False)
        console.print(f"(generation {result.generation_id}, {result.dropped} dropped)")

    _run_as(as_user, work)


@suggest_app.command("replies")
def suggest_replies_cli(
    thread_id: Annotated[str, typer.Argument(help="The DM thread's external id.")],
    as_user: Annotated[str, typer.Option("--as", help="The creator in the thread.")] = "admin",
) -> None:
    """Suggest three replies to a fan's latest message, in the creator's voice if switched on."""
    from townsquare.features.suggestions.style import suggest_replies
    from townsquare.social import access

    async def work(services: Any, db: Any, user: Any) -> None:
        thread = access.thread_visible_to(db, user, thread_id)
        result = await suggest_replies(
            db,
            services.sessions,
            user,
            thread,
            text=services.guarded_text,
            embedder=services.embed,
            vectors=services.vectors,
        )
        for reply in result.replies:
            console.print(f"- {reply}", markup=False, highlight=False)
        voice = "in your style" if result.styled else "style off (PUT /api/creators/me/style)"
        console.print(f"(generation {result.generation_id}, {voice})")

    _run_as(as_user, work)


@suggest_app.command("topics")
def suggest_topics_cli(
    group_id: Annotated[str, typer.Argument(help="The group's external id.")],
    count: Annotated[int, typer.Option(min=1, max=5)] = 3,
    as_user: Annotated[str, typer.Option("--as", help="A member of the group.")] = "admin",
) -> None:
    """Suggest new topics for a group chat, each with an opener."""
    from townsquare.features.groups.service import TopicRequest, suggest_topics
    from townsquare.social import access

    async def work(services: Any, db: Any, user: Any) -> None:
        group = access.group_visible_to(db, user, group_id)
        result = await suggest_topics(
            db,
            services.sessions,
            user,
            group,
            TopicRequest(count=count),
            text=services.guarded_text,
            embedder=services.embed,
        )
        for topic in result.topics:
            console.print(f"- {topic.topic}: {topic.opener}", markup=False, highlight=False)
        console.print(f"(generation {result.generation_id}, {result.dropped} dropped)")

    _run_as(as_user, work)


@app.command("catch-up")
def catch_up_cli(
    group_id: Annotated[str, typer.Argument(help="The group's external id.")],
    since: Annotated[str | None, typer.Option(help="ISO time; default: 24 hours ago.")] = None,
    as_user: Annotated[str, typer.Option("--as", help="A member of the group.")] = "admin",
) -> None:
    """What a member missed in a group chat, each point citing its messages."""
    from datetime import datetime, timedelta

    from townsquare.features.groups.service import catch_up, now
    from townsquare.social import access

    try:
        moment = datetime.fromisoformat(since) if since else now() - timedelta(days=1)
    except ValueError as exc:
        err.print("[red]Error:[/red] --since must be an ISO time, e.g. 2026-11-28T18:00:00Z.")
        raise typer.Exit(2) from exc

    async def work(services: Any, db: Any, user: Any) -> None:
        group = access.group_visible_to(db, user, group_id)
        result = await catch_up(
            db, services.sessions, user, group, moment, text=services.guarded_text
        )
        if not result.points:
            console.print("Nothing new since then.")
        for point in result.points:
            console.print(f"- {point.text} ({', '.join(point.message_ids)})", markup=False)

    _run_as(as_user, work)


@app.command("describe")
def describe_cli(
    listing_id: Annotated[str, typer.Argument(help="The listing's external id.")],
    tone: Annotated[str, typer.Option(help="friendly, professional or playful.")] = "friendly",
    length: Annotated[str, typer.Option(help="short, medium or long.")] = "short",
    as_user: Annotated[str, typer.Option("--as", help="The seller (or an admin).")] = "admin",
) -> None:
    """Draft a product description from a listing's attributes (stored as a draft)."""
    from pydantic import ValidationError

    from townsquare.features.shops.service import DescriptionRequest, describe, seller_listing
    from townsquare.social import access

    try:
        request = DescriptionRequest.model_validate({"tone": tone, "length": length})
    except ValidationError as exc:
        err.print(f"[red]Error:[/red] {exc.errors()[0]['msg']} (--tone / --length).")
        raise typer.Exit(2) from exc

    async def work(services: Any, db: Any, user: Any) -> None:
        listing = seller_listing(db, user, access.listing_visible_to(db, user, listing_id))
        draft = await describe(
            db, services.sessions, user, listing, request, text=services.guarded_text
        )
        console.print(draft.title, style="bold", markup=False, highlight=False)
        console.print(draft.description, markup=False, highlight=False)
        for highlight in draft.highlights:
            console.print(f"- {highlight}", markup=False, highlight=False)
        console.print("tags: " + ", ".join(draft.tags), markup=False)
        console.print(f"(draft {draft.generation_id}; removed as invented: {len(draft.removed)})")

    _run_as(as_user, work)


@app.command("summarize")
def summarize_cli(
    query: str,
    as_user: Annotated[str, typer.Option("--as", help="Summarise as this user.")] = "admin",
) -> None:
    """A short answer to a search from the results, every sentence citing its sources."""
    from townsquare.features.search.summary import summarize

    async def work(services: Any, db: Any, user: Any) -> None:
        result = await summarize(
            db,
            services.sessions,
            user,
            query,
            text=services.guarded_text,
            embedder=services.embed,
            vectors=services.vectors,
            min_similarity=services.settings.search.min_similarity,
        )
        if not result.sources:
            console.print("Nothing found to summarise. Try other words.")
            return
        console.print(result.answer, markup=False, highlight=False)
        for source in result.sources:
            console.print(f"[{source.n}] {source.kind} {source.id}: {source.title}", markup=False)

    _run_as(as_user, work)


def _provenance() -> Any:
    from townsquare.safety.provenance import Provenance

    settings = _settings()
    try:
        return Provenance(_migrated_sessions(settings), settings)
    except ValueError as exc:
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
        raise _fail(exc) from exc


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
    table = Table("setting", "environment variable", "value", "description", show_lines=False)
    for name, value, description in iter_settings(_settings()):
        table.add_row(name, env_name(name), repr(value), description)
    console.print(table)


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
def chat(
    system: Annotated[str | None, typer.Option(help="A persona for this chat.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Longest reply in tokens.")] = None,
) -> None:
    """Chat with the assistant in the terminal, replies streamed as they are written.

    Uses the configured backend in-process, through the same safety pipeline as the server.
    Type /exit (or press Ctrl-D) to leave.
    """
    from townsquare.backends.base import GenerationOptions, Message
    from townsquare.features.assistant.service import fit_context, system_prompt
    from townsquare.safety.pipeline import Context
    from townsquare.services import Services

    settings = _settings()
    services = Services.build(settings)
    text = services.guarded_text
    limit = max_tokens or settings.text.default_max_tokens
    history: list[Message] = []
    console.print(f"Chatting with [bold]{text.model_id}[/bold]. /exit to leave.")

    async def turn(content: str) -> str:
        messages = fit_context(
            Message("system", system_prompt(system)),
            history,
            Message("user", content),
            count=text.count_message_tokens,
            window=text.context_window,
            max_tokens=limit,
        )
        pieces: list[str] = []
        async for delta in text.stream(
            messages, GenerationOptions(max_tokens=limit), Context("cli")
        ):
            pieces.append(delta.text)
            console.print(delta.text, end="", markup=False, highlight=False)
        console.print()
        return "".join(pieces)

    async def loop() -> None:
        try:
            while True:
                try:
                    content = await asyncio.to_thread(
                        console.input, "[bold green]you>[/bold green] "
                    )
                except EOFError:
                    break
                if content.strip() in {"/exit", "/quit"}:
                    break
                if not content.strip():
                    continue
                try:
                    answer = await turn(content)
                except TownsquareError as exc:
                    err.print(f"[red]{exc.message}[/red]")
                    continue
                history.extend([Message("user", content), Message("assistant", answer)])
        finally:
            await services.aclose()

    asyncio.run(loop())


@app.command()
def doctor() -> None:
    """Check the settings, the model file, the database and the backend; print what to fix."""
    from townsquare.backends.registry import build_text_backend, model_path_for, parse_spec
    from townsquare.storage.db import make_engine, migration_status

    problems = 0

    def report(ok: bool, what: str, fix: str = "") -> None:
        nonlocal problems
        problems += not ok
        mark = "[green]ok[/green]  " if ok else "[red]FAIL[/red]"
        console.print(f"{mark} {what}" + ("" if ok else f"\n      -> {fix}"))

    settings = _settings()
    report(True, "settings parsed")
    try:
        kind, target = parse_spec(settings.text.backend)
    except TownsquareError as exc:
        report(False, f"text backend '{settings.text.backend}'", exc.message)
        raise typer.Exit(1) from exc
    if kind == "llamacpp":
        try:
            path = model_path_for(target)
            report(
                path.is_file(),
                f"model file {path}",
                "Point TOWNSQUARE_TEXT__BACKEND at an existing GGUF file.",
            )
        except TownsquareError as exc:
            report(False, "model file", exc.message)
    url = settings.resolved_database_url
    try:
        engine = make_engine(url)
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
            f"database {url}",
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
    if problems:
        console.print(f"\n{problems} problem(s) found.")
        raise typer.Exit(1)
    console.print("\nAll checks passed.")
