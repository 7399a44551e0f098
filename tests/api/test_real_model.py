"""The API with the real bundled model: streaming, the safety seam, the queue, context limits."""

import asyncio
import threading
from collections.abc import Sequence
from typing import ClassVar

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.conftest import LiveServer, add_user, auth, make_settings
from tests.helpers import sse_data, streamed_text
from townsquare.app import create_app
from townsquare.backends.base import Message
from townsquare.backends.llamacpp import LlamaCppText, bundled_model_path
from townsquare.safety.pipeline import Context, Decision, SafetyPolicy
from townsquare.services import Services
from townsquare.storage.tables import ChatMessage, SafetyEventRow

pytestmark = pytest.mark.model


def conversation(client: TestClient, key: str) -> int:
    return int(client.post("/api/conversations", json={}, headers=auth(key)).json()["id"])


def test_sse_streams_the_real_reply_and_stores_it(
    real_client: TestClient, real_services: Services
) -> None:
    key = add_user(real_services, "mia")
    cid = conversation(real_client, key)
    with real_client.stream(
        "POST",
        f"/api/conversations/{cid}/messages",
        json={"content": "Name a colour.", "stream": True, "max_tokens": 24},
        headers=auth(key),
    ) as response:
        assert response.status_code == 200
        raw = "".join(response.iter_text())
    assert "\r\n" not in raw  # OpenAI's wire format separates events with "\n\n"
    payloads = sse_data(raw)
    assert payloads[-1] == "[DONE]"
    content_chunks = [
        p for p in payloads[:-1] if p["choices"] and p["choices"][0]["delta"].get("content")
    ]
    assert len(content_chunks) >= 2  # streamed piece by piece, not in one block
    text = streamed_text(payloads)
    stored = payloads[-2]["townsquare"]["reply"]
    # a sentence's first words go out together (held until they announce no cards), then
    # one chunk per token
    assert stored["content"] == text and stored["completion_tokens"] >= len(content_chunks)
    messages = real_client.get(f"/api/conversations/{cid}", headers=auth(key)).json()["messages"]
    assert [m["content"] for m in messages] == ["Name a colour.", text]


class BlockAfter(SafetyPolicy):
    """Allows the input; refuses any output longer than ``limit`` characters (a stand-in for a
    moderation model that objects part-way through a reply)."""

    name: ClassVar[str] = "block-after"

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def check_input(self, messages: Sequence[Message], context: Context) -> Decision:
        return Decision.allow()

    def check_output(self, text: str, context: Context, *, final: bool) -> Decision:
        if len(text) > self.limit:
            return Decision(False, ("S10",), "The reply was blocked by the test policy.")
        return Decision.allow()


@pytest.mark.parametrize("limit", [0, 20])
def test_blocking_policy_stops_the_real_reply_from_being_streamed_or_stored(
    tmp_path, real_text: LlamaCppText, limit: int
) -> None:
    settings = make_settings(tmp_path)
    settings.safety.stream_check_chars = 1  # checked at every token
    services = Services.build(settings, text=real_text, policies=[BlockAfter(limit)])
    key = add_user(services, "mia")
    ask = {"content": "Tell me a long story about a lighthouse.", "max_tokens": 64}
    with TestClient(create_app(services=services)) as client:
        cid = conversation(client, key)
        streamed = client.post(
            f"/api/conversations/{cid}/messages", json={**ask, "stream": True}, headers=auth(key)
        )
        plain = client.post(f"/api/conversations/{cid}/messages", json=ask, headers=auth(key))
    if limit == 0:
        # blocked on the first token: a plain error, the stream never starts
        assert streamed.status_code == 422
        assert streamed.json()["error"]["hazards"] == ["S10"]
    else:
        payloads = sse_data(streamed.text)
        assert 0 < len(streamed_text(payloads)) <= limit  # nothing past the objection
        assert payloads[-1]["error"]["code"] == "content_blocked"
        assert payloads[-1]["error"]["hazards"] == ["S10"]
    assert plain.status_code == 422 and plain.json()["error"]["hazards"] == ["S10"]
    services.audit_writer.flush()  # refusals are written by a thread of their own
    with services.sessions() as db:
        assert db.scalars(select(ChatMessage)).all() == []
        events = db.scalars(select(SafetyEventRow)).all()
    assert [(e.stage, e.feature) for e in events] == [("output", "assistant")] * 2
    asyncio.run(services.aclose())


def test_prompt_longer_than_the_context_is_400_stating_the_limit(
    real_client: TestClient, real_services: Services
) -> None:
    key = add_user(real_services, "mia")
    response = real_client.post(
        "/v1/chat/completions",
        json={
            "model": real_services.text.model_id,
            "messages": [{"role": "user", "content": "word " * 3000}],
        },
        headers=auth(key),
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and "2048" in error["message"]
    cid = conversation(real_client, key)
    response = real_client.post(
        f"/api/conversations/{cid}/messages", json={"content": "word " * 3000}, headers=auth(key)
    )
    assert response.status_code == 400 and "only" in response.json()["error"]["message"]


def test_full_queue_answers_429_with_retry_after(tmp_path) -> None:
    # A model instance of its own, one slot and no waiting room: one request runs, the next is
    # refused.
    backend = LlamaCppText(
        bundled_model_path(), n_ctx=1024, parallel=1, max_queue=0, retry_after_s=3
    )
    services = Services.build(make_settings(tmp_path), text=backend)
    key = add_user(services, "mia")
    body = {
        "model": backend.model_id,
        "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
        "max_tokens": 400,
        "stream": True,
    }
    first_token = threading.Event()
    with (
        LiveServer(services) as server,
        httpx.Client(base_url=server.url, headers=auth(key), timeout=60) as http,
    ):

        def long_stream() -> None:
            with http.stream("POST", "/v1/chat/completions", json=body) as response:
                for _ in response.iter_lines():
                    first_token.set()

        runner = threading.Thread(target=long_stream)
        runner.start()
        assert first_token.wait(30)
        refused = http.post("/v1/chat/completions", json={**body, "stream": False})
        refused_stream = http.post("/v1/chat/completions", json=body)
        depth = [
            line
            for line in http.get("/metrics").text.splitlines()
            if line.startswith("townsquare_model_queue_depth ")
        ]
        runner.join()
        served = http.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 4})
        metrics = http.get("/metrics").text
    for response in (refused, refused_stream):
        assert response.status_code == 429
        assert response.headers["retry-after"] == "3"
        assert response.json()["error"]["type"] == "rate_limit_error"
        assert "text.max_queue=0" in response.json()["error"]["message"]
    assert depth == ["townsquare_model_queue_depth 1.0"]
    assert served.status_code == 200
    assert "townsquare_model_queue_wait_seconds_count 2.0" in metrics
    assert "townsquare_model_busy_rejections_total 2.0" in metrics
    asyncio.run(services.aclose())
    asyncio.run(backend.aclose())
