"""`/v1/chat/completions` speaks tools: the official `openai` client and LangChain against a live
townsquare on loopback, with the bundled model (grammar-constrained calls) and with a scripted
engine where a 135M model cannot be relied on to choose."""

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from tests.conftest import LiveServer, _close, add_user, make_settings
from townsquare.backends.fake import FakeEmbeddings, FakeText
from townsquare.services import Services

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


# --- the bundled model: calls are constrained, so they always parse and match ----------------


@pytest.fixture
def client(live_server: tuple[LiveServer, str]) -> openai.OpenAI:
    server, key = live_server
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def model_of(client: openai.OpenAI) -> str:
    return next(m.id for m in client.models.list().data if m.owned_by == "townsquare:llamacpp")


@pytest.mark.model
def test_required_tool_call_with_the_bundled_model(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=model_of(client),
        messages=[{"role": "user", "content": "What's the weather in Lisbon in celsius?"}],
        tools=[WEATHER, TIME],
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in {"get_weather", "get_time"}
    arguments = json.loads(call.function.arguments)
    assert isinstance(arguments["city"], str)
    if call.function.name == "get_weather":
        assert arguments["unit"] in {"celsius", "fahrenheit"}


@pytest.mark.model
def test_named_tool_choice_streams_the_call_and_takes_its_result(client: openai.OpenAI) -> None:
    model = model_of(client)
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What time is it in Porto?"}],
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        parallel_tool_calls=False,
        temperature=0,
        stream=True,
    )
    calls, finishes = [], []
    for chunk in stream:
        for choice in chunk.choices:
            calls.extend(choice.delta.tool_calls or [])
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    assert finishes == ["tool_calls"]
    [call] = calls
    assert call.function.name == "get_time"
    assert "city" in json.loads(call.function.arguments)
    # the result goes back as a tool message; the model answers in words with tools off
    answer = client.chat.completions.create(
        model=model,
        messages=[
            {"role": "user", "content": "What time is it in Porto?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": "get_time", "arguments": call.function.arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call.id, "content": '{"time": "14:05"}'},
        ],
        tools=[WEATHER, TIME],
        tool_choice="none",
        max_tokens=30,
        temperature=0,
    )
    assert answer.choices[0].message.content
    assert not answer.choices[0].message.tool_calls


@pytest.mark.model
def test_logprobs_from_the_bundled_model(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=model_of(client),
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens
    assert "".join(t.token for t in content) == response.choices[0].message.content
    for token in content:
        assert token.logprob <= 0
        assert len(token.top_logprobs) == 3
        ranked = [t.logprob for t in token.top_logprobs]
        assert ranked == sorted(ranked, reverse=True)
        # greedy decoding takes the most likely token
        assert token.top_logprobs[0].token == token.token


@pytest.mark.model
def test_langchain_bind_tools_and_structured_output_with_the_bundled_model(
    live_server: tuple[LiveServer, str], client: openai.OpenAI
) -> None:
    server, key = live_server

    @tool
    def search_listings(query: str, max_price: float) -> str:
        """Search the marketplace for listings under a price."""
        return "[]"

    llm = ChatOpenAI(
        model=model_of(client),
        base_url=f"{server.url}/v1",
        api_key=key,
        temperature=0,
        max_retries=0,
    )
    message = llm.bind_tools(
        [search_listings], tool_choice="search_listings", parallel_tool_calls=False
    ).invoke("Find me a kids bike under 150")
    assert isinstance(message, AIMessage)
    [call] = message.tool_calls
    assert call["name"] == "search_listings"
    assert isinstance(call["args"]["query"], str)
    assert isinstance(call["args"]["max_price"], int | float)

    class Person(BaseModel):
        """A person."""

        name: str = Field(min_length=1, description="Their first name.")
        age: int

    person = llm.with_structured_output(Person, method="function_calling").invoke(
        "Invent a person."
    )
    assert isinstance(person, Person) and person.name


# --- a scripted engine: the full loop, and the errors ----------------------------------------


@pytest.fixture
def scripted(tmp_path: Path) -> Iterator[tuple[LiveServer, str, FakeText]]:
    fake = FakeText(model_id="scripted")
    services = Services.build(make_settings(tmp_path), text=fake, embed=FakeEmbeddings())
    key = add_user(services, "agent-builder")
    with LiveServer(services) as server:
        yield server, key, fake
    _close(services)


def test_langchain_agent_loop_against_a_scripted_engine(
    scripted: tuple[LiveServer, str, FakeText],
) -> None:
    server, key, fake = scripted

    @tool
    def get_weather(city: str, unit: str) -> str:
        """The weather in a city."""
        return json.dumps({"city": city, "temperature": 21, "unit": unit})

    llm = ChatOpenAI(model="scripted", base_url=f"{server.url}/v1", api_key=key, max_retries=0)
    bound = llm.bind_tools([get_weather])
    # the engine picks a call (auto), then answers from the result
    fake.enqueue(
        json.dumps(
            {
                "tool_calls": [
                    {"name": "get_weather", "arguments": {"city": "Lisbon", "unit": "celsius"}}
                ]
            }
        ),
        json.dumps({"content": "It is 21 degrees in Lisbon."}),
    )
    history = [HumanMessage("Weather in Lisbon?")]
    first = bound.invoke(history)
    assert first.tool_calls == [
        {
            "name": "get_weather",
            "args": {"city": "Lisbon", "unit": "celsius"},
            "id": first.tool_calls[0]["id"],
            "type": "tool_call",
        }
    ]
    result = get_weather.invoke(first.tool_calls[0]["args"])
    history += [first, ToolMessage(result, tool_call_id=first.tool_calls[0]["id"])]
    second = bound.invoke(history)
    assert second.content == "It is 21 degrees in Lisbon." and not second.tool_calls
    # what the engine saw: the tools described, the call and its result in the conversation
    messages, options = fake.calls[-1]
    assert options.schema is not None and "anyOf" in options.schema
    assert "get_weather" in messages[0].content
    assert any('"tool_calls"' in m.content for m in messages if m.role == "assistant")
    assert any("temperature" in m.content for m in messages if m.role == "user")


def test_langchain_streams_tool_call_chunks(scripted: tuple[LiveServer, str, FakeText]) -> None:
    server, key, fake = scripted

    @tool
    def get_time(city: str) -> str:
        """The local time in a city."""
        return "14:05"

    fake.enqueue(
        json.dumps(
            {
                "tool_calls": [
                    {"name": "get_time", "arguments": {"city": "Porto"}},
                    {"name": "get_time", "arguments": {"city": "Faro"}},
                ]
            }
        )
    )
    llm = ChatOpenAI(model="scripted", base_url=f"{server.url}/v1", api_key=key, max_retries=0)
    gathered = None
    for chunk in llm.bind_tools([get_time]).stream("Time in Porto and Faro?"):
        gathered = chunk if gathered is None else gathered + chunk
    assert gathered is not None
    assert [c["args"]["city"] for c in gathered.tool_calls] == ["Porto", "Faro"]


def test_tool_errors_and_unknown_parameters_are_422s_that_name_the_problem(
    scripted: tuple[LiveServer, str, FakeText],
) -> None:
    server, key, _ = scripted
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
    base = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}]}

    def refused(**body: object) -> str:
        with pytest.raises(openai.UnprocessableEntityError) as caught:
            client.chat.completions.create(**{**base, **body})  # type: ignore[call-overload]
        return str(caught.value)

    assert "logit_bias" in refused(logit_bias={"42": 5})
    assert "best_of" in refused(extra_body={"best_of": 2})
    assert "get_time" in refused(
        tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_time"}}
    )
    assert "tools" in refused(tool_choice="required")
    bad_schema = {**WEATHER, "function": {**WEATHER["function"], "parameters": {"type": 7}}}
    assert "not a JSON schema" in refused(tools=[bad_schema])
    call = {"id": "c1", "type": "function", "function": {"name": "teleport", "arguments": "{}"}}
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    ]
    assert "teleport" in refused(messages=history, tools=[WEATHER])
    wrong_args = {**call, "function": {"name": "get_weather", "arguments": '{"city": 3}'}}
    history[1] = {"role": "assistant", "content": None, "tool_calls": [wrong_args]}
    assert "do not match" in refused(messages=history, tools=[WEATHER])
    orphan = [
        {"role": "user", "content": "hi"},
        {"role": "tool", "tool_call_id": "x", "content": "1"},
    ]
    assert "no earlier assistant message" in refused(messages=orphan)
    # the bookkeeping fields OpenAI's clients send are accepted and ignored
    ok = client.chat.completions.create(**base, user="u-1", metadata={"a": "b"}, store=False)
    assert ok.choices[0].message.content
    # a scripted engine reports no log probabilities: said, not silently dropped
    assert "logprobs" in refused(logprobs=True)
