"""The assistant's application logic: conversations, context fitting, replies.

Nothing here knows about HTTP. A turn is stored only when the reply is complete and passed the
safety pipeline: the member's message and the reply are committed together, so a failure
mid-generation leaves the conversation exactly as it was.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import anyio
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from townsquare.backends.base import Completion, Delta, GenerationOptions, Message, Usage
from townsquare.errors import InvalidField, NotFound, PromptTooLong
from townsquare.features import prompts
from townsquare.features.assistant import grounding
from townsquare.features.assistant.agent import ToolAnswer
from townsquare.features.assistant.schemas import (
    ConversationCreate,
    Exchange,
    MessageCreate,
    MessageOut,
)
from townsquare.safety.pipeline import Context, GuardedText
from townsquare.settings import Settings
from townsquare.social import access
from townsquare.storage.social_tables import Generation, add_contributors
from townsquare.storage.tables import ChatMessage, Conversation, User

FEATURE = "assistant"


def system_prompt(persona: str | None) -> str:
    """The assistant's system prompt, with the conversation's persona when it has one."""
    return prompts.render(__file__, "system.j2", persona=persona or "")


def fit_context(
    system: Message,
    history: Sequence[Message],
    new: Message,
    *,
    count: Callable[[Sequence[Message]], int],
    window: int,
    max_tokens: int,
    history_tokens: int | None = None,
) -> list[Message]:
    """Keep the system prompt, the new message and as many recent turns as fit.

    Turns are dropped whole, oldest first, never cut mid-message; the kept history starts at
    a member's message so the model never sees a reply without its question. At most
    ``history_tokens`` of earlier turns are kept, so a turn's prompt stays bounded however long
    the conversation grows (a full context window made every turn re-read it all).
    """
    budget = window - max_tokens
    required = count([system, new])
    if required > budget:
        raise PromptTooLong(
            f"The message and the system prompt take about {required} tokens, but only {budget} "
            f"fit (context window {window} minus max_tokens {max_tokens}). Shorten the message "
            "or ask for fewer max_tokens."
        )
    kept: list[Message] = []
    used = required
    if history_tokens is not None:
        budget = min(budget, required + history_tokens)
    for message in reversed(history):
        cost = count([message])
        if used + cost > budget:
            break
        kept.append(message)
        used += cost
    kept.reverse()
    while kept and kept[0].role != "user":
        kept.pop(0)
    return [system, *kept, new]


def check_system_prompt(value: str | None, settings: Settings) -> None:
    """A 422 when a persona's instructions are over ``limits.max_system_prompt_chars``."""
    limit = settings.limits.max_system_prompt_chars
    if value is not None and len(value) > limit:
        raise InvalidField(
            f"system_prompt has {len(value)} characters; the limit is {limit} "
            "(limits.max_system_prompt_chars). Shorten it.",
            "system_prompt",
        )


def create_conversation(
    db: Session, user: User, body: ConversationCreate, settings: Settings
) -> Conversation:
    """Start a conversation for ``user``, with its optional persona (length-checked). Commits."""
    check_system_prompt(body.system_prompt, settings)
    conversation = Conversation(user_id=user.id, title=body.title, system_prompt=body.system_prompt)
    db.add(conversation)
    db.commit()
    return conversation


def list_conversations(db: Session, user: User) -> list[Conversation]:
    """The user's conversations, most recently updated first."""
    rows = db.scalars(
        select(Conversation)
        .where(Conversation.user_id == user.id)
        .order_by(Conversation.updated_at.desc(), Conversation.id.desc())
    )
    return list(rows)


def get_conversation(db: Session, user: User, conversation_id: int) -> Conversation:
    """The member's own conversation; someone else's reads as missing (404), never 403."""
    return access.own_conversation(db, user, conversation_id)


def delete_conversation(db: Session, user: User, conversation_id: int) -> None:
    """Delete one of the user's conversations with its messages (404 for anyone else's). Commits."""
    db.delete(get_conversation(db, user, conversation_id))
    db.commit()


@dataclass(frozen=True)
class PreparedTurn:
    conversation_id: int
    user_id: int
    content: str
    messages: list[Message]
    options: GenerationOptions
    context: Context
    cards: list[dict[str, Any]] = field(default_factory=list)


def check_message(body: MessageCreate, settings: Settings) -> None:
    """Refuse a message over the limits before any work is done for it (tools included)."""
    limit = settings.limits.max_message_chars
    if len(body.content) > limit:
        raise InvalidField(
            f"content has {len(body.content)} characters; the limit is {limit} "
            "(limits.max_message_chars). Shorten the message.",
            "content",
        )
    cap = settings.text.max_tokens_limit
    if body.max_tokens is not None and body.max_tokens > cap:
        raise InvalidField(
            f"max_tokens is {body.max_tokens}; the most allowed is {cap} (text.max_tokens_limit).",
            "max_tokens",
        )


def prepare_turn(
    db: Session,
    user: User,
    conversation_id: int,
    body: MessageCreate,
    *,
    text: GuardedText,
    settings: Settings,
    cards: Sequence[dict[str, Any]] = (),
) -> PreparedTurn:
    """Validate the message and build the model's context from the stored history (bounded
    by ``assistant.history_tokens``); ``cards`` are what tools found, stored with the reply."""
    check_message(body, settings)
    conversation = get_conversation(db, user, conversation_id)
    max_tokens = body.max_tokens or settings.text.default_max_tokens
    history = [Message(m.role, m.content) for m in conversation.messages]  # type: ignore[arg-type]
    messages = fit_context(
        Message("system", system_prompt(conversation.system_prompt)),
        history,
        Message("user", body.content),
        count=text.count_message_tokens,
        window=text.context_window,
        max_tokens=max_tokens,
        history_tokens=settings.assistant.history_tokens,
    )
    options = GenerationOptions(
        max_tokens=max_tokens,
        temperature=0.7 if body.temperature is None else body.temperature,
    )
    # moderation reads what the member wrote: their persona, every turn of theirs the model
    # reads, and the new message (the system prompt around the persona is ours)
    written = [conversation.system_prompt or ""] + [m.content for m in messages if m.role == "user"]
    return PreparedTurn(
        conversation.id,
        user.id,
        body.content,
        messages,
        options,
        Context(FEATURE, user.id, user.role, subject=tuple(w for w in written if w.strip())),
        list(cards),
    )


def store_turn(
    sessions: sessionmaker[Session],
    turn: PreparedTurn,
    reply: str,
    completion: Completion,
    model: str,
    tool_results: Sequence[str] = (),
) -> Exchange:
    """Commit the member's message and the complete reply together. ``tool_results`` are what
    the tools gave the model (kept with the generation, for training exports)."""
    now = datetime.now(UTC)
    with sessions.begin() as db:
        conversation = db.get(Conversation, turn.conversation_id)
        if conversation is None:
            raise NotFound(
                f"Conversation {turn.conversation_id} was deleted while the reply was written."
            )
        asked = ChatMessage(
            conversation_id=conversation.id, role="user", content=turn.content, created_at=now
        )
        answered = ChatMessage(
            conversation_id=conversation.id,
            role="assistant",
            content=reply,
            model=model,
            finish_reason=completion.finish_reason,
            prompt_tokens=completion.usage.prompt_tokens,
            completion_tokens=completion.usage.completion_tokens,
            cards=list(turn.cards),
            created_at=now,
        )
        db.add_all([asked, answered])
        if not conversation.title:
            conversation.title = turn.content[:60]
        conversation.updated_at = now
        db.flush()
        # the turn as a generation too: members' feedback and training exports attach to it
        generation = Generation(
            feature=FEATURE,
            user_id=turn.user_id,
            inputs={
                "conversation": conversation.id,
                "message": answered.id,
                **({"tool_results": list(tool_results)} if tool_results else {}),
            },
            output={"reply": reply},
            model=model,
            prompt=[{"role": m.role, "content": m.content} for m in turn.messages],
            answer=reply,
        )
        db.add(generation)
        db.flush()
        add_contributors(db, generation.id, [turn.user_id])
        return Exchange(
            conversation_id=conversation.id,
            user_message=MessageOut.model_validate(asked),
            reply=MessageOut.model_validate(answered),
            generation_id=generation.id,
        )


async def tool_reply(
    sessions: sessionmaker[Session], turn: PreparedTurn, answer: ToolAnswer
) -> Exchange:
    """Store a turn answered by tools (``answer.text`` around ``turn.cards``)."""
    completion = answer.completion or Completion(answer.text, "stop", Usage())
    completion = Completion(answer.text, completion.finish_reason, completion.usage)
    results = [r.for_model() for r in answer.results]
    return await anyio.to_thread.run_sync(
        store_turn, sessions, turn, answer.text, completion, answer.written_by, results
    )


async def stream_tool_reply(
    sessions: sessionmaker[Session], turn: PreparedTurn, answer: ToolAnswer
) -> AsyncIterator[Delta | Stored]:
    """``tool_reply`` as a stream: the text, the end, then ``Stored``."""
    exchange = await tool_reply(sessions, turn, answer)
    yield Delta(text=answer.text)
    yield Delta(finish_reason="stop", usage=Usage())
    yield Stored(exchange)


async def reply(
    sessions: sessionmaker[Session], turn: PreparedTurn, *, text: GuardedText
) -> Exchange:
    """Generate the whole reply, then store the turn."""
    completion = await text.complete(turn.messages, turn.options, turn.context)
    # no tool ran, so no card is shown: a sentence announcing cards is not sent
    said = grounding.without_unshown_cards(completion.text)
    completion = Completion(said, completion.finish_reason, completion.usage)
    return await anyio.to_thread.run_sync(
        store_turn, sessions, turn, said, completion, text.model_id
    )


@dataclass(frozen=True)
class Stored:
    """The last item of a reply stream: the turn as stored."""

    exchange: Exchange


async def stream_reply(
    sessions: sessionmaker[Session], turn: PreparedTurn, *, text: GuardedText
) -> AsyncIterator[Delta | Stored]:
    """Yield the reply's deltas, then store the turn and yield ``Stored``.

    If generation or a safety check fails, the exception propagates and nothing is stored.
    """
    pieces: list[str] = []
    finish, usage = "stop", Usage()
    claims = grounding.CardClaimFilter()  # no tool ran: no sentence may announce cards
    async for delta in text.stream(turn.messages, turn.options, turn.context):
        released = claims.feed(delta.text) if delta.text else ""
        if delta.finish_reason is not None:
            finish, usage = delta.finish_reason, delta.usage or Usage()
            released += claims.close()
        pieces.append(released)
        if released:
            yield Delta(text=released)
        if delta.finish_reason is not None or delta.tool_calls:
            yield replace(delta, text="")
    rest = claims.close()
    if rest:  # a stream that ended without a finish reason
        pieces.append(rest)
        yield Delta(text=rest)
    full = "".join(pieces)
    stored = await anyio.to_thread.run_sync(
        store_turn, sessions, turn, full, Completion(full, finish, usage), text.model_id
    )
    yield Stored(stored)
