"""Answers that use the town: route (or let the model call), run the tools, ground the text.

``Agent.tool_answer`` is shared by the 1:1 assistant and the group-chat assistant:

- ``tool_mode = "router"`` (default; the bundled 135M model): the deterministic router picks a
  tool and its arguments; the tool runs with the member's permissions; the answer is the
  tool's template sentence and its cards. No free generation names anything.
- ``tool_mode = "model"`` (a model that calls functions): the model gets the tools in the
  OpenAI format and calls them (up to ``assistant.max_tool_rounds`` rounds); a call to an
  unknown function or with arguments that do not match the schema is answered with a tool
  error the model can correct; then the model writes the answer with tools off. That text
  must pass ``grounding.problems`` or the templates replace it.
- ``"off"``: no tools.

The member's request is screened by the safety pipeline before any tool runs, so a blocked
request never reaches the town's content (in model mode by the model call that asks for the
tools); a request no tool applies to is screened once, by the model call that answers it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
from sqlalchemy import select
from sqlalchemy.orm import Session

from townsquare.backends import tool_calls
from townsquare.backends.base import Completion, GenerationOptions, Message, Usage
from townsquare.features.assistant import grounding
from townsquare.features.assistant.router import Route, Router
from townsquare.features.assistant.tools import Asker, Tool, ToolEnv, ToolResult, specs
from townsquare.features.search.service import place_names
from townsquare.safety.pipeline import Context
from townsquare.storage.social_tables import Group, Membership

log = logging.getLogger("townsquare.assistant")

FALLBACK = "Here is what I found:"


@dataclass
class ToolAnswer:
    """An answer built from tools: the text to send, the cards to show, and how it was made."""

    text: str
    cards: list[dict[str, Any]]
    results: list[ToolResult]
    route: Route | None = None
    completion: Completion | None = None  # the model's, when the model wrote the text
    written_by: str = "townsquare-tools"  # the templates, or the model's id when it wrote it
    problems: list[str] = field(default_factory=list)  # found in a model's text, then replaced


def _known(db: Session, user_id: int) -> tuple[list[str], list[str]]:
    places = place_names(db)
    groups = list(
        db.scalars(
            select(Group.name)
            .join(Membership, Membership.group_id == Group.id)
            .where(Membership.user_id == user_id)
        )
    )
    return places, groups


def template_text(results: Sequence[ToolResult]) -> str:
    """The answer around the results: each tool's template sentence (or its error)."""
    return "\n\n".join((r.error or r.text) for r in results if (r.error or r.text))


class Agent:
    """Routes, runs tools and grounds answers for one app (see the module docstring)."""

    def __init__(self, env: ToolEnv, tools: dict[str, Tool], router: Router) -> None:
        self.env = env
        self.tools = tools
        self.router = router

    @property
    def mode(self) -> str:
        """The configured tool mode."""
        return self.env.settings.assistant.tool_mode

    async def screen(self, messages: Sequence[Message], context: Context) -> None:
        """The input check of the safety pipeline (``ContentBlocked`` when refused)."""
        await anyio.to_thread.run_sync(self.env.text.screen, messages, context)

    async def route(
        self, content: str, asker: Asker, *, allowed: Sequence[str] | None = None
    ) -> Route:
        """The router's decision for ``content`` (on a worker thread: it embeds)."""

        def decide() -> Route:
            with self.env.sessions() as db:
                places, groups = _known(db, asker.user_id)
                here = db.get(Group, asker.group_id) if asker.group_id is not None else None
            return self.router.route(
                content,
                places=places,
                groups=groups,
                here=here.name if here is not None else None,
                allowed=allowed,
            )

        return await anyio.to_thread.run_sync(decide)

    def finish(
        self, results: list[ToolResult], request: str, route: Route | None = None
    ) -> ToolAnswer:
        """The template answer for ``results``, checked (a failing check sends only the
        fallback line: never an unchecked claim)."""
        text = template_text(results)
        found = grounding.problems(text, results, request=request)
        if found:  # a template bug: logged, and the claim is not sent
            log.error("template answer failed the grounding check: %s", found)
            text = FALLBACK
        cards = [card for r in results for card in r.cards]
        return ToolAnswer(text, cards, results, route)

    async def tool_answer(
        self,
        content: str,
        asker: Asker,
        context: Context,
        *,
        history: Sequence[Message] = (),
        system: str = "",
        allowed: Sequence[str] | None = None,
        max_tokens: int = 256,
    ) -> ToolAnswer | None:
        """An answer from the tools, or None when no tool applies (the model answers then).

        ``allowed`` limits the tools (a group's persona); ``history`` and ``system`` are what
        a model in ``model`` mode reads."""
        if self.mode == "off" or allowed == []:
            return None
        if self.mode == "router":
            route = await self.route(content, asker, allowed=allowed)
            if route.tool is None:
                return None  # the model answers; its own call screens the request
            # screened before the tool reads any of the town's content; the tool reads it as
            # the member, under the access rules, so naming people is no privacy risk by itself
            await self.screen(
                [*history, Message("user", content)], replace(context, member_scoped=True)
            )
            result = await self.tools[route.tool](asker, route.arguments)
            return self.finish([result], content, route)
        return await self._model_calls(
            content,
            asker,
            context,
            history=history,
            system=system,
            allowed=allowed,
            max_tokens=max_tokens,
        )

    async def _model_calls(
        self,
        content: str,
        asker: Asker,
        context: Context,
        *,
        history: Sequence[Message],
        system: str,
        allowed: Sequence[str] | None,
        max_tokens: int,
    ) -> ToolAnswer | None:
        offered = specs(self.tools, allowed)
        messages: list[Message] = [
            *([Message("system", system)] if system else []),
            *history,
            Message("user", content),
        ]
        options = GenerationOptions(max_tokens=max_tokens, temperature=0.2, tools=offered)
        results: list[ToolResult] = []
        usage = Usage()
        for _ in range(self.env.settings.assistant.max_tool_rounds):
            completion = await self.env.text.complete(messages, options, context)
            usage = Usage(
                usage.prompt_tokens + completion.usage.prompt_tokens,
                usage.completion_tokens + completion.usage.completion_tokens,
            )
            if not completion.tool_calls:
                if not results:  # no card is shown: no sentence may announce one
                    return ToolAnswer(
                        grounding.without_unshown_cards(completion.text),
                        [],
                        [],
                        completion=completion,
                        written_by=self.env.text.model_id,
                    )
                break
            messages.append(Message("assistant", completion.text, completion.tool_calls))
            for call in completion.tool_calls:
                try:
                    arguments = tool_calls.arguments_of(call, offered)
                except ValueError as exc:  # fed back: the model may correct itself
                    error = json.dumps({"error": str(exc)})
                    messages.append(Message("tool", error, tool_call_id=call.id))
                    continue
                result = await self.tools[call.name](asker, arguments)
                results.append(result)
                # what the tool found is other members' content: read as data, and left out
                # when it carries instructions to the assistant or a blocked hazard
                data = result.for_model()
                (verdict,) = await self.env.text.check_sources([data], context)
                if not verdict.allowed:
                    data = json.dumps({"error": "the results were withheld: " + verdict.reason})
                messages.append(Message("tool", data, tool_call_id=call.id))
        if not results:
            return None
        # the answer is built from others' content: no contact or payment details the
        # member did not ask with
        final = await self.env.text.complete(
            messages,
            replace(options, tool_choice="none"),
            replace(context, third_party=True, request=content),
        )
        usage = Usage(
            usage.prompt_tokens + final.usage.prompt_tokens,
            usage.completion_tokens + final.usage.completion_tokens,
        )
        found = grounding.problems(final.text, results, request=content)
        answer = self.finish(results, content)
        answer.completion = Completion(final.text, final.finish_reason, usage)
        if found or not final.text.strip():
            log.warning("model answer replaced by the template: %s", found or "empty")
            answer.problems = found
            return answer
        answer.text = final.text
        answer.written_by = self.env.text.model_id
        return answer
