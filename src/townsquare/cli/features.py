"""The features from the terminal, as the server would answer a member."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from townsquare.cli.common import (
    app,
    build_services,
    console,
    err,
    run_as,
    settings_or_exit,
    suggest_app,
)
from townsquare.errors import TownsquareError


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

    async def work(services: Any, db: Any, user: Any) -> None:
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
            tuning=services.settings.search,
        )
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

    run_as(as_user, work)


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
            db,
            services.sessions,
            user,
            post,
            request,
            text=services.guarded_text,
            embedder=services.embed,
            vectors=services.vectors,
            writing=services.settings.writing,
        )
        for suggestion in result.suggestions:
            console.print(f"- {suggestion}", markup=False, highlight=False)
        console.print(f"(generation {result.generation_id}, {result.dropped} dropped)")

    run_as(as_user, work)


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
            writing=services.settings.writing,
        )
        for reply in result.replies:
            console.print(f"- {reply}", markup=False, highlight=False)
        voice = "in your style" if result.styled else "style off (PUT /api/creators/me/style)"
        console.print(f"(generation {result.generation_id}, {voice})")

    run_as(as_user, work)


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
            writing=services.settings.writing,
        )
        for topic in result.topics:
            console.print(f"- {topic.topic}: {topic.opener}", markup=False, highlight=False)
        console.print(f"(generation {result.generation_id}, {result.dropped} dropped)")

    run_as(as_user, work)


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
            db,
            services.sessions,
            user,
            group,
            moment,
            text=services.guarded_text,
            embedder=services.embed,
            writing=services.settings.writing,
        )
        if not result.points:
            console.print("Nothing new since then.")
        for point in result.points:
            console.print(f"- {point.text} ({', '.join(point.message_ids)})", markup=False)

    run_as(as_user, work)


@app.command("describe")
def describe_cli(
    listing_id: Annotated[str, typer.Argument(help="The listing's external id.")],
    tone: Annotated[str, typer.Option(help="friendly, professional or playful.")] = "friendly",
    length: Annotated[str, typer.Option(help="short, medium or long.")] = "short",
    as_user: Annotated[str, typer.Option("--as", help="The seller (or an admin).")] = "admin",
) -> None:
    """Draft a product description from a listing's attributes (stored as a draft)."""
    from pydantic import ValidationError

    from townsquare.features.shops.service import DescriptionRequest, describe
    from townsquare.social import access

    try:
        request = DescriptionRequest.model_validate({"tone": tone, "length": length})
    except ValidationError as exc:
        err.print(f"[red]Error:[/red] {exc.errors()[0]['msg']} (--tone / --length).")
        raise typer.Exit(2) from exc

    async def work(services: Any, db: Any, user: Any) -> None:
        listing = access.listing_of_seller(db, user, listing_id)
        draft = await describe(
            db,
            services.sessions,
            user,
            listing,
            request,
            text=services.guarded_text,
            writing=services.settings.writing,
        )
        console.print(draft.title, style="bold", markup=False, highlight=False)
        console.print(draft.description, markup=False, highlight=False)
        for highlight in draft.highlights:
            console.print(f"- {highlight}", markup=False, highlight=False)
        console.print("tags: " + ", ".join(draft.tags), markup=False)
        console.print(f"(draft {draft.generation_id}; removed as invented: {len(draft.removed)})")

    run_as(as_user, work)


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
            tuning=services.settings.search,
            writing=services.settings.writing,
        )
        if not result.sources:
            console.print("Nothing found to summarise. Try other words.")
            return
        console.print(result.answer, markup=False, highlight=False)
        for source in result.sources:
            console.print(f"[{source.n}] {source.kind} {source.id}: {source.title}", markup=False)

    run_as(as_user, work)


@app.command()
def chat(
    system: Annotated[str | None, typer.Option(help="A persona for this chat.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Longest reply in tokens.")] = None,
    as_user: Annotated[
        str | None,
        typer.Option("--as", help="Chat as this member: the town's tools answer as them."),
    ] = None,
) -> None:
    """Chat with the assistant in the terminal, replies streamed as they are written.

    Uses the configured backend in-process, through the same safety pipeline as the server.
    With --as, requests for the town's tools (search, reels, catch-up...) are answered by them,
    with that member's permissions. Type /exit (or press Ctrl-D) to leave.
    """
    from townsquare.backends.base import GenerationOptions, Message
    from townsquare.features.assistant.service import fit_context, system_prompt
    from townsquare.features.assistant.tools import Asker
    from townsquare.identity import find_user
    from townsquare.safety.pipeline import Context

    settings = settings_or_exit()
    services = build_services(settings)
    text = services.guarded_text
    limit = max_tokens or settings.text.default_max_tokens
    history: list[Message] = []
    member = None
    if as_user is not None:
        with services.sessions() as db:
            member = find_user(db, as_user)
            if member is not None:
                db.expunge(member)
        if member is None:  # the session is closed first: its connection goes back
            asyncio.run(services.aclose())
            err.print(f"[red]Error:[/red] no user '{as_user}'. Use --as NAME.")
            raise typer.Exit(1)
    console.print(f"Chatting with [bold]{text.model_id}[/bold]. /exit to leave.")

    async def tools(content: str) -> str | None:
        if member is None:
            return None
        context = Context("cli", member.id, member.role)
        answer = await services.agent.tool_answer(content, Asker(member.id), context)
        if answer is None:
            return None
        console.print(answer.text, markup=False, highlight=False)
        for card in answer.cards:
            shown = {k: v for k, v in card.items() if k not in {"type", "links", "url"}}
            console.print(
                f"  [{card['type']}] " + ", ".join(f"{k}: {v}" for k, v in shown.items()),
                markup=False,
                highlight=False,
            )
        return str(answer.text)

    async def turn(content: str) -> str:
        found = await tools(content)
        if found is not None:
            return found
        messages = fit_context(
            Message("system", system_prompt(system)),
            history,
            Message("user", content),
            count=text.count_message_tokens,
            window=text.context_window,
            max_tokens=limit,
            history_tokens=settings.assistant.history_tokens,
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


@app.command("imagine")
def imagine_cli(
    prompt: Annotated[str, typer.Argument(help="What to picture.")],
    out: Annotated[Path, typer.Option(help="PNG file to write (n > 1: out-1.png, ...).")] = Path(
        "imagine.png"
    ),
    size: Annotated[str | None, typer.Option(help="WIDTHxHEIGHT, one of images.sizes.")] = None,
    n: Annotated[int, typer.Option(help="How many images.")] = 1,
    seed: Annotated[int | None, typer.Option(help="Same seed and prompt: same image.")] = None,
    style: Annotated[str, typer.Option(help="A style preset: photo, watercolor, ...")] = "none",
    as_user: Annotated[str, typer.Option("--as", help="Whose gallery it goes to.")] = "admin",
) -> None:
    """Make images with the configured image model; each is moderated, checked and marked,
    like every image townsquare makes."""
    from pydantic import ValidationError

    from townsquare.features.imagine.schemas import ImagineRequest

    try:
        request = ImagineRequest.model_validate(
            {"prompt": prompt, "size": size, "n": n, "seed": seed, "style": style}
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        err.print(f"[red]Error:[/red] {first['loc'][0]}: {first['msg']}.")
        raise typer.Exit(2) from exc

    async def work(services: Any, db: Any, user: Any) -> None:
        made = await asyncio.to_thread(services.images.imagine, db, user, request, source="cli")
        for i, item in enumerate(made, 1):
            target = out if len(made) == 1 else out.with_name(f"{out.stem}-{i}{out.suffix}")
            target.write_bytes(item.png)
            console.print(
                f"{target}: {item.row.width}x{item.row.height}, seed {item.row.seed}, "
                f"image {item.row.external_id} (marked, payload {item.row.payload})",
                markup=False,
            )

    run_as(as_user, work)
