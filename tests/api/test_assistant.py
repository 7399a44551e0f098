"""The assistant API with the fake backend: storage rules, access, streaming format."""

from fastapi.testclient import TestClient

from tests.conftest import add_user, auth
from tests.helpers import sse_data, streamed_text
from townsquare.backends.fake import FakeText
from townsquare.services import Services


def new_conversation(client: TestClient, key: str, **body: object) -> int:
    response = client.post("/api/conversations", json=body, headers=auth(key))
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def test_conversation_lifecycle(client: TestClient, member_key: str, fake_text: FakeText) -> None:
    cid = new_conversation(client, member_key, title="Trip", system_prompt="You love trains.")
    fake_text.enqueue("Take the night train.")
    response = client.post(
        f"/api/conversations/{cid}/messages",
        json={"content": "How to Lisbon?"},
        headers=auth(member_key),
    )
    assert response.status_code == 200, response.text
    exchange = response.json()
    assert exchange["reply"]["content"] == "Take the night train."
    assert exchange["reply"]["model"] == "fake"
    system_seen = fake_text.calls[0][0][0]
    assert system_seen.role == "system" and "You love trains." in system_seen.content

    listed = client.get("/api/conversations", headers=auth(member_key)).json()["data"]
    assert [c["id"] for c in listed] == [cid]
    detail = client.get(f"/api/conversations/{cid}", headers=auth(member_key)).json()
    assert [(m["role"], m["content"]) for m in detail["messages"]] == [
        ("user", "How to Lisbon?"),
        ("assistant", "Take the night train."),
    ]
    assert client.delete(f"/api/conversations/{cid}", headers=auth(member_key)).status_code == 204
    assert client.get(f"/api/conversations/{cid}", headers=auth(member_key)).status_code == 404


def test_history_is_sent_to_the_model(
    client: TestClient, member_key: str, fake_text: FakeText
) -> None:
    cid = new_conversation(client, member_key)
    for content in ("first", "second"):
        client.post(
            f"/api/conversations/{cid}/messages",
            json={"content": content},
            headers=auth(member_key),
        )
    roles = [(m.role, m.content) for m in fake_text.calls[-1][0][1:]]
    assert roles == [("user", "first"), ("assistant", "echo: first"), ("user", "second")]


def test_someone_elses_conversation_is_invisible(
    client: TestClient, services: Services, member_key: str
) -> None:
    cid = new_conversation(client, member_key)
    other = add_user(services, "otto")
    for method, path in [
        ("get", f"/api/conversations/{cid}"),
        ("delete", f"/api/conversations/{cid}"),
        ("post", f"/api/conversations/{cid}/messages"),
    ]:
        kwargs = {"json": {"content": "hi"}} if method == "post" else {}
        response = client.request(method, path, headers=auth(other), **kwargs)
        assert response.status_code == 404, (method, path)
    assert client.get("/api/conversations", headers=auth(other)).json()["data"] == []
    assert client.get(f"/api/conversations/{cid}", headers=auth(member_key)).status_code == 200


def test_stream_uses_openai_chunks_and_reports_stored_ids(
    client: TestClient, member_key: str, fake_text: FakeText
) -> None:
    cid = new_conversation(client, member_key)
    fake_text.enqueue("one two three")
    response = client.post(
        f"/api/conversations/{cid}/messages",
        json={"content": "count", "stream": True},
        headers=auth(member_key),
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    payloads = sse_data(response.text)
    assert payloads[-1] == "[DONE]"
    assert streamed_text(payloads) == "one two three"
    final = payloads[-2]
    assert final["choices"][0]["finish_reason"] == "stop"
    stored_id = final["townsquare"]["reply"]["id"]
    detail = client.get(f"/api/conversations/{cid}", headers=auth(member_key)).json()
    assert detail["messages"][-1] == {
        **detail["messages"][-1],
        "id": stored_id,
        "content": "one two three",
    }


def test_failure_mid_stream_sends_an_error_event_and_stores_nothing(
    client: TestClient, member_key: str, fake_text: FakeText
) -> None:
    cid = new_conversation(client, member_key)
    fake_text.enqueue("Sure. this reply will break half way")
    fake_text.fail_after = 3
    response = client.post(
        f"/api/conversations/{cid}/messages",
        json={"content": "go", "stream": True},
        headers=auth(member_key),
    )
    payloads = sse_data(response.text)
    # text goes out a sentence at a time (a sentence announcing cards is held back)
    assert streamed_text(payloads) == "Sure."
    assert payloads[-1]["error"]["code"] == "backend_error"
    assert "[DONE]" not in payloads
    assert (
        client.get(f"/api/conversations/{cid}", headers=auth(member_key)).json()["messages"] == []
    )
    # the next request is served normally
    fake_text.enqueue("fine now")
    again = client.post(
        f"/api/conversations/{cid}/messages", json={"content": "again"}, headers=auth(member_key)
    )
    assert again.status_code == 200 and again.json()["reply"]["content"] == "fine now"
    messages = client.get(f"/api/conversations/{cid}", headers=auth(member_key)).json()["messages"]
    assert [m["content"] for m in messages] == ["again", "fine now"]


def test_a_plain_answer_never_announces_cards_it_does_not_show(
    client: TestClient, member_key: str, fake_text: FakeText
) -> None:
    """No tool ran, so no card is shown: 'Here are 2 reels' is not sent, streamed or not."""
    cid = new_conversation(client, member_key)
    fake_text.enqueue("Here are 2 reels about fado. Fado is the song of Lisbon.")
    whole = client.post(
        f"/api/conversations/{cid}/messages", json={"content": "fado?"}, headers=auth(member_key)
    ).json()
    assert whole["reply"]["content"] == "Fado is the song of Lisbon."
    fake_text.enqueue("Fado is the song of Lisbon. I found 3 reels you will love!")
    streamed = client.post(
        f"/api/conversations/{cid}/messages",
        json={"content": "fado?", "stream": True},
        headers=auth(member_key),
    )
    assert streamed_text(sse_data(streamed.text)) == "Fado is the song of Lisbon."
    fake_text.enqueue("Check these listings below.")
    only = client.post(
        f"/api/conversations/{cid}/messages", json={"content": "bikes?"}, headers=auth(member_key)
    ).json()
    assert "listings" not in only["reply"]["content"] and only["reply"]["content"]
    stored = client.get(f"/api/conversations/{cid}", headers=auth(member_key)).json()["messages"]
    assert not any("reels" in m["content"] for m in stored if m["role"] == "assistant")


def test_the_stream_filter_says_what_the_whole_text_check_says() -> None:
    from townsquare.features.assistant.grounding import CardClaimFilter, without_unshown_cards

    for text in [
        "**Bold** tip.\n\n- one\n- two",
        "Sure! Here are 2 reels about fado. Fado is the music of Lisbon.\nEnjoy it!",
        "Here are 3 listings for you.",
        "Prices above 50 euros are common. Here is a tip: go early.",
        "A.  B?\n\nC",
    ]:
        for size in (1, 3, 50):  # however the model's tokens fall
            claims = CardClaimFilter()
            pieces = [text[i : i + size] for i in range(0, len(text), size)]
            streamed = "".join(claims.feed(p) for p in pieces) + claims.close()
            assert streamed == without_unshown_cards(text), (text, size)
    assert without_unshown_cards("Prices above 50 euros are common.") == (
        "Prices above 50 euros are common."
    )
