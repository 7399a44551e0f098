"""Function calling for engines that have none of their own: the output is constrained to a call.

OpenAI-compatible servers take ``tools`` natively (``supports_tools``). A local GGUF does not,
so the tools are described in the system prompt, earlier calls and their results are written
into the conversation as text, and the reply is generated under a JSON schema (a llama.cpp
grammar) that allows exactly what ``tool_choice`` allows:

- ``required`` or a tool's name: ``{"tool_calls": [{"name": ..., "arguments": {...}}]}`` whose
  ``name`` is one of the offered tools and whose ``arguments`` follow that tool's parameters;
- ``auto``: that, or ``{"content": "..."}`` for a plain answer.

So every call a local model makes names a real tool with arguments that match its schema: a
small model can still choose badly, but never malformed. The reply is then parsed back into
``Completion.tool_calls`` (ids ``call_<hex>``).

A GGUF whose chat template has tools of its own (Qwen 2.5, Hermes: ``<tool_call>``; Llama 3.x:
``{"name": ..., "parameters": ...}``) is asked in its own words instead: ``markup_of`` reads
the markup from the template, the backend renders the tools, earlier calls and tool results
with the template, and constrains the reply to that markup (``markup_grammar``: calls, or a
plain answer that does not begin like one); ``parse_markup`` reads the calls back.

With ``auto``, a reply that only repeats calls
already made and answered since the member's last message is generated again as an answer
(``tool_choice="none"``): the results would be the same, and a small model would otherwise
call the same tool forever (LangChain's two-step loop never ended).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator

from townsquare.backends.base import (
    Completion,
    Delta,
    GenerationOptions,
    Message,
    TextBackend,
    ToolCall,
    ToolMarkup,
    ToolSpec,
    Usage,
)
from townsquare.errors import BackendError

MAX_PARALLEL = 4  # calls one local reply may make when parallel_tool_calls is on
MIN_TOKENS = 192  # a call with its arguments needs room, whatever max_tokens the caller asked


HERMES = ToolMarkup("hermes", "<tool_call>\n", "\n</tool_call>", "arguments")
LLAMA3_JSON = ToolMarkup("llama3-json", "", "", "parameters")


def markup_of(template: str | None) -> ToolMarkup | None:
    """The call markup a chat template teaches its model, or None when it shows no tools (the
    generic JSON form is used): ``<tool_call>`` tags (Qwen 2.5, Hermes, SmolLM3), or Llama 3.x's
    bare ``{"name": ..., "parameters": ...}``."""
    if not template or "tools" not in template:
        return None
    if "<tool_call>" in template:
        return HERMES
    if "Given the following functions" in template and '"parameters"' in template:
        return LLAMA3_JSON
    return None


def template_tools(options: GenerationOptions) -> list[dict[str, Any]]:
    """The offered tools as chat templates expect them (OpenAI's form)."""
    return [
        {
            "type": "function",
            "function": {
                "name": tool.name,
                "description": tool.description,
                "parameters": _parameters(tool),
            },
        }
        for tool in offered(options)
    ]


def template_message(message: Message) -> dict[str, Any]:
    """One message as chat templates expect it: calls with their arguments as objects, a
    tool's result with the id of the call it answers."""
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": _loads(c.arguments or "{}")},
            }
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=True)


def markup_grammar(
    markup: ToolMarkup, options: GenerationOptions, to_gbnf: Callable[[str], str]
) -> str:
    """A GBNF grammar for a reply in ``markup`` that honours ``tools``, ``tool_choice`` and
    ``parallel_tool_calls``: one or more calls (``to_gbnf`` turns each call's JSON schema into
    rules), or, with ``auto``, an answer whose first character begins no call and no JSON."""
    item = {
        "anyOf": [
            {
                "type": "object",
                "properties": {
                    "name": {"const": tool.name},
                    markup.arguments_key: _parameters(tool),
                },
                "required": ["name", markup.arguments_key],
            }
            for tool in offered(options)
        ]
    }
    rules = re.sub(r"^root\s*::=", "call ::=", to_gbnf(json.dumps(item)), flags=re.MULTILINE)
    parts = [_literal(markup.opener)] if markup.opener else []
    parts.append("call")
    if markup.closer:
        parts.append(_literal(markup.closer))
    one = " ".join(parts)
    more = MAX_PARALLEL - 1 if options.parallel_tool_calls else 0
    calls = f'{one} ("\\n" {one}){{0,{more}}}' if more else one
    if options.tool_choice != "auto":
        return f"root ::= {calls}\n{rules}"
    # an answer's first character (after spaces) begins no call, no JSON object and no code
    # fence: a model that would write its call bare or fenced is held to the markup
    first = sorted({(markup.opener or "{")[0], "{", "`"})
    excluded = "".join("\\" + c if c in "[]\\^-" else c for c in first)
    answer = f"answer ::= [ \\t\\n]* [^{excluded} \\t\\n\\x00] [^\\x00]*"
    return f"root ::= {calls} | answer\n{answer}\n{rules}"


def parse_markup(markup: ToolMarkup, text: str) -> tuple[str, tuple[ToolCall, ...]]:
    """(content, calls) from a reply generated under ``markup_grammar``: calls when it begins
    like one, else the whole text as the answer."""
    decoder = json.JSONDecoder()
    begins = markup.opener.strip() or "{"
    if not text.lstrip().startswith(begins):
        return text, ()
    calls: list[ToolCall] = []
    position = 0
    while True:
        position = _skip_space(text, position)
        if position >= len(text):
            break
        if markup.opener.strip():
            if not text.startswith(markup.opener.strip(), position):
                break
            position = _skip_space(text, position + len(markup.opener.strip()))
        try:
            raw, position = decoder.raw_decode(text, position)
        except ValueError as exc:
            raise BackendError(
                "The model's reply was cut before its function call was complete. Ask for "
                "more max_tokens."
            ) from exc
        if isinstance(raw, dict) and "name" in raw:
            arguments = raw.get(markup.arguments_key, {})
            calls.append(
                ToolCall(
                    f"call_{uuid.uuid4().hex[:24]}",
                    str(raw["name"]),
                    json.dumps(arguments, ensure_ascii=False),
                )
            )
        position = _skip_space(text, position)
        if markup.closer.strip() and text.startswith(markup.closer.strip(), position):
            position += len(markup.closer.strip())
    return "", tuple(calls)


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position


def wants_tools(options: GenerationOptions) -> bool:
    """Whether the request offers tools the model may call (``tool_choice`` is not 'none')."""
    return bool(options.tools) and options.tool_choice != "none"


def offered(options: GenerationOptions) -> list[ToolSpec]:
    """The tools the model may call: all, or the one ``tool_choice`` names."""
    if options.tool_choice in {"auto", "required", "none"}:
        return list(options.tools)
    return [t for t in options.tools if t.name == options.tool_choice]


def _parameters(tool: ToolSpec) -> dict[str, Any]:
    schema = dict(tool.parameters or {"type": "object"})
    if schema.get("type") == "object" and "properties" not in schema:
        schema["properties"] = {}
    return schema


def call_schema(options: GenerationOptions) -> dict[str, Any]:
    """The JSON schema of a reply that honours ``tools``, ``tool_choice`` and
    ``parallel_tool_calls``."""
    calls = {
        "type": "object",
        "properties": {
            "tool_calls": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_PARALLEL if options.parallel_tool_calls else 1,
                "items": {
                    "anyOf": [
                        {
                            "type": "object",
                            "properties": {
                                "name": {"const": tool.name},
                                "arguments": _parameters(tool),
                            },
                            "required": ["name", "arguments"],
                        }
                        for tool in offered(options)
                    ]
                },
            }
        },
        "required": ["tool_calls"],
    }
    if options.tool_choice != "auto":
        return calls
    answer = {
        "type": "object",
        "properties": {"content": {"type": "string"}},
        "required": ["content"],
    }
    return {"anyOf": [calls, answer]}


def describe(options: GenerationOptions) -> str:
    """The instructions that tell a model without native tools how to call them."""
    lines = ["You can call these functions:"]
    for tool in offered(options):
        lines.append(
            json.dumps(
                {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": tool.parameters,
                },
                ensure_ascii=False,
            )
        )
    lines.append('To call functions, answer {"tool_calls": [{"name": ..., "arguments": {...}}]}.')
    if options.tool_choice == "auto":
        lines.append('To answer without a function, answer {"content": "your answer"}.')
    return "\n".join(lines)


def flatten(messages: Sequence[Message]) -> list[Message]:
    """The conversation for a chat template without tool roles: an assistant's calls become
    their JSON and a tool's result a user message."""
    out: list[Message] = []
    for message in messages:
        if message.role == "tool":
            out.append(
                Message("user", f"Result of call {message.tool_call_id}:\n{message.content}")
            )
        elif message.role == "assistant" and message.tool_calls:
            calls = [
                {"id": c.id, "name": c.name, "arguments": _loads(c.arguments)}
                for c in message.tool_calls
            ]
            out.append(Message("assistant", json.dumps({"tool_calls": calls})))
        else:
            out.append(Message(message.role, message.content))
    return out


def as_text(messages: Sequence[Message], options: GenerationOptions) -> list[Message]:
    """``flatten``, with the instructions for calling the offered tools in the system prompt."""
    out = flatten(messages)
    instructions = describe(options)
    if out and out[0].role == "system":
        out[0] = Message("system", f"{out[0].content}\n\n{instructions}")
    else:
        out.insert(0, Message("system", instructions))
    return out


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse(text: str) -> tuple[str, tuple[ToolCall, ...]]:
    """(content, calls) from a reply generated under ``call_schema``."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise BackendError(
            "The model's reply was cut before its function call was complete. Ask for more "
            "max_tokens."
        ) from exc
    if isinstance(raw, dict) and isinstance(raw.get("tool_calls"), list):
        calls = tuple(
            ToolCall(
                f"call_{uuid.uuid4().hex[:24]}",
                str(call["name"]),
                json.dumps(call.get("arguments", {}), ensure_ascii=False),
            )
            for call in raw["tool_calls"]
            if isinstance(call, dict) and "name" in call
        )
        return "", calls
    if isinstance(raw, dict):
        return str(raw.get("content", "")), ()
    return text, ()


def check_schema(tool: ToolSpec) -> None:
    """Raise ``ValueError`` naming the problem when ``tool.parameters`` is not a JSON schema."""
    try:
        Draft202012Validator.check_schema(tool.parameters)
    except jsonschema.SchemaError as exc:
        raise ValueError(
            f"the parameters of '{tool.name}' are not a JSON schema: {exc.message}"
        ) from None
    if tool.parameters.get("type", "object") != "object":
        raise ValueError(f"the parameters of '{tool.name}' must be an object schema")


def arguments_of(call: ToolCall, tools: Sequence[ToolSpec]) -> dict[str, Any]:
    """The call's arguments, parsed and checked against its tool's schema; ``ValueError`` with
    a message fit to show the model (or the client) otherwise."""
    tool = next((t for t in tools if t.name == call.name), None)
    if tool is None:
        names = ", ".join(t.name for t in tools) or "none"
        raise ValueError(f"there is no function '{call.name}' (available: {names})")
    try:
        arguments = json.loads(call.arguments or "{}")
    except ValueError:
        raise ValueError(f"the arguments of '{call.name}' are not valid JSON") from None
    if not isinstance(arguments, dict):
        raise ValueError(f"the arguments of '{call.name}' must be a JSON object")
    problem = jsonschema.exceptions.best_match(
        Draft202012Validator(tool.parameters).iter_errors(arguments)
    )
    if problem is not None:
        where = ".".join(str(p) for p in problem.absolute_path) or "arguments"
        raise ValueError(
            f"the arguments of '{call.name}' do not match its schema: {where}: {problem.message}"
        )
    return arguments


def _key(name: str, arguments: str) -> tuple[str, str]:
    try:
        canonical = json.dumps(json.loads(arguments or "{}"), sort_keys=True)
    except ValueError:
        canonical = arguments
    return name, canonical


def repeats(messages: Sequence[Message], calls: Sequence[ToolCall]) -> bool:
    """Every call in ``calls`` was already made (same function, same arguments) after the
    last user message."""
    made: set[tuple[str, str]] = set()
    for message in reversed(messages):
        if message.role == "user":
            break
        made |= {_key(c.name, c.arguments) for c in message.tool_calls}
    return bool(made) and all(_key(c.name, c.arguments) in made for c in calls)


def constrained(options: GenerationOptions) -> GenerationOptions:
    """The options of the constrained generation: the call schema, room for the call."""
    return replace(
        options,
        schema=call_schema(options),
        json_object=False,
        max_tokens=max(options.max_tokens, MIN_TOKENS),
        tools=(),
    )


async def complete(
    backend: TextBackend, messages: Sequence[Message], options: GenerationOptions
) -> Completion:
    """``backend.complete`` with function calling: native, in the template's own markup, or
    constrained to the generic JSON form."""
    markup = backend.tool_markup
    if not wants_tools(options):
        plain = messages if backend.supports_tools or markup else flatten(messages)
        return await backend.complete(plain, replace(options, tools=()))
    if backend.supports_tools:
        return await backend.complete(messages, options)
    if markup is not None:  # the backend renders the tools and holds the reply to the markup
        completion = await backend.complete(
            messages, replace(options, max_tokens=max(options.max_tokens, MIN_TOKENS))
        )
        content, calls = parse_markup(markup, completion.text)
    else:
        completion = await backend.complete(as_text(messages, options), constrained(options))
        content, calls = parse(completion.text)
    if calls and options.tool_choice == "auto" and repeats(messages, calls):
        # the same call again, answered already since the member's last message: its result
        # would be the same, so the only progress is an answer (a small model otherwise loops)
        return await complete(backend, messages, replace(options, tool_choice="none"))
    return Completion(
        content,
        "tool_calls" if calls else completion.finish_reason,
        completion.usage,
        tool_calls=calls,
        logprobs=completion.logprobs,
    )


async def stream(
    backend: TextBackend, messages: Sequence[Message], options: GenerationOptions
) -> AsyncIterator[Delta]:
    """``backend.stream`` with function calling. Constrained replies arrive whole: their JSON
    is parsed at the end, then sent as one content delta or one delta of calls."""
    if not wants_tools(options):
        plain = messages if backend.supports_tools or backend.tool_markup else flatten(messages)
        async for delta in backend.stream(plain, replace(options, tools=())):
            yield delta
        return
    if backend.supports_tools:
        async for delta in backend.stream(messages, options):
            yield delta
        return
    completion = await complete(backend, messages, options)
    if completion.text:
        yield Delta(text=completion.text)
    if completion.tool_calls:
        yield Delta(tool_calls=completion.tool_calls)
    yield Delta(finish_reason=completion.finish_reason, usage=completion.usage or Usage())
