"""Constrained function calling for local models: a repeated call becomes an answer."""

import json

from townsquare.backends import tool_calls
from townsquare.backends.base import GenerationOptions, Message, ToolCall, ToolSpec
from townsquare.backends.fake import FakeText

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
