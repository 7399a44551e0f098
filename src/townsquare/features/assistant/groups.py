"""The assistant as a member of group chats: @-mentions, personas, the group's event stream.

A group message that mentions the assistant (``@assistant``; ``assistant.name``, or the name of
the group's persona) is answered in the group: the reply is stored as a group message from the
assistant's user, replying to the message that asked, written with the recent conversation as
context (that group's messages only) and the asking member's permissions for tools. It reaches
the host app by webhook (``group.message.created``, enqueued in the same transaction) and every
member's open event stream (``GET /api/groups/{id}/events``).

Mentions are durable jobs (``storage/jobs.py``): queued in the database when the message is
stored, keyed by the message, and answered by a few workers per replica
(``assistant.mention_concurrency``) that lease them, so a stop, a crash or a redeploy loses none
(another replica, or the next start, takes a lapsed lease over) and a batch re-sent to two
replicas queues one job. A reply records the mention it answers under a unique key, so a
mention is answered once whatever races. A group or member with a mention being answered
waits for it while others' are answered. A mention in a group whose persona is switched off is
ignored and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from townsquare.backends.base import GenerationOptions, Message
from townsquare.errors import (
    Busy,
    ContentBlocked,
    Forbidden,
    InvalidField,
    NotFound,
    TownsquareError,
)
from townsquare.features import prompts
from townsquare.features.assistant.agent import Agent
from townsquare.features.assistant.service import check_system_prompt
from townsquare.features.assistant.tools import TOOLS, Asker
from townsquare.features.webhooks import service as webhooks
from townsquare.features.webhooks.service import Sender
from townsquare.safety.pipeline import Context, GuardedText, model_seconds
from townsquare.settings import Settings
from townsquare.social import access
from townsquare.storage import jobs
from townsquare.storage.social_tables import (
    Generation,
    Group,
    GroupAssistant,
    GroupMessage,
    add_contributors,
)
from townsquare.storage.tables import User
from townsquare.threads import finish_in_thread

log = logging.getLogger("townsquare.assistant")

FEATURE = "group_assistant"
TOOL_NAMES = [t.name for t in TOOLS]
STATS_KEPT = 1000  # the latest answers' timings (a long-running server keeps no more)
MENTION = "mention"  # the jobs' kind
MEMBERSHIP_CHECK_S = 15.0  # an idle stream still checks this often that its member is in
READ_LIMIT = 100  # messages one read of a stream returns
CUT = "\n\n(My reply was cut at the length limit.)"


class PersonaIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        None, pattern=r"^[\w.-]{1,40}$", description="The name to @-mention in this group."
    )
    system_prompt: str | None = Field(None, description="How the assistant behaves here.")
    tools: list[str] | None = Field(
        None, description="The tools it may use here (all when absent); [] for none."
    )
    enabled: bool | None = Field(None, description="Whether it answers mentions here at all.")


class PersonaOut(BaseModel):
    group_id: str
    name: str
    system_prompt: str
    tools: list[str]
    enabled: bool
    updated_at: datetime | None


class GroupMessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, description="The message; '@assistant' asks the assistant.")
    reply_to: str | None = Field(None, description="The id of the message this answers.")


def mentions(text: str, name: str) -> bool:
    """Whether ``text`` @-mentions ``name`` (case-insensitive, a whole word)."""
    return re.search(rf"(?<![\w@])@{re.escape(name)}(?![\w-])", text, re.IGNORECASE) is not None


def without_mention(text: str, name: str) -> str:
    """The request without the @-mention."""
    stripped = re.sub(rf"(?<![\w@])@{re.escape(name)}(?![\w-])[,:]?", " ", text, flags=re.I)
    return re.sub(r"\s+", " ", stripped).strip()


def persona_of(db: Session, group: Group, settings: Settings) -> PersonaOut:
    """The group's persona (the settings' defaults until a moderator edits it)."""
    row = db.get(GroupAssistant, group.id)
    if row is None:
        return PersonaOut(
            group_id=group.external_id,
            name=settings.assistant.name,
            system_prompt="",
            tools=list(TOOL_NAMES),
            enabled=True,
            updated_at=None,
        )
    return PersonaOut(
        group_id=group.external_id,
        name=row.name,
        system_prompt=row.system_prompt,
        tools=list(TOOL_NAMES) if row.tools is None else list(row.tools),
        enabled=row.enabled,
        updated_at=row.updated_at,
    )


def update_persona(
    db: Session, user: User, group: Group, body: PersonaIn, settings: Settings
) -> PersonaOut:
    """Change the fields sent (a moderator of the group; checked by the caller). Flushes."""
    check_system_prompt(body.system_prompt, settings)
    unknown = sorted(set(body.tools or ()) - set(TOOL_NAMES))
    if unknown:
        raise InvalidField(
            f"Unknown tools: {', '.join(unknown)}. Known: {', '.join(TOOL_NAMES)}.", "tools"
        )
    row = db.get(GroupAssistant, group.id)
    if row is None:
        row = GroupAssistant(
            group_id=group.id, name=settings.assistant.name, system_prompt="", enabled=True
        )
        db.add(row)
    if body.name is not None:
        row.name = body.name
    if body.system_prompt is not None:
        row.system_prompt = body.system_prompt
    if "tools" in body.model_fields_set:
        row.tools = None if body.tools is None else sorted(set(body.tools))
    if body.enabled is not None:
        row.enabled = body.enabled
    row.updated_by, row.updated_at = user.id, datetime.now(UTC)
    db.flush()
    return persona_of(db, group, settings)


def assistant_user(db: Session, settings: Settings) -> User:
    """The user the assistant posts as (created on first use; safe when two race)."""
    external = settings.assistant.user_id
    found = db.scalars(select(User).where(User.external_id == external)).first()
    if found is not None:
        return found
    try:
        with db.begin_nested():
            user = User(
                name=external[:64],
                external_id=external,
                display_name=settings.assistant.name.capitalize(),
                role="member",
            )
            db.add(user)
        return user
    except IntegrityError:
        found = db.scalars(select(User).where(User.external_id == external)).first()
        assert found is not None
        return found


def message_view(
    message: GroupMessage,
    group: Group,
    author: str,
    reply_to: str | None,
    author_name: str = "",
) -> dict[str, Any]:
    """A group message as events and webhooks carry it (``author``: the id the host app knows
    the author by; ``author_name``: their display name)."""
    return {
        "id": message.external_id,
        "group": group.external_id,
        "author": author,
        "author_name": author_name or author,
        "text": message.text,
        "reply_to": reply_to,
        "cards": message.cards or [],
        "generation_id": message.generation_id,
        "created_at": message.created_at.isoformat(),
    }


@dataclass
class Prepared:
    message_id: int
    group_id: int
    asker_id: int
    asker_role: str
    name: str
    request: str
    system: str
    tools: list[str]
    history: list[Message]


@dataclass
class MentionStats:
    """What answering mentions cost, for the benchmark: seconds per answer, total and inside
    the model."""

    total_s: deque[float] = field(default_factory=lambda: deque(maxlen=STATS_KEPT))
    model_s: deque[float] = field(default_factory=lambda: deque(maxlen=STATS_KEPT))


class GroupChat:
    """Mentions, the persona, and each group's event stream, for one app."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        agent: Agent,
        text: GuardedText,
        settings: Settings,
        sender: Sender,
    ) -> None:
        self.sessions = sessions
        self.agent = agent
        self.text = text
        self.settings = settings
        self.sender = sender
        self.stats = MentionStats()
        self._jobs_ready: asyncio.Event | None = None
        self._workers: list[asyncio.Task[None]] = []
        # the event streams of this process: per group, its open streams, its watcher task,
        # the last committed number it saw, and the events that wake streams and the watcher
        self._streams: dict[int, int] = {}
        self._per_member: dict[int, int] = {}
        self._watchers: dict[int, asyncio.Task[None]] = {}
        self._seen: dict[int, int] = {}
        self._changed: dict[int, asyncio.Event] = {}
        self._nudges: dict[int, asyncio.Event] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the mention workers on the running loop (once: an app started again on
        another loop while these run shares them)."""
        if self._workers and not all(t.done() for t in self._workers):
            return
        self._loop = asyncio.get_running_loop()
        self._changed, self._nudges = {}, {}  # events of this loop only
        self._jobs_ready = asyncio.Event()
        self._workers = [
            self._loop.create_task(self._work(), name=f"mentions-{i}")
            for i in range(self.settings.assistant.mention_concurrency)
        ]

    async def stop(self) -> None:
        """Stop the workers, from the loop that started them."""
        if not self._workers or asyncio.get_running_loop() is not self._loop:
            return
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []
        self._jobs_ready = None
        self._loop = None

    def _on_owner(self, callback: Any, *args: Any) -> None:
        """Run ``callback(*args)`` on the loop that owns the queue and the events."""
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            callback(*args)
        elif not loop.is_closed():
            loop.call_soon_threadsafe(callback, *args)

    def waiting(self) -> int:
        """Mentions queued or being answered, on every replica."""
        with self.sessions() as db:
            return jobs.pending(db, MENTION)

    async def drain(self, timeout_s: float = 300.0) -> None:
        """Wait until every queued mention is answered or dropped (tests, benchmarks)."""
        deadline = time.monotonic() + timeout_s
        while await finish_in_thread(self.waiting) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    # --- new messages ------------------------------------------------------------------------

    def _mentioning(
        self, external_ids: Sequence[str]
    ) -> tuple[set[int], list[tuple[int, int, int]]]:
        """(groups that changed, (message, group, author) of those that mention their group's
        assistant)."""
        with self.sessions() as db:
            rows = db.execute(
                select(
                    GroupMessage.id,
                    GroupMessage.group_id,
                    GroupMessage.text,
                    GroupMessage.author_id,
                ).where(GroupMessage.external_id.in_(list(external_ids)))
            ).all()
            groups = {g for _, g, _, _ in rows}
            names = dict(
                db.execute(
                    select(GroupAssistant.group_id, GroupAssistant.name).where(
                        GroupAssistant.group_id.in_(groups)
                    )
                ).all()
            )
            bot = db.scalars(
                select(User.id).where(User.external_id == self.settings.assistant.user_id)
            ).first()
        asked = [
            (m, g, author)
            for m, g, text, author in rows
            if author != bot and mentions(text, names.get(g, self.settings.assistant.name))
        ]
        return groups, asked

    def _queue_mentions(self, asked: Sequence[tuple[int, int, int]]) -> int:
        """One job per mention (``storage/jobs.py``; a mention queued before, here or on another
        replica, is not queued again); the number queued."""
        queued = 0
        cap = self.settings.assistant.mention_queue
        with self.sessions() as db:
            for message_id, group_id, author_id in asked:
                if jobs.pending(db, MENTION, group_id=group_id) >= cap:
                    log.error(
                        "mention %s not answered: %s mentions are waiting in its group "
                        "(assistant.mention_queue)",
                        message_id,
                        cap,
                    )
                    continue
                queued += jobs.enqueue(
                    db,
                    MENTION,
                    str(message_id),
                    payload={"message": message_id},
                    group_id=group_id,
                    user_id=author_id,
                )
            db.commit()
        return queued

    async def received(self, external_ids: Sequence[str]) -> None:
        """Messages were stored (ingested or posted): wake the groups' streams and queue the
        mentions."""
        wanted = [e for e in external_ids if isinstance(e, str)]
        if not wanted:
            return
        groups, asked = await finish_in_thread(self._mentioning, wanted)
        for group_id in groups:
            self.notify(group_id)
        if not asked:
            return
        queued: int = await finish_in_thread(self._queue_mentions, asked)
        if queued:
            self._on_owner(self._ready)

    def _ready(self) -> None:
        if self._jobs_ready is not None:
            self._jobs_ready.set()

    def notify(self, group_id: int) -> None:
        """A message of ``group_id`` was committed here: its watcher looks now."""
        self._on_owner(self._nudge, group_id)

    def _nudge(self, group_id: int) -> None:
        event = self._nudges.get(group_id)
        if event is not None:
            event.set()

    def _wake(self, group_id: int) -> None:
        event = self._changed.pop(group_id, None)
        if event is not None:
            event.set()

    def post(self, db: Session, user: User, group: Group, body: GroupMessageIn) -> GroupMessage:
        """A member's message into their group, with the ingestion rules (length, reply in the
        same group). Flushes; the caller commits and then calls ``received``."""
        limit = self.settings.ingest.max_text_chars
        text = body.text.strip()
        if not text or len(text) > limit:
            raise InvalidField(
                f"text must have 1 to {limit} characters (ingest.max_text_chars).", "text"
            )
        persona = persona_of(db, group, self.settings)
        if (
            persona.enabled
            and mentions(text, persona.name)
            and access.membership_role(db, user, group.id) is None
        ):
            # it would be stored and never answered: refuse now, with the reason
            raise Forbidden(
                f"@{persona.name} answers members of {group.name} only, and you are not one "
                "(an admin may read and post here without being a member). Join the group to "
                f"ask, or post without @{persona.name}."
            )
        reply_to = None
        if body.reply_to is not None:
            reply_to = db.scalars(
                select(GroupMessage).where(
                    GroupMessage.external_id == body.reply_to,
                    GroupMessage.group_id == group.id,
                    GroupMessage.deleted_at.is_(None),
                )
            ).first()
            if reply_to is None:
                raise InvalidField(
                    f"reply_to: there is no message {body.reply_to} in this group.", "reply_to"
                )
        message = GroupMessage(
            external_id=f"ts-{uuid.uuid4().hex}",
            group_id=group.id,
            author_id=user.id,
            text=text,
            reply_to_id=reply_to.id if reply_to else None,
            created_at=datetime.now(UTC),
        )
        db.add(message)
        db.flush()
        webhooks.enqueue(
            db,
            "group.message.created",
            {
                "message": message_view(
                    message, group, user.external_id or user.name, body.reply_to, user.display_name
                )
            },
        )
        return message

    # --- answering ---------------------------------------------------------------------------

    async def _work(self) -> None:
        """One mention worker: lease a due mention (any replica's), answer it while renewing
        the lease, record the outcome; idle, wait to be told or ``mention_poll_s``."""
        settings = self.settings.assistant
        while True:
            try:
                job = await finish_in_thread(self._claim)
            except Exception:  # a database hiccup: look again shortly
                log.exception("could not look for mentions to answer")
                job = None
            if job is None:
                ready = self._jobs_ready
                if ready is not None:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(settings.mention_poll_s):
                            await ready.wait()
                    ready.clear()
                continue
            job_id, message_id = job
            renewing = asyncio.get_running_loop().create_task(self._renew(job_id))
            error = ""
            try:
                await self.answer(message_id)
            except Exception as exc:  # one failed answer must not stop the worker
                log.exception("answering mention %s failed", message_id)
                error = repr(exc)
            finally:
                renewing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewing
            await finish_in_thread(self._finish, job_id, error)

    def _claim(self) -> tuple[int, int] | None:
        with self.sessions() as db:
            job = jobs.claim(db, MENTION, self.settings.assistant.mention_lease_s)
            return (job.id, int(job.payload["message"])) if job is not None else None

    def _finish(self, job_id: int, error: str) -> None:
        with self.sessions() as db:
            jobs.finish(db, job_id, error=error, attempts=self.settings.assistant.mention_attempts)

    async def _renew(self, job_id: int) -> None:
        lease = self.settings.assistant.mention_lease_s
        while True:
            await asyncio.sleep(lease / 3)
            try:
                await finish_in_thread(self._renew_once, job_id, lease)
            except Exception:  # a database hiccup: the next renewal tries again
                log.exception("could not renew the lease of mention job %s", job_id)

    def _renew_once(self, job_id: int, lease: float) -> None:
        with self.sessions() as db:
            jobs.renew(db, job_id, lease)

    def _prepare(self, message_id: int) -> Prepared | None:
        settings = self.settings
        with self.sessions() as db:
            message = db.get(GroupMessage, message_id)
            if message is None or message.deleted_at is not None:
                return None
            group = db.get(Group, message.group_id)
            asker = db.get(User, message.author_id)
            assert group is not None and asker is not None
            persona = persona_of(db, group, settings)
            if not persona.enabled:
                log.info(
                    "mention ignored: the assistant is switched off in group %s",
                    group.external_id,
                )
                return None
            if access.membership_role(db, asker, group.id) is None:
                log.info("mention ignored: %s is not in group %s", asker.id, group.external_id)
                return None
            bot = assistant_user(db, settings)
            db.commit()
            done = db.scalar(
                select(func.count())
                .select_from(GroupMessage)
                .where(GroupMessage.reply_to_id == message.id, GroupMessage.author_id == bot.id)
            )
            if done:
                return None
            limit = settings.assistant.group_context_messages
            earlier = list(
                db.execute(
                    select(GroupMessage, User.display_name, User.name)
                    .join(User, User.id == GroupMessage.author_id)
                    .where(
                        GroupMessage.group_id == group.id,
                        GroupMessage.deleted_at.is_(None),
                        GroupMessage.id != message.id,
                        GroupMessage.created_at <= message.created_at,
                    )
                    .order_by(GroupMessage.created_at.desc(), GroupMessage.id.desc())
                    .limit(limit)
                ).all()
            )
            history = [
                Message("assistant", m.text)
                if m.author_id == bot.id
                else Message("user", f"{display or name}: {m.text}")
                for m, display, name in reversed(earlier)
            ]
            system = prompts.render(
                __file__,
                "group.j2",
                group=group.name,
                name=persona.name,
                persona=persona.system_prompt,
            )
            return Prepared(
                message.id,
                group.id,
                asker.id,
                asker.role,
                persona.name,
                without_mention(message.text, persona.name),
                system,
                persona.tools,
                history,
            )

    async def answer(self, message_id: int) -> str | None:
        """Answer the mention ``message_id`` in its group; the reply's id, or None when it was
        ignored (persona off, already answered, deleted)."""
        started = time.perf_counter()
        prepared = await finish_in_thread(self._prepare, message_id)
        if prepared is None:
            return None
        spent = model_seconds.set([])
        try:
            text, cards, written_by = await self._reply(prepared, self.text)
            reply_id = await finish_in_thread(self._store, prepared, text, cards, written_by)
            self.stats.model_s.append(sum(model_seconds.get() or []))
        finally:
            model_seconds.reset(spent)
        self.notify(prepared.group_id)
        self.sender.wake_soon()
        self.stats.total_s.append(time.perf_counter() - started)
        return reply_id

    async def _reply(
        self, prepared: Prepared, text: GuardedText
    ) -> tuple[str, list[dict[str, Any]], str | None]:
        """The reply's text, its cards, and who wrote it: the model's id, the tools' templates
        ("townsquare-tools"), or None for a refusal or an apology for an error."""
        request = prepared.request or "Hello!"
        # moderation reads the asker's own message (S11 included), never the group's history:
        # the other members' messages are their content, screened as sources and left out of
        # the prompt when they carry instructions to the assistant or a blocked hazard
        context = Context(
            FEATURE,
            prepared.asker_id,
            prepared.asker_role,
            prepared.group_id,
            subject=(request,),
            third_party=True,
            request=request,
        )
        for attempt in range(3):
            try:
                history = await self._screened(prepared.history, context)
                answer = await self.agent.tool_answer(
                    request,
                    Asker(prepared.asker_id, prepared.group_id),
                    context,
                    history=history,
                    system=prepared.system,
                    allowed=prepared.tools,
                )
                if answer is not None:
                    return answer.text, answer.cards, answer.written_by
                completion = await text.complete(
                    [
                        Message("system", prepared.system),
                        *history,
                        Message("user", request),
                    ],
                    GenerationOptions(
                        max_tokens=self.settings.text.default_max_tokens, temperature=0.7
                    ),
                    context,
                )
                reply = completion.text.strip() or "…"
                if completion.finish_reason == "length":
                    reply += CUT
                return reply, [], text.model_id
            except ContentBlocked as exc:
                refusal = "I can't help with that here."
                if exc.support:
                    refusal += f" {exc.support}"
                return refusal, [], None
            except Busy:
                await asyncio.sleep(2**attempt)
            except TownsquareError as exc:
                log.warning("mention %s: %s", prepared.message_id, exc.message)
                return "Sorry, I could not answer that just now. Try again in a moment.", [], None
        return "Sorry, I am busy right now. Ask me again in a minute.", [], None

    async def _screened(self, history: Sequence[Message], context: Context) -> list[Message]:
        """The group's recent messages the model may read: other members' ones that carry
        instructions to the assistant or a blocked hazard are left out."""
        theirs = [m for m in history if m.role == "user"]
        verdicts = await self.text.check_sources([m.content for m in theirs], context)
        dropped = {id(m) for m, v in zip(theirs, verdicts, strict=True) if not v.allowed}
        return [m for m in history if id(m) not in dropped]

    def _store(
        self, prepared: Prepared, text: str, cards: list[dict[str, Any]], model: str | None
    ) -> str | None:
        """Store the reply in the group (and, when the ``model`` wrote it, as a generation the
        asker may rate and training exports may use); queue its webhook."""
        with self.sessions.begin() as db:
            group = db.get(Group, prepared.group_id)
            asked = db.get(GroupMessage, prepared.message_id)
            if group is None or asked is None:
                raise NotFound("The group or the message was deleted while the reply was written.")
            bot = assistant_user(db, self.settings)
            reply = GroupMessage(
                external_id=f"ts-{uuid.uuid4().hex}",
                group_id=group.id,
                author_id=bot.id,
                text=text,
                cards=cards or None,
                reply_to_id=asked.id,
                answers_id=asked.id,
                created_at=datetime.now(UTC),
            )
            db.add(reply)
            try:
                with db.begin_nested():
                    db.flush()
            except IntegrityError:  # another worker answered it meanwhile: keep that one
                log.info("mention %s was answered meanwhile", prepared.message_id)
                return None
            if model is not None:
                generation = Generation(
                    feature=FEATURE,
                    user_id=prepared.asker_id,
                    inputs={"group": group.external_id, "message": reply.external_id},
                    output={"reply": text, "cards": cards},
                    model=model,
                    # the asker's words only: the other members' messages the model also read
                    # stay theirs (and go with them), not in a training export
                    prompt=[
                        {"role": "system", "content": prepared.system},
                        {"role": "user", "content": prepared.request or "Hello!"},
                    ],
                    answer=text,
                )
                db.add(generation)
                db.flush()
                add_contributors(db, generation.id, [prepared.asker_id])
                reply.generation_id = generation.id
            view = message_view(
                reply, group, bot.external_id or bot.name, asked.external_id, bot.display_name
            )
            webhooks.enqueue(db, "group.message.created", {"message": view})
            return reply.external_id

    # --- the event stream --------------------------------------------------------------------

    def _since(
        self, user_id: int, group_id: int, after: int, limit: int = READ_LIMIT
    ) -> list[tuple[int, dict[str, Any]]] | None:
        """The group's messages numbered after ``after``, in order (see
        ``storage/social_tables.py``: numbers follow commit order); None when the member left
        it."""
        with self.sessions() as db:
            user = db.get(User, user_id)
            group = db.get(Group, group_id)
            if user is None or group is None:
                return None
            if not access.is_admin(user) and access.membership_role(db, user, group_id) is None:
                return None
            rows = db.execute(
                select(GroupMessage, User.external_id, User.name, User.display_name)
                .join(User, User.id == GroupMessage.author_id)
                .where(
                    GroupMessage.group_id == group_id,
                    GroupMessage.seq > after,
                    GroupMessage.deleted_at.is_(None),
                )
                .order_by(GroupMessage.seq)
                .limit(limit)
            ).all()
            parents = {
                i: e
                for i, e in db.execute(
                    select(GroupMessage.id, GroupMessage.external_id).where(
                        GroupMessage.id.in_({m.reply_to_id for m, *_ in rows if m.reply_to_id})
                    )
                ).all()
            }
            return [
                (
                    m.seq,
                    message_view(m, group, ext or name, parents.get(m.reply_to_id or -1), display),
                )
                for m, ext, name, display in rows
            ]

    def latest_seq(self, group_id: int) -> int:
        """The number of the group's last committed message (a stream starts after it unless
        told otherwise)."""
        with self.sessions() as db:
            return int(db.scalar(select(Group.message_seq).where(Group.id == group_id)) or 0)

    def open_streams(self, user_id: int) -> int:
        """Event streams ``user_id`` holds open on this replica."""
        return self._per_member.get(user_id, 0)

    async def _watch(self, group_id: int) -> None:
        """The group's one watcher in this process while streams of it are open: one
        primary-key read of its last committed number every ``assistant.events_poll_s`` (at
        once when this process committed a message), waking the streams when it grew."""
        try:
            while self._streams.get(group_id):
                try:
                    seq = await finish_in_thread(self.latest_seq, group_id)
                except Exception:  # a database hiccup: look again at the next poll
                    log.exception("the watcher of group %s could not read", group_id)
                    seq = 0
                if seq > self._seen.get(group_id, 0):
                    self._seen[group_id] = seq
                    self._wake(group_id)
                nudge = self._nudges.setdefault(group_id, asyncio.Event())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.assistant.events_poll_s):
                        await nudge.wait()
                nudge.clear()
        finally:
            self._watchers.pop(group_id, None)

    def _open(self, user_id: int, group_id: int) -> None:
        self._per_member[user_id] = self._per_member.get(user_id, 0) + 1
        self._streams[group_id] = self._streams.get(group_id, 0) + 1
        watcher = self._watchers.get(group_id)
        if watcher is None or watcher.done():
            self._watchers[group_id] = asyncio.get_running_loop().create_task(
                self._watch(group_id), name=f"group-events-{group_id}"
            )

    def _close(self, user_id: int, group_id: int) -> None:
        for counts, key in ((self._per_member, user_id), (self._streams, group_id)):
            counts[key] -= 1
            if counts[key] <= 0:
                del counts[key]
        if group_id not in self._streams:
            self._nudge(group_id)  # its watcher sees no stream left and ends

    async def events(
        self, user_id: int, group_id: int, after: int, *, max_s: float
    ) -> AsyncIterator[str]:
        """SSE lines: each new message as ``id: <number>`` / ``event: message`` /
        ``data: {...}``, in commit order, a comment every 15 s to keep proxies from closing the
        stream; ends if the member leaves the group (noticed at the next message or within
        ``MEMBERSHIP_CHECK_S``). Idle streams cost nothing: the group's watcher reads for all of
        them (``_watch``)."""
        self._open(user_id, group_id)
        try:
            last_ping = time.monotonic()
            deadline = last_ping + max_s
            check_at = 0.0  # read at once: the messages after a Last-Event-ID
            yield ": connected\n\n"
            while True:
                now = time.monotonic()
                if self._seen.get(group_id, 0) > after or now >= check_at:
                    check_at = now + MEMBERSHIP_CHECK_S
                    committed = self._seen.get(group_id, 0)
                    found = await finish_in_thread(self._since, user_id, group_id, after)
                    if found is None:
                        yield 'event: end\ndata: {"reason": "not a member"}\n\n'
                        return
                    for seq, view in found:
                        after = seq
                        yield f"id: {seq}\nevent: message\ndata: {json.dumps(view)}\n\n"
                    if len(found) >= READ_LIMIT:
                        check_at = 0.0  # more to read
                        continue
                    # numbers up to what was committed before the read and not returned are
                    # deleted messages: nothing to wait for
                    after = max(after, committed)
                now = time.monotonic()
                if now >= deadline:
                    return
                if now - last_ping > 15:
                    last_ping = now
                    yield ": ping\n\n"
                wait = min(deadline, last_ping + 15, check_at) - now
                if self._seen.get(group_id, 0) > after:
                    continue
                changed = self._changed.setdefault(group_id, asyncio.Event())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, wait)):
                        await changed.wait()
        finally:
            self._close(user_id, group_id)
