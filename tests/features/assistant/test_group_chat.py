"""The assistant as a member of group chats, against a live townsquare on loopback: @-mentions
answered in the group, the group's event stream, signed webhooks with retries and a dead-letter
list, and per-group personas."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.conftest import LiveServer, _close, add_user, make_settings
from tests.town import build_town
from townsquare.backends.fake import FakeEmbeddings, FakeText
from townsquare.features.assistant.groups import mentions, without_mention
from townsquare.features.feedback import service as feedback_service
from townsquare.features.webhooks.service import SIGNATURE_HEADER, verify
from townsquare.services import Services
from townsquare.storage.social_tables import WebhookDelivery


class Receiver:
    """A host app's webhook endpoint on loopback: records what it gets; can be made to fail."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        self.delay = 0.0  # seconds before answering
        self.arrived = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                receiver.arrived.set()
                time.sleep(receiver.delay)
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_for(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.fixture
def town(tmp_path: Path) -> Iterator[tuple[LiveServer, dict[str, str], FakeText, Receiver]]:
    fake = FakeText()
    settings = make_settings(
        tmp_path,
        webhooks={
            "allow_private_targets": True,
            "backoff_s": 0.05,
            "poll_s": 0.05,
            "max_attempts": 3,
        },
        assistant={"tool_mode": "off", "events_poll_s": 0.05},
    )
    services = Services.build(settings, text=fake, embed=FakeEmbeddings())
    keys = build_town(services)
    receiver = Receiver()
    with LiveServer(services) as server:
        yield server, keys, fake, receiver
    receiver.close()
    _close(services)


OPEN: list[httpx.Client] = []


def api(server: LiveServer, key: str) -> httpx.Client:
    client = httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=20
    )
    OPEN.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()


def messages(client: httpx.Client, group: str = "g1") -> list[dict[str, Any]]:
    response = client.get(f"/api/groups/{group}/messages", params={"limit": 50})
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def replies_to(client: httpx.Client, message_id: str) -> list[dict[str, Any]]:
    return [m for m in messages(client) if m["reply_to"] == message_id]


def test_mention_is_answered_in_the_group_with_stream_and_signed_webhook(
    town: tuple[LiveServer, dict[str, str], FakeText, Receiver],
) -> None:
    server, keys, fake, receiver = town
    admin, member = api(server, keys["admin"]), api(server, keys["member"])
    created = admin.post("/api/webhooks", json={"url": receiver.url})
    assert created.status_code == 201, created.text
    secret = created.json()["secret"]
    assert "secret" not in json.dumps(admin.get("/api/webhooks").json()["data"][0]) or (
        admin.get("/api/webhooks").json()["data"][0]["secret"] is None
    )

    events: list[dict[str, Any]] = []

    def listen() -> None:
        with (
            httpx.Client(base_url=server.url, timeout=20) as client,
            client.stream(
                "GET",
                "/api/groups/g1/events",
                params={"max_s": 8},
                headers={"Authorization": f"Bearer {keys['member']}"},
            ) as stream,
        ):
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                    if len(events) == 2:
                        return

    listener = threading.Thread(target=listen)
    listener.start()
    time.sleep(0.3)
    fake.enqueue("The mill shop sells rye flour.")
    posted = member.post(
        "/api/groups/g1/messages",
        json={"text": "@Assistant who sells rye flour?", "reply_to": "m1"},
    )
    assert posted.status_code == 201, posted.text
    asked = posted.json()["id"]
    [reply] = wait_for(lambda: replies_to(member, asked))
    assert reply["text"] == "The mill shop sells rye flour."
    assert reply["author"] == "townsquare-assistant"
    # the model read the group's conversation, and the request without the mention
    prompt, _ = fake.calls[-1]
    assert prompt[0].role == "system" and "Bakers" in prompt[0].content
    assert any("Who has rye flour?" in m.content for m in prompt)
    assert prompt[-1].content == "who sells rye flour?"

    listener.join(timeout=10)
    assert [e["id"] for e in events] == [asked, reply["id"]]
    assert events[1]["reply_to"] == asked
    assert events[0]["generation_id"] is None

    # the reply is a generation the asker may rate (and only they), ready for training export
    generation = reply["generation_id"]
    assert isinstance(generation, int) and events[1]["generation_id"] == generation
    moderator = api(server, keys["moderator"])
    rating = {"rating": "up"}
    assert moderator.post(f"/api/generations/{generation}/feedback", json=rating).status_code == 404
    rated = member.post(f"/api/generations/{generation}/feedback", json=rating)
    assert rated.status_code in (200, 201), rated.text
    assert rated.json()["feature"] == "group_assistant"
    with server.services.sessions() as db:
        [row] = list(feedback_service.export(db, "sft", feature="group_assistant"))
    # the asker's question and the reply; the other members' messages are not exported
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    assert row["messages"][-1] == {"role": "assistant", "content": reply["text"]}
    assert row["messages"][-2]["content"] == "who sells rye flour?"

    # both messages townsquare wrote reach the host app, signed
    wait_for(lambda: len(receiver.received) >= 2)
    bodies = []
    for headers, body in receiver.received:
        assert verify(secret, headers[SIGNATURE_HEADER], body)
        assert not verify("another-secret-of-16+", headers[SIGNATURE_HEADER], body)
        bodies.append(json.loads(body))
    assert {b["message"]["id"] for b in bodies} == {asked, reply["id"]}
    assert all(b["event"] == "group.message.created" for b in bodies)

    def delivered() -> list[dict[str, Any]]:
        found = admin.get("/api/webhooks/deliveries", params={"status": "delivered"}).json()
        return list(found["data"]) if len(found["data"]) == 2 else []

    receipts = wait_for(delivered)
    # a delivered event keeps which message it was, not a copy of its text
    assert all("text" not in d["payload"]["message"] for d in receipts)
    assert {d["payload"]["message"]["id"] for d in receipts} == {asked, reply["id"]}


def test_ingested_mentions_are_answered_once_and_outsiders_see_nothing(
    town: tuple[LiveServer, dict[str, str], FakeText, Receiver],
) -> None:
    server, keys, _fake, _ = town
    admin, member = api(server, keys["admin"]), api(server, keys["member"])
    row = {"external_id": "m9", "group": "g1", "author": "u-member", "text": "hey @assistant hi"}
    assert admin.post("/api/messages:batch", json=[row]).status_code == 200
    wait_for(lambda: replies_to(member, "m9"))
    # the same batch again, and the same row by PUT: still one reply
    admin.post("/api/messages:batch", json=[row])
    admin.put("/api/messages/m9", json=row)
    time.sleep(0.5)
    assert len(replies_to(member, "m9")) == 1
    # not a mention: an e-mail address, another name
    for n, text in enumerate(["mail me at x@assistant.org", "@assistants unite", "@bob hi"]):
        admin.put(f"/api/messages/n{n}", json={**row, "external_id": f"n{n}", "text": text})
    time.sleep(0.5)
    assert all(not replies_to(member, f"n{n}") for n in range(3))
    outsider = api(server, keys["outsider"])
    assert outsider.get("/api/groups/g1/events", params={"max_s": 0}).status_code == 404
    assert (
        outsider.post("/api/groups/g1/messages", json={"text": "@assistant hi"}).status_code == 404
    )
    # an admin may post in a group they are not in, but a mention would never be answered:
    # refused with the reason, and nothing stored
    before = len(member.get("/api/groups/g1/messages", params={"limit": 200}).json()["data"])
    refused = admin.post("/api/groups/g1/messages", json={"text": "@assistant what's new?"})
    assert refused.status_code == 403, refused.text
    assert "members of" in refused.json()["error"]["message"]
    after = member.get("/api/groups/g1/messages", params={"limit": 200}).json()["data"]
    assert len(after) == before
    assert admin.post("/api/groups/g1/messages", json={"text": "Admins here."}).status_code == 201


def test_personas_rename_restrict_and_switch_off_the_assistant(
    town: tuple[LiveServer, dict[str, str], FakeText, Receiver],
) -> None:
    server, keys, fake, _ = town
    member, moderator = api(server, keys["member"]), api(server, keys["moderator"])
    assert member.get("/api/groups/g1/assistant").json()["name"] == "assistant"
    change = {"name": "baker", "system_prompt": "Answer like a baker.", "tools": []}
    assert member.put("/api/groups/g1/assistant", json=change).status_code == 403
    assert (
        moderator.put("/api/groups/g1/assistant", json={"tools": ["teleport"]}).status_code == 422
    )
    persona = moderator.put("/api/groups/g1/assistant", json=change).json()
    assert persona["name"] == "baker" and persona["tools"] == []

    fake.enqueue("Knead it longer.")
    ignored = member.post("/api/groups/g1/messages", json={"text": "@assistant hello?"}).json()
    asked = member.post("/api/groups/g1/messages", json={"text": "@baker my dough?"}).json()
    [reply] = wait_for(lambda: replies_to(member, asked["id"]))
    assert reply["text"] == "Knead it longer."
    assert "Answer like a baker." in fake.calls[-1][0][0].content
    assert replies_to(member, ignored["id"]) == []

    moderator.put("/api/groups/g1/assistant", json={"enabled": False})
    off = member.post("/api/groups/g1/messages", json={"text": "@baker still there?"}).json()
    time.sleep(0.5)
    assert replies_to(member, off["id"]) == []


def test_webhook_urls_are_checked_and_failures_end_in_the_dead_letter_list(
    town: tuple[LiveServer, dict[str, str], FakeText, Receiver],
) -> None:
    server, keys, _, receiver = town
    admin, member = api(server, keys["admin"]), api(server, keys["member"])
    for url in ("ftp://example.org/x", "not a url", "http:///nohost"):
        response = admin.post("/api/webhooks", json={"url": url})
        assert response.status_code == 422 and "http" in response.json()["error"]["message"]
    assert (
        admin.post("/api/webhooks", json={"url": receiver.url, "events": ["x"]}).status_code == 422
    )
    assert member.post("/api/webhooks", json={"url": receiver.url}).status_code == 403

    receiver.status = 500
    admin.post("/api/webhooks", json={"url": receiver.url})
    member.post("/api/groups/g1/messages", json={"text": "no mention here"})
    dead = wait_for(
        lambda: admin.get("/api/webhooks/deliveries", params={"status": "dead"}).json()["data"]
    )
    assert dead[0]["attempts"] == 3 and dead[0]["last_status"] == 500
    assert len(receiver.received) == 3  # tried max_attempts times, then stopped
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'townsquare_webhook_deliveries_total{outcome="retry"} 2.0' in metrics
    assert 'townsquare_webhook_deliveries_total{outcome="dead"} 1.0' in metrics
    receiver.status = 200
    retried = admin.post(f"/api/webhooks/deliveries/{dead[0]['id']}/retry")
    assert retried.status_code == 200 and retried.json()["status"] == "pending"
    wait_for(
        lambda: admin.get("/api/webhooks/deliveries", params={"status": "delivered"}).json()["data"]
    )


def test_a_delivery_in_flight_when_the_server_stops_is_finished_not_cut_off(
    tmp_path: Path,
) -> None:
    settings = make_settings(
        tmp_path,
        webhooks={"allow_private_targets": True, "poll_s": 0.05, "stop_grace_s": 10},
        assistant={"tool_mode": "off"},
    )
    services = Services.build(settings, text=FakeText(), embed=FakeEmbeddings())
    keys = build_town(services)
    receiver = Receiver()
    receiver.delay = 1.0
    with LiveServer(services) as server:
        assert api(server, keys["admin"]).post("/api/webhooks", json={"url": receiver.url})
        api(server, keys["member"]).post("/api/groups/g1/messages", json={"text": "hello"})
        assert receiver.arrived.wait(15)  # the host app is still answering when we stop
    with services.sessions() as db:
        rows = db.scalars(select(WebhookDelivery)).all()
        assert [(r.status, r.attempts, r.last_status) for r in rows] == [("delivered", 1, 200)]
    receiver.close()
    _close(services)


def test_private_webhook_targets_are_refused_unless_allowed(tmp_path: Path) -> None:
    services = Services.build(make_settings(tmp_path), text=FakeText(), embed=FakeEmbeddings())
    key = add_user(services, "root", role="admin")
    with LiveServer(services) as server:
        admin = api(server, key)
        for url in (
            "http://127.0.0.1:8080/x",
            "http://10.1.2.3/x",
            "http://[::1]/x",
            "http://169.254.169.254/latest",
        ):
            response = admin.post("/api/webhooks", json={"url": url})
            assert response.status_code == 422, url
            assert "ALLOW_PRIVATE_TARGETS" in response.json()["error"]["message"]
        assert (
            admin.post("/api/webhooks", json={"url": "http://93.184.216.34/hook"}).status_code
            == 201
        )
    _close(services)


def test_mentions_are_whole_names() -> None:
    assert mentions("@assistant hi", "assistant")
    assert mentions("hi @Assistant, what's up", "assistant")
    assert not mentions("x@assistant.org", "assistant")
    assert not mentions("@assistants", "assistant")
    assert not mentions("@assistant-bot", "assistant")
    assert without_mention("@assistant, what did I miss?", "assistant") == "what did I miss?"


@pytest.mark.model
def test_the_bundled_model_answers_a_mention_in_its_group(
    live_server: tuple[LiveServer, str],
) -> None:
    server, admin_key = live_server
    admin = api(server, admin_key)
    rows = {
        "users": [{"external_id": "u-gc-ana", "name": "gc-ana"}],
        "groups": [
            {"external_id": "g-gc", "name": "Garden Club", "members": [{"user": "u-gc-ana"}]}
        ],
        "messages": [
            {
                "external_id": "gc-1",
                "group": "g-gc",
                "author": "u-gc-ana",
                "text": "The tomatoes need staking this week.",
            },
            {
                "external_id": "gc-2",
                "group": "g-gc",
                "author": "u-gc-ana",
                "text": "@assistant what should we do with the tomatoes?",
            },
        ],
    }
    for kind, batch in rows.items():
        assert admin.post(f"/api/{kind}:batch", json=batch).status_code == 200, kind
    [reply] = wait_for(
        lambda: [
            m
            for m in admin.get("/api/groups/g-gc/messages").json()["data"]
            if m["reply_to"] == "gc-2"
        ],
        timeout=60,
    )
    assert reply["author"] == "townsquare-assistant" and reply["text"].strip()
