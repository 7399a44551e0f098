"""Assistant routes: thin translations between HTTP and the service."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from townsquare.api.deps import CurrentUser, DbDep, RowId, ServicesDep
from townsquare.api.sse import primed, sse_response
from townsquare.features.assistant import service
from townsquare.features.assistant.schemas import (
    ConversationCreate,
    ConversationDetail,
    ConversationList,
    ConversationOut,
    Exchange,
    MessageCreate,
)
from townsquare.features.assistant.service import Stored
from townsquare.features.assistant.tools import Asker
from townsquare.safety.pipeline import Context

router = APIRouter(prefix="/api/conversations", tags=["assistant"])


@router.post("", status_code=201, openapi_extra={"x-access": "authenticated"})
def create_conversation(
    body: ConversationCreate, user: CurrentUser, db: DbDep, services: ServicesDep
) -> ConversationOut:
    """Start a conversation, optionally with its own persona (system prompt)."""
    conversation = service.create_conversation(db, user, body, services.settings)
    return ConversationOut.model_validate(conversation)


@router.get("", openapi_extra={"x-access": "authenticated"})
def list_conversations(user: CurrentUser, db: DbDep) -> ConversationList:
    """The member's conversations, most recent first."""
    rows = service.list_conversations(db, user)
    return ConversationList(data=[ConversationOut.model_validate(row) for row in rows])


@router.get("/{conversation_id}", openapi_extra={"x-access": "owner"})
def get_conversation(conversation_id: RowId, user: CurrentUser, db: DbDep) -> ConversationDetail:
    """One conversation with all its messages."""
    return ConversationDetail.model_validate(service.get_conversation(db, user, conversation_id))


@router.delete("/{conversation_id}", status_code=204, openapi_extra={"x-access": "owner"})
def delete_conversation(conversation_id: RowId, user: CurrentUser, db: DbDep) -> Response:
    """Delete a conversation and its messages."""
    service.delete_conversation(db, user, conversation_id)
    return Response(status_code=204)


@router.post(
    "/{conversation_id}/messages", response_model=Exchange, openapi_extra={"x-access": "owner"}
)
async def post_message(
    conversation_id: RowId,
    body: MessageCreate,
    request: Request,
    user: CurrentUser,
    db: DbDep,
    services: ServicesDep,
) -> Any:
    """Send a message and get the assistant's reply; ``stream=true`` answers with SSE.

    When the request asks for one of the town's tools (search, reels, catch-up...), the reply
    is the tool's results as ``cards`` with a short grounded sentence. The stream uses OpenAI's
    chunk format; the last chunk carries ``townsquare`` with the ids of the stored messages.
    """
    text = services.guarded_text
    # database work on worker threads; the event loop only waits for the model
    service.check_message(body, services.settings)  # limits before any work, tools included

    def persona() -> str | None:  # 404 first; the read ends before any model work
        found = service.get_conversation(db, user, conversation_id).system_prompt
        db.commit()
        return found

    written = await run_in_threadpool(persona)
    system = service.system_prompt(written)
    answer = await services.agent.tool_answer(
        body.content,
        Asker(user.id),
        Context(
            service.FEATURE,
            user.id,
            user.role,
            subject=tuple(t for t in (written, body.content) if t and t.strip()),
        ),
        system=system,
        max_tokens=body.max_tokens or services.settings.text.default_max_tokens,
    )

    def prepare() -> service.PreparedTurn:
        turn = service.prepare_turn(
            db,
            user,
            conversation_id,
            body,
            text=text,
            settings=services.settings,
            cards=answer.cards if answer is not None else (),
        )
        db.commit()  # no connection held while the reply is generated
        return turn

    turn = await run_in_threadpool(prepare)
    if answer is not None and not body.stream:
        return await service.tool_reply(services.sessions, turn, answer)
    if not body.stream:
        return await service.reply(services.sessions, turn, text=text)

    items = await primed(
        service.stream_tool_reply(services.sessions, turn, answer)
        if answer is not None
        else service.stream_reply(services.sessions, turn, text=text)
    )
    chunk_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
        return {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": text.model_id,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        yield chunk({"role": "assistant", "content": ""})
        finish = "stop"
        async for item in items:
            if isinstance(item, Stored):
                reply = item.exchange.reply
                yield chunk(
                    {},
                    finish,
                    usage={
                        "prompt_tokens": reply.prompt_tokens,
                        "completion_tokens": reply.completion_tokens,
                        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
                    },
                    townsquare=item.exchange.model_dump(mode="json"),
                )
            elif item.finish_reason is not None:
                finish = item.finish_reason
            elif item.text:
                yield chunk({"content": item.text})

    return sse_response(request.url.path, chunks())
