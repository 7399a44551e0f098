"""The official `openai` client, unmodified, against a live townsquare on loopback."""

import json

import openai
import pytest

from tests.conftest import LiveServer

pytestmark = pytest.mark.model


@pytest.fixture
def client(live_server: tuple[LiveServer, str]) -> openai.OpenAI:
    server, key = live_server
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def model_id(client: openai.OpenAI) -> str:
    """The chat model (the others listed are the embedding and the image model)."""
    models = client.models.list().data
    assert len(models) == 3
    return next(m.id for m in models if m.owned_by == "townsquare:llamacpp")


def test_non_streaming(client: openai.OpenAI) -> None:
    model = model_id(client)
    response = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}],
        max_tokens=20,
        temperature=0,
    )
    assert response.model == model
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].message.content
    assert response.choices[0].finish_reason in {"stop", "length"}
    assert 0 < response.usage.completion_tokens <= 20
    assert (
        response.usage.total_tokens
        == response.usage.prompt_tokens + response.usage.completion_tokens
    )


def test_streaming_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=model_id(client),
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finishes, usage = [], [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    assert len([p for p in pieces if p]) >= 2 and "".join(pieces).strip()
    assert len(finishes) == 1
    assert usage is not None and usage.completion_tokens == len([p for p in pieces if p])


def test_json_schema_response_format(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    response = client.chat.completions.create(
        model=model_id(client),
        messages=[{"role": "user", "content": "Invent a person with a name and an age."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema},
        },
        max_tokens=60,
    )
    person = json.loads(response.choices[0].message.content or "")
    assert isinstance(person["name"], str) and isinstance(person["age"], int)


def test_stop_sequence_is_honoured(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=model_id(client),
        messages=[
            {"role": "user", "content": "List the numbers 1, 2, 3, 4, 5 separated by commas."}
        ],
        stop=["3"],
        max_tokens=30,
        temperature=0,
    )
    assert "3" not in (response.choices[0].message.content or "")


def test_errors_raise_the_clients_own_exceptions(
    client: openai.OpenAI, live_server: tuple[LiveServer, str]
) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    assert "Available:" in str(missing.value)
    server, _ = live_server
    stranger = openai.OpenAI(base_url=f"{server.url}/v1", api_key="ts_nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.models.list()


def test_embeddings(client: openai.OpenAI) -> None:
    response = client.embeddings.create(
        model="all-MiniLM-L6-v2",
        input=["a sturdy kids' bike", "bicycle for a child", "oak dining table"],
    )
    vectors = [item.embedding for item in response.data]
    assert [item.index for item in response.data] == [0, 1, 2]
    assert all(len(v) == 384 for v in vectors)

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3
    single = client.embeddings.create(model="all-MiniLM-L6-v2", input="hello")
    assert len(single.data) == 1 and response.usage.prompt_tokens > 0
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-large", input="hi")
    with pytest.raises(openai.UnprocessableEntityError):
        client.embeddings.create(model="all-MiniLM-L6-v2", input=[])
