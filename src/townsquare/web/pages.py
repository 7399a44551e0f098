"""The members' pages: home, group chat, posts, the creator inbox, the marketplace, reels,
Imagine and the assistant. Each page reads through the same access rules and feature functions
as the JSON API (often by calling the API's route function itself) and renders HTML; actions
are htmx posts that answer with a fragment, or plain form posts that redirect."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import func, or_, select
from starlette.concurrency import run_in_threadpool

from townsquare.api.deps import DbDep, RowId, ServicesDep
from townsquare.errors import InvalidField
from townsquare.features.feedback import service as feedback
from townsquare.features.feedback.service import FeedbackIn
from townsquare.features.groups import routes as group_api
from townsquare.features.groups.service import TopicRequest
from townsquare.features.imagine import routes as image_api
from townsquare.features.imagine.schemas import ImagineRequest, ReimagineRequest
from townsquare.features.reels.service import recommend_reels
from townsquare.features.search import routes as search_api
from townsquare.features.search import service as search_service
from townsquare.features.search.schemas import ListingFilters
from townsquare.features.search.summary import SummaryRequest
from townsquare.features.shops import routes as shop_api
from townsquare.features.shops.service import Accept, DescriptionRequest
from townsquare.features.suggestions import routes as suggestion_api
from townsquare.features.suggestions.schemas import CommentRequest
from townsquare.features.suggestions.style import StyleUpdate, style_for, style_out, update_style
from townsquare.social import access, reads
from townsquare.social.schemas import CONDITIONS
from townsquare.storage.social_tables import (
    Comment,
    DMMessage,
    Generation,
    Group,
    GroupMessage,
    GroupRead,
    Listing,
    Membership,
)
from townsquare.storage.tables import User
from townsquare.web.common import LoginRequired, ViewerDep, render, viewer

router = APIRouter(include_in_schema=False)
HOME_GROUPS = 50  # the home page lists at most this many of the member's groups


def rule(name: str) -> dict[str, Any]:
    """The access rule a page declares (the same names as the API's)."""
    return {"openapi_extra": {"x-access": name}}


def _text(value: str, settings: Any, field: str) -> str:
    text = value.strip()
    limit = settings.ingest.max_text_chars
    if not text or len(text) > limit:
        raise InvalidField(
            f"{field} must have 1 to {limit} characters (ingest.max_text_chars).", field
        )
    return text


def _number(value: str, field: str, low: float, high: float) -> float | None:
    """A number from a form field (empty: None), within [low, high]."""
    if not value.strip():
        return None
    try:
        number = float(value)
    except ValueError:
        raise InvalidField(f"{field} must be a number, or left empty.", field) from None
    if not low <= number <= high:
        raise InvalidField(f"{field} must be between {low:g} and {high:g}.", field)
    return number


def display_names(db: Any, handles: set[str]) -> dict[str, str]:
    """Author handles as the API shows them (the host app's id, or the user name when there is
    none) -> display names, in one query; the pages greet people by name."""
    wanted = {h for h in handles if h}
    if not wanted:
        return {}
    rows = db.execute(
        select(User.external_id, User.name, User.display_name).where(
            or_(User.external_id.in_(wanted), User.name.in_(wanted))
        )
    )
    return {(ext or name): (display or name) for ext, name, display in rows}


def _ai_names(services: Any) -> set[str]:
    return {services.settings.assistant.user_id, services.settings.assistant.name}


# --- home --------------------------------------------------------------------------------


def unread_counts(db: Any, user: Any, group_ids: list[int]) -> dict[int, int]:
    """Messages in each group after the member's read marker (all of them if never opened);
    one query, counted with the groups' message index."""
    if not group_ids:
        return {}
    marker = (
        select(GroupRead.group_id, GroupRead.last_message_id)
        .where(GroupRead.user_id == user.id)
        .subquery()
    )
    rows = db.execute(
        select(GroupMessage.group_id, func.count())
        .outerjoin(marker, marker.c.group_id == GroupMessage.group_id)
        .where(
            GroupMessage.group_id.in_(group_ids),
            GroupMessage.deleted_at.is_(None),
            GroupMessage.author_id != user.id,
            GroupMessage.id > func.coalesce(marker.c.last_message_id, 0),
        )
        .group_by(GroupMessage.group_id)
    )
    return {group_id: count for group_id, count in rows}


def member_groups(db: Any, user: User) -> list[Any]:
    """The groups the user belongs to, by name, at most HOME_GROUPS (admins too:
    reads.my_groups would list every group of the town for them)."""
    rows = db.scalars(
        select(Group)
        .join(Membership, Membership.group_id == Group.id)
        .where(Membership.user_id == user.id)
        .order_by(Group.name)
        .limit(HOME_GROUPS)
    )
    return [reads.group_out(db, user, g) for g in rows]


@router.get("/", response_model=None, **rule("public"))
def home(request: Request, db: DbDep, services: ServicesDep) -> Response:
    """The member's groups with unread counts, and recent posts they can see."""
    try:
        who = viewer(request, db, services)
    except LoginRequired:
        return RedirectResponse("/login", status_code=303)
    groups = member_groups(db, who.user)
    wanted = [g.id for g in groups]
    rows = (
        dict(
            db.execute(
                select(Group.external_id, Group.id).where(Group.external_id.in_(wanted))
            ).all()
        )
        if wanted
        else {}
    )
    unread = unread_counts(db, who.user, [rows[g.id] for g in groups if g.id in rows])
    posts = reads.feed(db, who.user, limit=10, offset=0)
    return render(
        request,
        "home.html",
        who,
        "home",
        names=display_names(db, {p.author for p in posts}),
        groups=[(g, unread.get(rows.get(g.id, 0), 0)) for g in groups],
        posts=posts,
    )


# --- group chat --------------------------------------------------------------------------


@router.get("/groups/{group_id}", **rule("group-member"))
def group_page(
    group_id: str, request: Request, who: ViewerDep, db: DbDep, services: ServicesDep
) -> HTMLResponse:
    """A group's chat: messages (live), the composer, catch-up, topics and the group's images."""
    group = access.group_visible_to(db, who.user, group_id)
    info = reads.group_out(db, who.user, group)
    messages = list(reversed(reads.group_messages(db, who.user, group_id, limit=50, offset=0)))
    latest = db.scalar(select(func.max(GroupMessage.id)).where(GroupMessage.group_id == group.id))
    if latest:
        marker = db.get(GroupRead, (who.user.id, group.id))
        if marker is None:
            db.add(GroupRead(user_id=who.user.id, group_id=group.id, last_message_id=latest))
        else:
            marker.last_message_id = latest
        db.commit()
    rows, _ = services.images.gallery(db, who.user, group=group, limit=8, before=None)
    from townsquare.features.imagine.service import outs

    persona = services.settings.assistant.name
    made = {m.generation_id for m in messages if m.generation_id}
    rateable = (  # the assistant's replies to this viewer: theirs to rate
        set(
            db.scalars(
                select(Generation.id).where(
                    Generation.id.in_(made), Generation.user_id == who.user.id
                )
            )
        )
        if made
        else set()
    )
    return render(
        request,
        "group.html",
        who,
        "home",
        group=info,
        me=who.user.external_id or who.user.name,
        rateable=rateable,
        messages=messages,
        names=display_names(db, {m.author for m in messages}),
        ai_names=_ai_names(services),
        persona=persona,
        images=outs(db, rows),
    )


@router.post("/groups/{group_id}/messages", **rule("group-member"))
async def group_send(
    group_id: str,
    request: Request,
    who: ViewerDep,
    db: DbDep,
    services: ServicesDep,
    text: Annotated[str, Form()],
) -> Response:
    """Send a message into the group (the API's rules; an @-mention asks the assistant). The
    message arrives on the page through the group's event stream."""
    from townsquare.features.assistant.group_routes import post_message
    from townsquare.features.assistant.groups import GroupMessageIn

    await post_message(group_id, GroupMessageIn(text=text), who.user, db, services)
    if request.headers.get("hx-request") == "true":
        return Response(status_code=204)
    return RedirectResponse(f"/groups/{group_id}", status_code=303)


@router.get("/groups/{group_id}/catch-up", **rule("group-member"))
async def group_catch_up(
    group_id: str,
    request: Request,
    who: ViewerDep,
    db: DbDep,
    services: ServicesDep,
    hours: Annotated[int, Query(ge=1, le=24 * 30)] = 24,
) -> HTMLResponse:
    """What the member missed, each point linking to the messages it cites (a fragment)."""
    since = datetime.now(UTC) - timedelta(hours=hours)
    result = await group_api.group_catch_up(group_id, who.user, db, services, since)
    return render(request, "fragments/catch_up.html", who, result=result, group_id=group_id)


@router.post("/groups/{group_id}/topics", **rule("group-member"))
async def group_topics(
    group_id: str, request: Request, who: ViewerDep, db: DbDep, services: ServicesDep
) -> HTMLResponse:
    """Topic suggestions for the group, each with an opener to send (a fragment)."""
    result = await group_api.topic_suggestions(group_id, TopicRequest(), who.user, db, services)
    return render(request, "fragments/topics.html", who, result=result)


# --- posts -------------------------------------------------------------------------------


@router.get("/posts/{post_id}", **rule("post-viewer"))
def post_page(post_id: str, request: Request, who: ViewerDep, db: DbDep) -> HTMLResponse:
    """A post with its comments and the comment composer with suggestions."""
    post = reads.post(db, who.user, post_id)
    authors = {post.author} | {c.author for c in post.comments or []}
    return render(request, "post.html", who, "home", post=post, names=display_names(db, authors))


@router.post("/posts/{post_id}/suggestions", **rule("post-viewer"))
async def post_suggestions(
    post_id: str,
    request: Request,
    who: ViewerDep,
    db: DbDep,
    services: ServicesDep,
    tone: Annotated[str, Form()] = "supportive",
) -> HTMLResponse:
    """Comment suggestions to pick from (a fragment)."""
    body = CommentRequest.model_validate({"tone": tone})
    result = await suggestion_api.comment_suggestions(post_id, body, who.user, db, services)
    return render(request, "fragments/suggestions.html", who, result=result, target="comment")


@router.post("/posts/{post_id}/comments", **rule("post-viewer"))
def post_comment(
    post_id: str, who: ViewerDep, db: DbDep, services: ServicesDep, text: Annotated[str, Form()]
) -> RedirectResponse:
    """Post a comment as the member (the ingestion length rule applies)."""
    post = access.post_visible_to(db, who.user, post_id)
    comment = Comment(
        external_id=f"ts-{uuid.uuid4().hex}",
        post_id=post.id,
        author_id=who.user.id,
        text=_text(text, services.settings, "text"),
        created_at=datetime.now(UTC),
    )
    db.add(comment)
    db.commit()
    return RedirectResponse(f"/posts/{post_id}#comment-{comment.external_id}", status_code=303)


# --- creator inbox -----------------------------------------------------------------------


@router.get("/inbox", **rule("authenticated"))
def inbox(request: Request, who: ViewerDep, db: DbDep) -> HTMLResponse:
    """The member's DM threads; creators also reach their style profile from here."""
    threads = reads.my_threads(db, who.user, limit=100, offset=0)
    me = who.user.external_id or who.user.name
    names = display_names(db, {p for t in threads for p in t.participants})
    return render(request, "inbox.html", who, "inbox", threads=threads, names=names, me=me)


@router.get("/inbox/style", **rule("creator"))
def style_page(request: Request, who: ViewerDep, db: DbDep) -> HTMLResponse:
    """The creator's style profile: opt in, correct it, or delete the corrections."""
    access.require_creator(who.user, "A style profile")
    return render(request, "style.html", who, "inbox", style=style_out(style_for(db, who.user)))


@router.post("/inbox/style", response_model=None, **rule("creator"))
def style_save(
    who: ViewerDep,
    db: DbDep,
    action: Annotated[str, Form()] = "save",
    enabled: Annotated[str | None, Form()] = None,
    greeting: Annotated[str, Form(max_length=60)] = "",
    sign_off: Annotated[str, Form(max_length=60)] = "",
    median_chars: Annotated[int | None, Form(ge=5, le=2000)] = None,
) -> RedirectResponse:
    """Save the style switch and corrections, or delete the corrections ("reset")."""
    access.require_creator(who.user, "A style profile")
    if action == "reset":
        update = StyleUpdate(enabled=False, greeting="", sign_off="")
    else:
        update = StyleUpdate(
            enabled=enabled is not None,
            greeting=greeting.strip(),
            sign_off=sign_off.strip(),
            median_chars=median_chars,
        )
    update_style(db, who.user, update)
    return RedirectResponse("/inbox/style?saved=1", status_code=303)


@router.get("/inbox/{thread_id}", **rule("dm-participant"))
def thread_page(thread_id: str, request: Request, who: ViewerDep, db: DbDep) -> HTMLResponse:
    """A DM thread, oldest message first, with the reply box (and suggestions for creators)."""
    messages = list(reversed(reads.thread_messages(db, who.user, thread_id, limit=50, offset=0)))
    me = who.user.external_id or who.user.name
    names = display_names(db, {m.author for m in messages})
    return render(
        request,
        "thread.html",
        who,
        "inbox",
        thread_id=thread_id,
        messages=messages,
        me=me,
        names=names,
    )


@router.post("/inbox/{thread_id}/suggestions", **rule("dm-creator"))
async def thread_suggestions(
    thread_id: str, request: Request, who: ViewerDep, db: DbDep, services: ServicesDep
) -> HTMLResponse:
    """Suggested replies in the creator's style (a fragment)."""
    result = await suggestion_api.suggested_replies(thread_id, who.user, db, services)
    return render(request, "fragments/suggestions.html", who, result=result, target="reply")


@router.post("/inbox/{thread_id}/messages", **rule("dm-participant"))
def thread_send(
    thread_id: str, who: ViewerDep, db: DbDep, services: ServicesDep, text: Annotated[str, Form()]
) -> RedirectResponse:
    """Send a DM into the thread as the member."""
    thread = access.thread_visible_to(db, who.user, thread_id)
    message = DMMessage(
        external_id=f"ts-{uuid.uuid4().hex}",
        thread_id=thread.id,
        author_id=who.user.id,
        text=_text(text, services.settings, "text"),
        created_at=datetime.now(UTC),
    )
    db.add(message)
    db.commit()
    return RedirectResponse(f"/inbox/{thread_id}#dm-{message.external_id}", status_code=303)


# --- marketplace -------------------------------------------------------------------------


def _filters_form(
    category: str,
    min_price: str,
    max_price: str,
    condition: list[str],
    near: str,
    radius_km: str,
) -> dict[str, Any]:
    """The market form's filters, checked (a clear 422 naming the field to fix)."""
    low = _number(min_price, "min_price", 0, 1e9)
    high = _number(max_price, "max_price", 0, 1e9)
    radius = _number(radius_km, "radius_km", 0.1, 500) or 5.0
    wrong = [c for c in condition if c and c not in CONDITIONS]
    if wrong:
        raise InvalidField(f"condition must be one of {', '.join(CONDITIONS)}.", "condition")
    return {
        "category": category or None,
        "min_price": low,
        "max_price": high,
        "condition": [c for c in condition if c] or None,
        "near": near or None,
        "radius_km": radius,
    }


def _market_url(words: str, filters: dict[str, Any], *, path: str = "/market") -> str:
    """The market URL searching ``words`` with ``filters`` stated (read=0: nothing more is
    read from the words; the chips' links and the summary use it)."""
    pairs: list[tuple[str, str]] = [("q", words), ("read", "0")]
    for key in ("category", "min_price", "max_price", "near"):
        value = filters.get(key)
        if value is not None:
            pairs.append((key, f"{value:g}" if isinstance(value, float) else str(value)))
    pairs.extend(("condition", c) for c in filters.get("condition") or [])
    if filters.get("near") is not None:
        pairs.append(("radius_km", f"{filters['radius_km']:g}"))
    return f"{path}?{urlencode(pairs)}"


def _chips(words: str, filters: dict[str, Any], understood: dict[str, Any]) -> list[dict[str, Any]]:
    """One removable chip per filter in force: its words, whether it was read from the query,
    and the URL of the same search without it."""
    chips = []
    price = {k: filters.get(k) for k in ("min_price", "max_price")}
    for key in ("category", "price", "condition", "near"):
        if key == "price":
            if price["min_price"] is None and price["max_price"] is None:
                continue
            low, high = price["min_price"], price["max_price"]
            label = (
                f"€{low:g} to €{high:g}"
                if low is not None and high is not None
                else (f"under €{high:g}" if high is not None else f"over €{low:g}")
            )
            without = {**filters, "min_price": None, "max_price": None}
            read = "max_price" in understood or "min_price" in understood
        else:
            value = filters.get(key)
            if not value:
                continue
            if key == "condition":
                label = " or ".join(c.replace("_", " ") for c in value)
            elif key == "near":
                label = f"near {value}"
            else:
                label = str(value)
            without = {**filters, key: None}
            read = key in understood
        chips.append({"label": label, "read": read, "remove": _market_url(words, without)})
    return chips


@router.get("/market", **rule("authenticated"))
async def market(
    request: Request,
    who: ViewerDep,
    db: DbDep,
    services: ServicesDep,
    q: Annotated[str, Query(max_length=1000)] = "",
    category: str = "",
    min_price: Annotated[str, Query(max_length=20)] = "",
    max_price: Annotated[str, Query(max_length=20)] = "",
    condition: Annotated[list[str] | None, Query(max_length=5)] = None,
    near: Annotated[str, Query(max_length=200)] = "",
    radius_km: Annotated[str, Query(max_length=20)] = "",
    read: Annotated[str, Query(max_length=1)] = "1",
) -> HTMLResponse:
    """Hybrid search with hard filters; the summary loads beside the results. The box reads
    what the member typed as the assistant does (one parser): the filters it states become
    removable chips, the rest is searched, and a query that is only filters gives the
    filtered list without a summary. Without a query: the newest listings, and the member's
    own listings (to describe). The form's number fields may be left empty."""
    explicit = _filters_form(category, min_price, max_price, condition or [], near, radius_km)
    results = None
    chips: list[dict[str, Any]] = []
    summary_url = None
    if q.strip():
        words = q.strip()[: services.settings.search.max_query_chars]
        understood: dict[str, Any] = {}
        if read != "0":
            understood, words = await search_api.read_wording(
                q, explicit, who.user, db, services, model=False
            )
        filters = {**explicit, **understood}
        results = await run_in_threadpool(
            partial(
                search_service.search_listings,
                db,
                who.user,
                q.strip()[: services.settings.search.max_query_chars],
                ListingFilters(**{k: v for k, v in filters.items() if v is not None}),
                page=1,
                page_size=20,
                embedder=services.embed,
                vectors=services.vectors,
                tuning=services.settings.search,
                understood=understood,
                words=words,
            )
        )
        chips = _chips(words, filters, understood)
        if words:
            summary_url = _market_url(words, filters, path="/market/summary")

    def browse() -> tuple[list[Any], list[Any], list[str]]:
        latest = reads.listings(db, who.user, category=None, limit=12, offset=0)
        mine = list(
            db.scalars(
                select(Listing)
                .where(Listing.seller_id == who.user.id)
                .order_by(Listing.id.desc())
                .limit(20)
            )
        )
        cats = sorted({c for c in db.scalars(select(Listing.category).distinct().limit(100)) if c})
        db.commit()
        return latest, mine, cats

    latest, mine, categories = await run_in_threadpool(browse)
    form = {
        "q": q,
        "category": category,
        "min_price": "" if explicit["min_price"] is None else f"{explicit['min_price']:g}",
        "max_price": "" if explicit["max_price"] is None else f"{explicit['max_price']:g}",
        "condition": explicit["condition"] or [],
        "near": near,
        "radius_km": f"{explicit['radius_km']:g}",
    }
    return render(
        request,
        "market.html",
        who,
        "market",
        results=results,
        chips=chips,
        summary_url=summary_url,
        latest=latest,
        mine=mine,
        categories=categories,
        conditions=CONDITIONS,
        form=form,
    )


@router.get("/market/summary", **rule("authenticated"))
async def market_summary(
    request: Request,
    who: ViewerDep,
    db: DbDep,
    services: ServicesDep,
    q: Annotated[str, Query(max_length=1000)],
    category: str = "",
    min_price: Annotated[str, Query(max_length=20)] = "",
    max_price: Annotated[str, Query(max_length=20)] = "",
    condition: Annotated[list[str] | None, Query(max_length=5)] = None,
    near: Annotated[str, Query(max_length=200)] = "",
    radius_km: Annotated[str, Query(max_length=20)] = "",
) -> HTMLResponse:
    """A summary of the results with numbered citations linking to them (a fragment): the
    same filters as the results (only listings inside them are cited)."""
    stated = _filters_form(category, min_price, max_price, condition or [], near, radius_km)
    filters = ListingFilters(**{k: v for k, v in stated.items() if v is not None})
    body = SummaryRequest(query=q, filters=filters)
    summary = await search_api.search_summary(body, who.user, db, services)
    return render(request, "fragments/summary.html", who, summary=summary)


@router.get("/market/{listing_id}", **rule("listing-viewer"))
def listing_page(listing_id: str, request: Request, who: ViewerDep, db: DbDep) -> HTMLResponse:
    """A listing; its seller can draft, edit and accept a description here."""
    item = reads.listing(db, who.user, listing_id)
    row = access.listing_visible_to(db, who.user, listing_id)
    seller = row.seller_id == who.user.id or who.admin
    names = display_names(db, {item.seller})
    return render(request, "listing.html", who, "market", listing=item, seller=seller, names=names)


@router.post("/market/{listing_id}/draft", **rule("listing-seller"))
async def listing_draft(
    listing_id: str,
    request: Request,
    who: ViewerDep,
    db: DbDep,
    services: ServicesDep,
    tone: Annotated[str, Form()] = "friendly",
    length: Annotated[str, Form()] = "short",
) -> HTMLResponse:
    """A drafted description to edit and accept (a fragment)."""
    body = DescriptionRequest.model_validate({"tone": tone, "length": length})
    draft = await shop_api.draft_description(listing_id, body, who.user, db, services)
    return render(request, "fragments/draft.html", who, draft=draft, listing_id=listing_id)


@router.post("/market/{listing_id}/accept", **rule("listing-seller"))
def listing_accept(
    listing_id: str,
    who: ViewerDep,
    db: DbDep,
    services: ServicesDep,
    generation_id: Annotated[int, Form(ge=1, le=2**63 - 1)],
    title: Annotated[str, Form(min_length=1, max_length=300)],
    description: Annotated[str, Form(min_length=1, max_length=5000)],
) -> RedirectResponse:
    """Put the (edited) draft on the listing."""
    body = Accept(generation_id=generation_id, title=title.strip(), description=description)
    shop_api.accept_description(listing_id, body, who.user, db, services)
    db.commit()
    return RedirectResponse(f"/market/{listing_id}?accepted=1", status_code=303)


# --- reels -------------------------------------------------------------------------------


@router.get("/reels", **rule("authenticated"))
def reels_page(
    request: Request,
    who: ViewerDep,
    db: DbDep,
    services: ServicesDep,
    context: Annotated[str, Query(max_length=500)] = "",
) -> HTMLResponse:
    """Reels recommended for the member (optionally for a topic)."""
    found = recommend_reels(
        db, who.user, context, limit=12, embedder=services.embed, vectors=services.vectors
    )
    return render(request, "reels.html", who, "reels", reels=found.data, context=context)


@router.get("/reels/{reel_id}", **rule("reel-viewer"))
def reel_page(reel_id: str, request: Request, who: ViewerDep, db: DbDep) -> HTMLResponse:
    """One reel: caption, creator, tags and its video link (http(s) only)."""
    reel = reads.reel(db, who.user, reel_id)
    names = display_names(db, {reel.creator})
    return render(request, "reel.html", who, "reels", reel=reel, names=names)


# --- Imagine -----------------------------------------------------------------------------


@router.get("/imagine", **rule("authenticated"))
def imagine_page(
    request: Request, who: ViewerDep, db: DbDep, services: ServicesDep
) -> HTMLResponse:
    """The prompt form and the member's gallery."""
    gallery = image_api.my_images(who.user, db, services, limit=24, before=None)
    groups = member_groups(db, who.user)
    return render(
        request,
        "imagine.html",
        who,
        "imagine",
        images=gallery.data,
        sizes=services.settings.images.sizes,
        groups=groups,
        backend=services.settings.images.backend,
    )


@router.post("/imagine", **rule("authenticated"))
def imagine_make(
    who: ViewerDep,
    db: DbDep,
    services: ServicesDep,
    prompt: Annotated[str, Form()],
    size: Annotated[str, Form()] = "",
    group_id: Annotated[str, Form()] = "",
) -> RedirectResponse:
    """Make an image and open its page."""
    body = ImagineRequest.model_validate(
        {"prompt": prompt, "size": size or None, "group_id": group_id or None}
    )
    made = image_api.imagine(body, who.user, db, services)
    return RedirectResponse(f"/images/{made.data[0].id}", status_code=303)


@router.get("/images/{image_id}", **rule("image-viewer"))
def image_page(
    image_id: str, request: Request, who: ViewerDep, db: DbDep, services: ServicesDep
) -> HTMLResponse:
    """An image, its provenance mark, its version tree and the Reimagine form."""
    image = image_api.get_image(image_id, who.user, db)
    tree = image_api.versions(image_id, who.user, db, services)

    def authors(nodes: list[Any]) -> set[str]:
        return {n.author for n in nodes if n.author} | {
            a for n in nodes for a in authors(n.children)
        }

    names = display_names(db, authors(tree.tree) | {image.author or ""})
    return render(request, "image.html", who, "imagine", image=image, tree=tree, names=names)


@router.post("/images/{image_id}/reimagine", **rule("image-viewer"))
def image_reimagine(
    image_id: str,
    who: ViewerDep,
    db: DbDep,
    services: ServicesDep,
    prompt: Annotated[str, Form()],
) -> RedirectResponse:
    """Remix this version; opens the new version's page."""
    made = image_api.reimagine(image_id, ReimagineRequest(prompt=prompt), who.user, db, services)
    return RedirectResponse(f"/images/{made.id}", status_code=303)


# --- the assistant and feedback ----------------------------------------------------------


@router.get("/assistant", **rule("authenticated"))
def assistant_page(request: Request, who: ViewerDep) -> HTMLResponse:
    """The 1:1 assistant chat (streams; tool results shown as cards)."""
    return render(request, "chat.html", who, "assistant", model=who.model)


@router.post("/feedback/{generation_id}", **rule("generation-owner"))
def give_feedback(
    generation_id: RowId,
    request: Request,
    who: ViewerDep,
    db: DbDep,
    services: ServicesDep,
    rating: Annotated[str, Form(pattern="^(up|down)$")],
) -> HTMLResponse:
    """Thumbs up or down on something generated for the member (a fragment)."""
    feedback.give(
        db,
        who.user,
        generation_id,
        FeedbackIn.model_validate({"rating": rating}),
        max_chars=services.settings.limits.max_message_chars,
    )
    db.commit()
    return render(
        request, "fragments/feedback.html", who, generation_id=generation_id, given=rating
    )
