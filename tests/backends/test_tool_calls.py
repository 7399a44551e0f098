"""Constrained function calling for local models: a repeated call becomes an answer."""

import json

import pytest

from townsquare.backends import tool_calls
from townsquare.backends.base import GenerationOptions, Message, ToolCall, ToolSpec
from townsquare.backends.fake import FakeText
from townsquare.errors import BackendError

WEATHER = ToolSpec(
    "get_weather",
    "The weather in a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
CALL = json.dumps({"tool_calls": [{"name": "get_weather", "arguments": {"city": "Lisbon"}}]})


async def test_a_call_already_answered_since_the_last_user_message_becomes_an_answer() -> None:
    fake = FakeText()
    options = GenerationOptions(max_tokens=64, tools=(WEATHER,), tool_choice="auto")
    ask = [Message("user", "Weather in Lisbon?")]
    fake.enqueue(CALL)
    first = await tool_calls.complete(fake, ask, options)
    [call] = first.tool_calls
    assert call.name == "get_weather"
    answered = [
        *ask,
        Message("assistant", "", (ToolCall(call.id, call.name, '{"city": "Lisbon"}'),)),
        Message("tool", "Sunny, 21 C.", tool_call_id=call.id),
    ]
    fake.enqueue(CALL)  # the small model asks again, as LangChain's loop showed
    fake.enqueue("It is sunny in Lisbon, 21 C.")
    second = await tool_calls.complete(fake, answered, options)
    assert second.tool_calls == () and second.text == "It is sunny in Lisbon, 21 C."
    # a new question: the same call is a fresh one, not a repeat
    again = [*answered, Message("assistant", "It is sunny."), Message("user", "And now?")]
    fake.enqueue(CALL)
    third = await tool_calls.complete(fake, again, options)
    assert [c.name for c in third.tool_calls] == ["get_weather"]
    # another city is progress, not a repeat
    fake.enqueue(CALL.replace("Lisbon", "Porto"))
    other = await tool_calls.complete(fake, answered, options)
    assert json.loads(other.tool_calls[0].arguments) == {"city": "Porto"}


# the tool parts of a Hermes-style chat template (Qwen 2.5's has the same markup)
HERMES_TEMPLATE = """{%- if tools %}<|im_start|>system
# Tools
<tools>{% for tool in tools %}
{{ tool | tojson }}{% endfor %}
</tools>
For each function call, return a json object within <tool_call></tool_call> XML tags.<|im_end|>
{% endif %}{%- for message in messages %}{%- if message.role == "assistant" and message.tool_calls %}
<|im_start|>assistant{% for call in message.tool_calls %}
<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>{% endfor %}<|im_end|>
{%- elif message.role == "tool" %}
<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{%- else %}
<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{%- endif %}{%- endfor %}
<|im_start|>assistant
"""
LLAMA3_SNIPPET = (
    "{% if tools %}Given the following functions, please respond with a JSON for a function "
    'call. Respond in the format {"name": function name, "parameters": dictionary of argument '
    "name and its value}.{% endif %}"
)


def test_the_call_markup_is_read_from_the_chat_template() -> None:
    assert tool_calls.markup_of(HERMES_TEMPLATE) == tool_calls.HERMES
    assert tool_calls.markup_of(LLAMA3_SNIPPET) == tool_calls.LLAMA3_JSON
    chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}{% endfor %}"
    assert tool_calls.markup_of(chatml) is None  # no tools in it: the generic JSON form
    assert tool_calls.markup_of(None) is None


def test_calls_in_the_template_s_markup_are_read_back() -> None:
    text = (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lisbon"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Porto"}}\n</tool_call>'
    )
    content, calls = tool_calls.parse_markup(tool_calls.HERMES, text)
    assert content == ""
    assert [json.loads(c.arguments)["city"] for c in calls] == ["Lisbon", "Porto"]
    assert len({c.id for c in calls}) == 2
    _, [llama] = tool_calls.parse_markup(
        tool_calls.LLAMA3_JSON, '{"name": "get_weather", "parameters": {"city": "Faro"}}'
    )
    assert json.loads(llama.arguments) == {"city": "Faro"}
    assert tool_calls.parse_markup(tool_calls.HERMES, "It is sunny.") == ("It is sunny.", ())
    with pytest.raises(BackendError, match="max_tokens"):
        tool_calls.parse_markup(tool_calls.HERMES, '<tool_call>\n{"name": "get_wea')


def test_the_markup_grammar_allows_calls_or_an_answer_that_begins_like_none() -> None:
    options = GenerationOptions(tools=(WEATHER,), tool_choice="auto")
    grammar = tool_calls.markup_grammar(tool_calls.HERMES, options, lambda schema: "root ::= x")
    root = grammar.splitlines()[0]
    assert root.startswith('root ::= "<tool_call>\\n" call "\\n</tool_call>"') and "answer" in root
    assert "call ::= x" in grammar  # the call's own rules, renamed
    assert "[^<`{ \\t\\n\\x00]" in grammar  # an answer begins like no call, JSON or fence
    required = tool_calls.markup_grammar(
        tool_calls.HERMES,
        GenerationOptions(tools=(WEATHER,), tool_choice="required", parallel_tool_calls=False),
        lambda schema: "root ::= x",
    )
    assert required.splitlines()[0] == 'root ::= "<tool_call>\\n" call "\\n</tool_call>"'


async def test_a_backend_with_markup_gets_the_conversation_and_tools_as_they_are() -> None:
    fake = FakeText()
    fake.tool_markup = tool_calls.HERMES
    options = GenerationOptions(max_tokens=64, tools=(WEATHER,), tool_choice="auto")
    ask = [Message("user", "Weather in Lisbon?")]
    fake.enqueue(
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lisbon"}}\n</tool_call>'
    )
    first = await tool_calls.complete(fake, ask, options)
    [call] = first.tool_calls
    assert first.finish_reason == "tool_calls" and json.loads(call.arguments) == {"city": "Lisbon"}
    sent, sent_options = fake.calls[-1]
    # no generic instructions, no schema: the template shows the tools, the backend constrains
    assert sent == ask and sent_options.tools == (WEATHER,) and sent_options.schema is None
    answered = [
        *ask,
        Message("assistant", "", (call,)),
        Message("tool", "Sunny, 21 C.", tool_call_id=call.id),
    ]
    fake.enqueue("It is sunny in Lisbon.")
    second = await tool_calls.complete(fake, answered, options)
    assert second.text == "It is sunny in Lisbon." and second.tool_calls == ()
    assert fake.calls[-1][0] == answered  # the call and its result, unflattened
