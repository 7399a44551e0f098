"""The safety seam: services get a ``GuardedText``, never the raw backend.

Every input is checked before generation and every output while it streams (each delta is
checked, with the text so far, *before* it is handed on, so a blocked reply is never streamed
past the point where the policy objected) and once more when it is complete. Each final
decision is logged with its hazard codes and handed to an audit sink (the database).

``LengthPolicy`` is cheap; ``ModerationPolicy`` scores text with a moderator
(``safety/moderation.py``) and applies the group's policy (``safety/policy.py``): codes set to
``block`` refuse, ``warn`` let the text through and are logged. Checks run in worker threads,
never on the event loop; a streamed reply is checked every ``safety.stream_check_chars``.
"""

from __future__ import annotations

import itertools
import logging
import time
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import ClassVar, Literal, cast

import anyio
import httpx
from typing_extensions import override

from townsquare.backends import tool_calls
from townsquare.backends.base import (
    Completion,
    Delta,
    GenerationOptions,
    Message,
    TextBackend,
    Usage,
)
from townsquare.backends.pools import Pool, Pools
from townsquare.errors import BackendUnavailable, ContentBlocked, PayloadTooLarge
from townsquare.safety import rules
from townsquare.safety.moderation import Moderator, Scores
from townsquare.safety.policy import PolicyStore
from townsquare.safety.taxonomy import HAZARDS

log = logging.getLogger("townsquare.safety")

Stage = Literal["input", "output", "source"]


@dataclass(frozen=True, slots=True)
class Decision:
    """A policy's verdict: ``hazards`` refused it; ``warnings`` apply but are only logged."""

    allowed: bool
    hazards: tuple[str, ...] = ()
    reason: str = ""
    warnings: tuple[str, ...] = ()
    support: str | None = None  # shown instead of a bare refusal (S11)

    @classmethod
    def allow(cls) -> Decision:
        """A decision that lets the text through."""
        return cls(True)


@dataclass(frozen=True, slots=True)
class SafetyEvent:
    """One decision, as the audit sink receives it."""

    stage: Stage
    feature: str
    user_id: int | None
    decision: Decision
    excerpt: str = ""
    group_id: int | None = None


ALL_ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")


@dataclass(frozen=True, slots=True)
class Context:
    """Who asked, for which feature, in which group; carried into decisions, logs and quotas."""

    feature: str
    user_id: int | None = None
    role: str | None = None
    group_id: int | None = None
    # What the member wrote, when a feature wraps it in a prompt of its own: moderation reads
    # this instead of the prompt (whose instructions are ours). () means nothing to read.
    subject: tuple[str, ...] | None = None
    # Without a subject: the roles of the messages the caller wrote. Features whose system
    # prompt is ours leave it at user turns; /v1 reads every role (a member sent them all).
    supplied: tuple[str, ...] = ("user",)
    # The request goes to a tool that reads the town as the member, under the access rules
    # (catch-up, search, suggestions): naming people is not a privacy risk by itself, so S7
    # refuses it only on a rule's word (an address, a phone number, tracking), never on the
    # classifier's alone.
    member_scoped: bool = False
    # The reply is built from other members' content: phone numbers, IBANs, links and payment
    # instructions the member's own request does not hold are refused in it (X2).
    third_party: bool = False
    request: str = ""


class SafetyPolicy(ABC):
    """One check. ``check_output`` sees the reply so far; ``final`` says whether it is complete."""

    name: ClassVar[str]

    @abstractmethod
    def check_input(self, messages: Sequence[Message], context: Context) -> Decision:
        """Decide on the messages before generation."""

    @abstractmethod
    def check_output(self, text: str, context: Context, *, final: bool) -> Decision:
        """Decide on the reply so far (``final``: it is complete)."""

    def check_items(self, items: Sequence[str], context: Context) -> list[Decision]:
        """Decide on several finished outputs (suggestions) at once."""
        return [self.check_output(item, context, final=True) for item in items]


class LengthPolicy(SafetyPolicy):
    """Blocks over-long inputs and outputs, and inputs carrying control characters."""

    name: ClassVar[str] = "length"

    def __init__(self, max_input_chars: int, max_output_chars: int) -> None:
        self.max_input_chars = max_input_chars
        self.max_output_chars = max_output_chars

    @override
    def check_input(self, messages: Sequence[Message], context: Context) -> Decision:
        total = sum(len(m.content) for m in messages)
        if total > self.max_input_chars:
            return Decision(
                False,
                ("length",),
                f"The input has {total} characters; the limit is {self.max_input_chars} "
                "(safety.max_input_chars). Shorten it.",
            )
        for message in messages:
            if any(
                unicodedata.category(ch) == "Cc" and ch not in "\n\r\t" for ch in message.content
            ):
                return Decision(
                    False, ("format",), "The input contains control characters. Remove them."
                )
        return Decision.allow()

    @override
    def check_output(self, text: str, context: Context, *, final: bool) -> Decision:
        if len(text) > self.max_output_chars:
            return Decision(
                False,
                ("length",),
                f"The reply grew past {self.max_output_chars} characters "
                "(safety.max_output_chars). Ask for a shorter answer.",
            )
        return Decision.allow()


class ModerationPolicy(SafetyPolicy):
    """Scores text with a moderator and applies the group's policy to every code.

    The input check reads every member-written turn (``Context.subject``, or every message of
    the roles in ``Context.supplied``): each on its own, each with the turn after it, and all
    of them together, so a request split over turns or pushed back behind others is read as a
    whole. S11 comes first: when the member's newest turn scores S11 at or above
    ``s11_threshold`` (None: the moderator's own tuned bar), they get the support text
    whatever else applies.
    """

    name: ClassVar[str] = "moderation"

    def __init__(
        self,
        moderator: Moderator,
        policies: PolicyStore,
        *,
        support_message: str,
        s11_threshold: float | None = None,
        max_texts: int = 256,
        fail_open: bool = False,
    ) -> None:
        self.moderator = moderator
        self.policies = policies
        self.support_message = support_message
        self.s11_threshold = moderator.s11_bar() if s11_threshold is None else s11_threshold
        self.max_texts = max_texts
        self.fail_open = fail_open

    def _scores(self, texts: Sequence[str], role: Literal["user", "assistant"]) -> list[Scores]:
        try:
            return self.moderator.score(texts, role=role)
        except (OSError, ValueError, KeyError, httpx.HTTPError) as exc:
            if self.fail_open:
                log.warning(
                    "moderation (%s) failed, text let through (safety.guard_fail_open): %s",
                    self.moderator.name,
                    exc,
                )
                return [{} for _ in texts]
            raise BackendUnavailable(
                f"The moderation service ({self.moderator.name}) did not answer ({exc}); "
                "nothing was generated. Try again shortly."
            ) from exc

    def decide(self, scores: Scores, context: Context, text: str = "") -> Decision:
        """The verdict of the group's policy on one text's scores."""
        policy = self.policies.policy(context.group_id)
        if context.member_scoped and "S7" in scores and "S7" not in rules.request_codes(text):
            scores = {c: v for c, v in scores.items() if c != "S7"}
        blocked, warned = [], []
        for code, rule in policy.rules.items():
            if scores.get(code, 0.0) >= rule.threshold:
                if rule.action == "block":
                    blocked.append(code)
                elif rule.action == "warn":
                    warned.append(code)
        if not blocked:
            return Decision(True, warnings=tuple(warned))
        if "S11" in blocked:
            return self.support(tuple(blocked), tuple(warned))
        names = ", ".join(f"{c} {HAZARDS[c].name}" for c in blocked)
        return Decision(
            False,
            tuple(blocked),
            f"This can't be answered here: it looks like {names}, which this community's "
            "policy does not allow. If that's a mistake, rephrase and try again.",
            tuple(warned),
        )

    def support(
        self, hazards: tuple[str, ...] = ("S11",), warned: tuple[str, ...] = ()
    ) -> Decision:
        """The S11 answer: the support text, never a bare refusal."""
        return Decision(False, hazards, self.support_message, warned, self.support_message)

    def written(self, messages: Sequence[Message], context: Context) -> list[str]:
        """What the member wrote, oldest first (413 beyond ``max_texts``)."""
        if context.subject is not None:
            texts = [t for t in context.subject if t.strip()]
        else:
            texts = [
                m.content for m in messages if m.role in context.supplied and m.content.strip()
            ]
            texts += [
                c.arguments
                for m in messages
                if m.role in context.supplied
                for c in m.tool_calls
                if c.arguments.strip()
            ]
        if len(texts) > self.max_texts:
            raise PayloadTooLarge(
                f"The request holds {len(texts)} turns to check; at most {self.max_texts} are "
                "read (safety.max_checked_texts). Drop older turns."
            )
        return texts

    @override
    def check_input(self, messages: Sequence[Message], context: Context) -> Decision:
        texts = self.written(messages, context)
        if not texts:
            return Decision.allow()
        joins = [j for j in _joins(texts) if j not in texts]
        units = list(dict.fromkeys(texts + joins))
        scores = dict(zip(units, self._scores(units, "user"), strict=True))
        for join in joins:  # a join is a conversation, not a jailbreak template: X3 by rule only
            if not rules.attack_rules(join):
                scores[join] = {c: v for c, v in scores[join].items() if c != "X3"}
        if scores[texts[-1]].get("S11", 0.0) >= self.s11_threshold:
            return self.support()
        return _merge([self.decide(scores[u], context, u) for u in units])

    @override
    def check_output(self, text: str, context: Context, *, final: bool) -> Decision:
        if not text.strip():
            return Decision.allow()
        (scores,) = self._scores([text], "assistant")
        return self.decide(scores, context)

    @override
    def check_items(self, items: Sequence[str], context: Context) -> list[Decision]:
        return [self.decide(s, context) for s in self._scores(list(items), "assistant")]

    def check_training(self, text: str, threshold: float) -> Decision:
        """Whether ``text`` may become training data: refused when any code scores at or above
        ``threshold`` read as a request or as a reply (whatever the policy's action)."""
        # the whole check, whatever the cascade says: this text may be trained on
        thorough = getattr(self.moderator, "score_thorough", None)
        if thorough is not None:
            as_request = thorough([text], role="user")[0]
            as_reply = thorough([text], role="assistant")[0]
        else:
            as_request = self._scores([text], "user")[0]
            as_reply = self._scores([text], "assistant")[0]
        codes = sorted(
            c
            for c in {*as_request, *as_reply}
            if max(as_request.get(c, 0.0), as_reply.get(c, 0.0)) >= threshold
        )
        if not codes:
            return Decision.allow()
        return Decision(
            False,
            tuple(codes),
            f"Kept out of training: it scores {', '.join(codes)} (safety.training_threshold).",
        )

    def check_sources(self, texts: Sequence[str], context: Context) -> list[Decision]:
        """A decision per piece of other members' content a feature is about to put in a
        prompt: refused when it carries instructions to the assistant (X3) or a hazard the
        policy blocks. Features leave refused sources out."""
        decisions = []
        for text, scores in zip(texts, self._scores(list(texts), "user"), strict=True):
            decisions.append(
                _instructions(text) or self.decide(scores, replace(context, member_scoped=True))
            )
        return decisions


def _instructions(text: str) -> Decision | None:
    """X3 for content that gives the assistant orders (``rules.instructions_in``)."""
    orders = rules.instructions_in(text)
    if not orders:
        return None
    return Decision(
        False,
        ("X3",),
        f"It holds instructions to the assistant ({', '.join(orders)}), so it is treated as "
        "content only and left out.",
    )


def _joins(texts: Sequence[str]) -> list[str]:
    """Each turn with the next, and all turns together: a request split over turns is read
    whole. A bare follow-up ("Tell me more") adds nothing to the turn before it, which is read
    on its own, so it joins nothing; filler can only frame the turn after it ("Tell me how
    to" + "..."), where it stays."""
    bare = [rules.contentless(t) for t in texts]
    pairs = [
        f"{a}\n{b}"
        for (a, b), last in zip(itertools.pairwise(texts), bare[1:], strict=True)
        if not last
    ]
    kept = [
        t for i, t in enumerate(texts) if not bare[i] or (i + 1 < len(texts) and not bare[i + 1])
    ]
    return pairs + (["\n".join(kept)] if len(kept) > 2 else [])


def _third_party(text: str, context: Context) -> Decision | None:
    """X2 when a reply built from others' content carries contact or payment details that the
    member's own request does not hold."""
    if not context.third_party:
        return None
    found = rules.unrequested_contacts(text, context.request)
    if not found:
        return None
    return Decision(
        False,
        ("X2",),
        "The answer repeated a phone number, account, link or payment instruction from "
        "another member's content, so it was not sent. Open the source itself to see it.",
    )


def _merge(decisions: Sequence[Decision]) -> Decision:
    """The first refusal (one with the support text first: S11 goes before any other code)."""
    warned = tuple(dict.fromkeys(w for d in decisions for w in d.warnings))
    refusals = [d for d in decisions if not d.allowed]
    refusals.sort(key=lambda d: d.support is None)  # stable: otherwise the first one
    for decision in refusals:
        return Decision(False, decision.hazards, decision.reason, warned, decision.support)
    return Decision(True, warnings=warned)


@dataclass
class SafetyPipeline:
    """Runs every policy; the first refusal wins. Decisions go to the log and the audit sink."""

    policies: list[SafetyPolicy]
    audit: Callable[[SafetyEvent], None] | None = None

    def _record(self, event: SafetyEvent) -> None:
        level = (
            logging.INFO
            if event.decision.allowed and not event.decision.warnings
            else logging.WARNING
        )
        log.log(
            level,
            "safety %s %s %s",
            event.stage,
            "allowed" if event.decision.allowed else "blocked",
            ",".join(event.decision.hazards or event.decision.warnings),
            extra={
                "feature": event.feature,
                "user_id": event.user_id,
                "hazards": list(event.decision.hazards),
                "warnings": list(event.decision.warnings),
                "allowed": event.decision.allowed,
            },
        )
        if self.audit is not None:
            # a self-harm disclosure is not kept word for word, nor is another member's
            # content that a feature screened (the codes and the reason are)
            if event.stage == "source" or "S11" in event.decision.hazards:
                event = replace(event, excerpt="")
            self.audit(event)

    def record(self, event: SafetyEvent) -> None:
        """Log and audit a decision made outside the policies (the image output check)."""
        self._record(event)

    def check_input(self, messages: Sequence[Message], context: Context) -> Decision:
        """The first refusal of any policy for the input, or allow; refusals are audited."""
        decision = self._first_refusal(lambda p: p.check_input(messages, context))
        excerpt = messages[-1].content[:200] if messages else ""
        self._record(
            SafetyEvent(
                "input", context.feature, context.user_id, decision, excerpt, context.group_id
            )
        )
        return decision

    def check_output(self, text: str, context: Context, *, final: bool) -> Decision:
        """The first refusal of any policy for the output, or allow; refusals are audited.
        A complete reply built from others' content is also refused when it carries their
        contact or payment details (whatever the moderation backend: an injection defence)."""
        decision = self._first_refusal(lambda p: p.check_output(text, context, final=final))
        if decision.allowed and final:
            decision = _third_party(text, context) or decision
        if final or not decision.allowed:
            self._record(
                SafetyEvent(
                    "output",
                    context.feature,
                    context.user_id,
                    decision,
                    text[:200],
                    context.group_id,
                )
            )
        return decision

    def check_items(self, items: Sequence[str], context: Context) -> list[Decision]:
        """A decision per finished output (each one logged and audited)."""
        verdicts: list[list[Decision]] = [p.check_items(items, context) for p in self.policies]
        verdicts.append([_third_party(i, context) or Decision.allow() for i in items])
        decisions = [_merge([v[i] for v in verdicts]) for i in range(len(items))]
        for item, decision in zip(items, decisions, strict=True):
            self._record(
                SafetyEvent(
                    "output",
                    context.feature,
                    context.user_id,
                    decision,
                    item[:200],
                    context.group_id,
                )
            )
        return decisions

    def screen_text(
        self, context: Context, *, training_threshold: float | None = None
    ) -> Callable[[str], Decision]:
        """A function that runs the input check on one text a member wrote (a correction, a
        persona): blocking, for worker threads. With ``training_threshold`` the text is meant
        for training too, and any code at that score refuses it (``check_training``)."""

        def screen(text: str) -> Decision:
            decision = self.check_input([], replace(context, subject=(text,)))
            if not decision.allowed or training_threshold is None:
                return decision
            for policy in self.policies:
                if isinstance(policy, ModerationPolicy):
                    strict = policy.check_training(text, training_threshold)
                    if not strict.allowed:
                        self._record(
                            SafetyEvent(
                                "input",
                                context.feature,
                                context.user_id,
                                strict,
                                text[:200],
                                context.group_id,
                            )
                        )
                        return strict
            return decision

        return screen

    def check_sources(self, texts: Sequence[str], context: Context) -> list[Decision]:
        """A decision per piece of other members' content (see
        ``ModerationPolicy.check_sources``); refused ones are logged and audited."""
        # instructions to the assistant are withheld whatever the moderation backend (even
        # 'off'): a prompt-injection defence, not a content policy
        decisions = [_instructions(t) or Decision.allow() for t in texts]
        for policy in self.policies:
            if isinstance(policy, ModerationPolicy) and texts:
                decisions = [
                    _merge([a, b])
                    for a, b in zip(decisions, policy.check_sources(texts, context), strict=True)
                ]
        for text, decision in zip(texts, decisions, strict=True):
            if not decision.allowed:
                self._record(
                    SafetyEvent(
                        "source",
                        context.feature,
                        context.user_id,
                        decision,
                        text[:200],
                        context.group_id,
                    )
                )
        return decisions

    def _first_refusal(self, check: Callable[[SafetyPolicy], Decision]) -> Decision:
        return _merge([check(policy) for policy in self.policies])


def _raise_blocked(stage: Stage, decision: Decision) -> None:
    what = "request" if stage == "input" else "reply"
    raise ContentBlocked(
        decision.reason
        or f"The {what} was blocked by the safety policy "
        f"(hazards: {', '.join(decision.hazards)}). Rephrase and try again.",
        decision.hazards,
        support=decision.support,
    )


# Seconds spent generating, added up per task when a caller sets a list here (the group
# assistant measures its own overhead without the model's time this way).
model_seconds: ContextVar[list[float] | None] = ContextVar("model_seconds", default=None)


def _spent(start: float) -> None:
    spent = model_seconds.get()
    if spent is not None:
        spent.append(time.perf_counter() - start)


class GuardedText:
    """A text backend wrapped in the safety pipeline: the only way services generate text."""

    def __init__(
        self,
        backend: TextBackend,
        pipeline: SafetyPipeline,
        *,
        admit: Callable[[Context], None] | None = None,
        on_usage: Callable[[Context, str, Usage], None] | None = None,
        check_every_chars: int = 1,
        pools: Pools | None = None,
        on_pool: Callable[[str, int], None] | None = None,
    ) -> None:
        self.backend = backend
        self.pipeline = pipeline
        self.check_every_chars = check_every_chars
        self.pools = pools
        self._admit = admit
        self._on_usage = on_usage
        self._on_pool = on_pool  # (pool, +1 admitted / -1 finished)

    def _enter(self, context: Context) -> tuple[TextBackend, Pool | None]:
        """The backend of the context's pool, admitted within the pool's budget (``Busy``
        beyond it)."""
        if self.pools is None:
            return self.backend, None
        pool = self.pools.for_feature(context.feature)
        pool.admission.acquire()
        if self._on_pool is not None:
            self._on_pool(pool.name, 1)
        return pool.backend, pool

    def _leave(self, pool: Pool | None) -> None:
        if pool is not None:
            pool.admission.release()
            if self._on_pool is not None:
                self._on_pool(pool.name, -1)

    def _before(self, messages: Sequence[Message], context: Context) -> None:
        if self._admit is not None:
            self._admit(context)  # quotas: raises QuotaExceeded
        decision = self.pipeline.check_input(messages, context)
        if not decision.allowed:
            _raise_blocked("input", decision)

    def screen(self, messages: Sequence[Message], context: Context) -> None:
        """The input check alone (blocking; run it on a worker thread): for work that reads
        the member's request without generating, such as the assistant's tools."""
        decision = self.pipeline.check_input(messages, context)
        if not decision.allowed:
            _raise_blocked("input", decision)

    def _count(self, context: Context, usage: Usage | None, model_id: str) -> None:
        if usage is not None and self._on_usage is not None:
            self._on_usage(context, model_id, usage)

    @property
    def model_id(self) -> str:
        """The wrapped backend's model id."""
        return self.backend.model_id

    @property
    def context_window(self) -> int:
        """The wrapped backend's context window in tokens."""
        return self.backend.context_window

    def count_message_tokens(self, messages: Sequence[Message]) -> int:
        """Tokens ``messages`` take in the wrapped backend's chat template."""
        return self.backend.count_message_tokens(messages)

    async def complete(
        self,
        messages: Sequence[Message],
        options: GenerationOptions,
        context: Context,
        *,
        check_output: bool = True,
    ) -> Completion:
        """Generate with input and output checks.

        ``check_output=False`` is for structured answers whose items the caller checks one by
        one with ``check_items`` (so one unsafe suggestion drops itself, not the whole answer).
        """
        await anyio.to_thread.run_sync(self._before, messages, context)
        backend, pool = self._enter(context)
        start = time.perf_counter()
        try:
            completion = await tool_calls.complete(backend, messages, options)
        finally:
            _spent(start)
            self._leave(pool)
        # the quota store may be Redis or the database: off the event loop
        await anyio.to_thread.run_sync(self._count, context, completion.usage, backend.model_id)
        if check_output:
            said = "\n".join([completion.text, *(c.arguments for c in completion.tool_calls)])
            decision = await anyio.to_thread.run_sync(self._check_reply, said.strip(), context)
            if not decision.allowed:
                _raise_blocked("output", decision)
        return completion

    def _check_reply(self, text: str, context: Context, final: bool = True) -> Decision:
        return self.pipeline.check_output(text, context, final=final)

    async def check_sources(self, texts: Sequence[str], context: Context) -> list[Decision]:
        """Screen other members' content before it goes into a prompt (on a worker thread):
        a decision per text; features leave the refused ones out."""
        if not texts:
            return []
        return await anyio.to_thread.run_sync(self.pipeline.check_sources, texts, context)

    async def check_items(self, items: Sequence[str], context: Context) -> list[str]:
        """The items that pass the output check (each decided, and logged, on its own; blocked
        ones are dropped, the rest kept in order)."""
        if not items:
            return []
        decisions = await anyio.to_thread.run_sync(self.pipeline.check_items, items, context)
        return [i for i, d in zip(items, decisions, strict=True) if d.allowed]

    async def stream(
        self, messages: Sequence[Message], options: GenerationOptions, context: Context
    ) -> AsyncIterator[Delta]:
        """Stream a reply with the input checked first and the output checked as it grows; a refusal
        mid-stream ends it with ``ContentBlocked``."""
        await anyio.to_thread.run_sync(self._before, messages, context)
        text = ""
        checked = 0  # length of the text at the last check
        every = self.check_every_chars
        # aclosing: when a check fails or the client leaves, the backend stream is closed now,
        # which frees a local model at once instead of whenever the generator is collected.
        backend, pool = self._enter(context)
        source = cast(AsyncGenerator[Delta, None], tool_calls.stream(backend, messages, options))
        start = time.perf_counter()
        try:
            async with aclosing(source) as deltas:
                async for delta in deltas:
                    if delta.finish_reason is not None:
                        _spent(start)
                    text += delta.text + "".join(f"\n{c.arguments}" for c in delta.tool_calls)
                    final = delta.finish_reason is not None
                    if final:
                        await anyio.to_thread.run_sync(
                            self._count, context, delta.usage, backend.model_id
                        )
                    if final or len(text) - checked >= every:
                        checked = len(text)
                        decision = await anyio.to_thread.run_sync(
                            self._check_reply, text, context, final
                        )
                        if not decision.allowed:
                            _raise_blocked("output", decision)
                    yield delta
        finally:
            self._leave(pool)
