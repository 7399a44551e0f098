"""The safety seam: services get a ``GuardedText``, never the raw backend.

Every input is checked before generation and every output while it streams (each delta is
checked, with the text so far, *before* it is handed on, so a blocked reply is never streamed
past the point where the policy objected) and once more when it is complete. Each final
decision is logged with its hazard codes and handed to an audit sink (the database).

Policies here are cheap and run inline. Model-based moderation against the hazard taxonomy
plugs in as another ``SafetyPolicy``.
"""

from __future__ import annotations

import logging
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import ClassVar, Literal, cast

import anyio
from typing_extensions import override

from townsquare.backends.base import (
    Completion,
    Delta,
    GenerationOptions,
    Message,
    TextBackend,
    Usage,
)
from townsquare.errors import ContentBlocked

log = logging.getLogger("townsquare.safety")

Stage = Literal["input", "output"]


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    hazards: tuple[str, ...] = ()
    reason: str = ""

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


@dataclass(frozen=True, slots=True)
class Context:
    """Who asked, for which feature, in which group; carried into decisions, logs and quotas."""

    feature: str
    user_id: int | None = None
    role: str | None = None
    group_id: int | None = None


class SafetyPolicy(ABC):
    """One check. ``check_output`` sees the reply so far; ``final`` says whether it is complete."""

    name: ClassVar[str]

    @abstractmethod
    def check_input(self, messages: Sequence[Message]) -> Decision:
        """Decide on the messages before generation."""

    @abstractmethod
    def check_output(self, text: str, *, final: bool) -> Decision:
        """Decide on the reply so far (``final``: it is complete)."""


class LengthPolicy(SafetyPolicy):
    """Blocks over-long inputs and outputs, and inputs carrying control characters."""

    name: ClassVar[str] = "length"

    def __init__(self, max_input_chars: int, max_output_chars: int) -> None:
        self.max_input_chars = max_input_chars
        self.max_output_chars = max_output_chars

    @override
    def check_input(self, messages: Sequence[Message]) -> Decision:
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
    def check_output(self, text: str, *, final: bool) -> Decision:
        if len(text) > self.max_output_chars:
            return Decision(
                False,
                ("length",),
                f"The reply grew past {self.max_output_chars} characters "
                "(safety.max_output_chars). Ask for a shorter answer.",
            )
        return Decision.allow()


@dataclass
class SafetyPipeline:
    """Runs every policy; the first refusal wins. Decisions go to the log and the audit sink."""

    policies: list[SafetyPolicy]
    audit: Callable[[SafetyEvent], None] | None = None

    def _record(self, event: SafetyEvent) -> None:
        level = logging.INFO if event.decision.allowed else logging.WARNING
        log.log(
            level,
            "safety %s %s",
            event.stage,
            "allowed" if event.decision.allowed else "blocked",
            extra={
                "feature": event.feature,
                "user_id": event.user_id,
                "hazards": list(event.decision.hazards),
                "allowed": event.decision.allowed,
            },
        )
        if self.audit is not None:
            self.audit(event)

    def check_input(self, messages: Sequence[Message], context: Context) -> Decision:
        """The first refusal of any policy for the input, or allow; refusals are audited."""
        decision = self._first_refusal(lambda p: p.check_input(messages))
        excerpt = messages[-1].content[:200] if messages else ""
        self._record(
            SafetyEvent(
                "input", context.feature, context.user_id, decision, excerpt, context.group_id
            )
        )
        return decision

    def check_output(self, text: str, context: Context, *, final: bool) -> Decision:
        """The first refusal of any policy for the output, or allow; refusals are audited."""
        decision = self._first_refusal(lambda p: p.check_output(text, final=final))
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

    def _first_refusal(self, check: Callable[[SafetyPolicy], Decision]) -> Decision:
        for policy in self.policies:
            decision = check(policy)
            if not decision.allowed:
                return decision
        return Decision.allow()


def _raise_blocked(stage: Stage, decision: Decision) -> None:
    what = "request" if stage == "input" else "reply"
    raise ContentBlocked(
        decision.reason
        or f"The {what} was blocked by the safety policy "
        f"(hazards: {', '.join(decision.hazards)}). Rephrase and try again.",
        decision.hazards,
    )


class GuardedText:
    """A text backend wrapped in the safety pipeline: the only way services generate text."""

    def __init__(
        self,
        backend: TextBackend,
        pipeline: SafetyPipeline,
        *,
        admit: Callable[[Context], None] | None = None,
        on_usage: Callable[[Context, str, Usage], None] | None = None,
    ) -> None:
        self.backend = backend
        self.pipeline = pipeline
        self._admit = admit
        self._on_usage = on_usage

    def _before(self, messages: Sequence[Message], context: Context) -> None:
        if self._admit is not None:
            self._admit(context)  # quotas: raises QuotaExceeded
        decision = self.pipeline.check_input(messages, context)
        if not decision.allowed:
            _raise_blocked("input", decision)

    def _count(self, context: Context, usage: Usage | None) -> None:
        if usage is not None and self._on_usage is not None:
            self._on_usage(context, self.backend.model_id, usage)

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
        completion = await self.backend.complete(messages, options)
        self._count(context, completion.usage)
        if check_output:
            decision = self.pipeline.check_output(completion.text, context, final=True)
            if not decision.allowed:
                _raise_blocked("output", decision)
        return completion

    def check_items(self, items: Sequence[str], context: Context) -> list[str]:
        """The items that pass the output check (each checked, and logged, on its own)."""
        return [i for i in items if self.pipeline.check_output(i, context, final=True).allowed]

    async def stream(
        self, messages: Sequence[Message], options: GenerationOptions, context: Context
    ) -> AsyncIterator[Delta]:
        """Stream a reply with the input checked first and the output checked as it grows; a refusal
        mid-stream ends it with ``ContentBlocked``."""
        await anyio.to_thread.run_sync(self._before, messages, context)
        text = ""
        # aclosing: when a check fails or the client leaves, the backend stream is closed now,
        # which frees a local model at once instead of whenever the generator is collected.
        source = cast(AsyncGenerator[Delta, None], self.backend.stream(messages, options))
        async with aclosing(source) as deltas:
            async for delta in deltas:
                text += delta.text
                final = delta.finish_reason is not None
                if final:
                    self._count(context, delta.usage)
                if delta.text or final:
                    decision = self.pipeline.check_output(text, context, final=final)
                    if not decision.allowed:
                        _raise_blocked("output", decision)
                yield delta
