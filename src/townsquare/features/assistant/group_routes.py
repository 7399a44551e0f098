"""Group-chat routes of the assistant: members post messages (an @-mention asks the
assistant), read the group's live event stream; moderators edit the group's persona."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from townsquare.api.deps import CurrentUser, DbDep, ServicesDep
from townsquare.errors import TooManyStreams
from townsquare.features.assistant.groups import (
    GroupMessageIn,
    PersonaIn,
    PersonaOut,
    message_view,
    persona_of,
    update_persona,
)
from townsquare.social import access

router = APIRouter(prefix="/api/groups", tags=["assistant"])


@router.get("/{group_id}/assistant", openapi_extra={"x-access": "group-member"})
def get_persona(group_id: str, user: CurrentUser, db: DbDep, services: ServicesDep) -> PersonaOut:
    """The group's assistant: its name to @-mention, instructions, tools, whether it is on."""
    group = access.group_visible_to(db, user, group_id)
    return persona_of(db, group, services.settings)


@router.put("/{group_id}/assistant", openapi_extra={"x-access": "group-moderator"})
def put_persona(
    group_id: str, body: PersonaIn, user: CurrentUser, db: DbDep, services: ServicesDep
) -> PersonaOut:
    """Edit the group's assistant (moderators): only the fields sent change."""
    group = access.moderated_group(db, user, group_id)
    out = update_persona(db, user, group, body, services.settings)
    db.commit()
    return out


@router.post("/{group_id}/messages", status_code=201, openapi_extra={"x-access": "group-member"})
async def post_message(
    group_id: str, body: GroupMessageIn, user: CurrentUser, db: DbDep, services: ServicesDep
) -> dict[str, object]:
    """Post a message into the group as the member. ``@assistant`` (or the persona's name)
    asks the assistant, which answers in the group a moment later (watch the event stream)."""
    chat = services.group_chat

    def store() -> dict[str, object]:
        group = access.group_visible_to(db, user, group_id)
        message = chat.post(db, user, group, body)
        view = message_view(
            message, group, user.external_id or user.name, body.reply_to, user.display_name
        )
        db.commit()
        return view

    view = await run_in_threadpool(store)
    await chat.received([str(view["id"])])
    services.webhook_sender.wake_soon()
    return view


@router.get(
    "/{group_id}/events",
    openapi_extra={"x-access": "group-member"},
    response_class=StreamingResponse,
)
async def group_events(
    group_id: str,
    request: Request,
    user: CurrentUser,
    db: DbDep,
    services: ServicesDep,
    last_event_id: Annotated[str | None, Header(description="Resume after this event.")] = None,
    max_s: Annotated[
        float | None,
        Query(
            ge=0,
            le=86_400,
            description="Close the stream after this many seconds "
            "(default assistant.events_max_s; EventSource reconnects by itself).",
        ),
    ] = None,
) -> StreamingResponse:
    """The group's new messages as Server-Sent Events (``event: message``), the assistant's
    replies included, in commit order. Each event's ``id`` is the message's number in the
    group (``seq``): resume with ``Last-Event-ID`` and nothing is missed or repeated. 429 when
    the member already holds ``assistant.events_per_member`` streams on this replica."""

    chat = services.group_chat
    cap = services.settings.assistant.events_per_member
    if chat.open_streams(user.id) >= cap:
        raise TooManyStreams(
            f"You already have {cap} group event streams open on this server "
            "(assistant.events_per_member). Close one, or use one stream per group.",
            retry_after=5,
        )

    def find() -> tuple[int, int]:
        group = access.group_visible_to(db, user, group_id)
        latest = chat.latest_seq(group.id)
        db.commit()
        return group.id, latest

    group_row, latest = await run_in_threadpool(find)
    after = latest
    if last_event_id is not None and last_event_id.isdigit():
        after = int(last_event_id)
    limit = services.settings.assistant.events_max_s if max_s is None else max_s
    return StreamingResponse(
        chat.events(user.id, group_row, after, max_s=limit),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
