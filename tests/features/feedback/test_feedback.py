"""Feedback on generations and its export for training (issue 12, item 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tests.conftest import auth
from tests.town import build_town
from townsquare.backends.fake import FakeText
from townsquare.cli import app as cli
from townsquare.services import Services
from townsquare.storage.tables import User

DRAFT = json.dumps(
    {
        "title": "Btwin kids' bike",
        "description": "A lovely bike for kids.",
        "highlights": ["Sturdy frame", "Ready to ride", "Great for parks"],
        "tags": ["bike", "kids", "btwin"],
    }
)


@pytest.fixture
def keys(services: Services) -> dict[str, str]:
    return build_town(services)


def chat_turn(client: TestClient, key: str, content: str = "Plan a picnic") -> int:
    cid = client.post("/api/conversations", json={}, headers=auth(key)).json()["id"]
    exchange = client.post(
        f"/api/conversations/{cid}/messages", json={"content": content}, headers=auth(key)
    ).json()
    return int(exchange["generation_id"])


def test_a_member_rates_a_chat_turn_and_the_latest_verdict_wins(
    client: TestClient, keys: dict[str, str]
) -> None:
    member = auth(keys["member"])
    generation = chat_turn(client, keys["member"])
    first = client.post(
        f"/api/generations/{generation}/feedback",
        json={"rating": "down", "reason": "unhelpful"},
        headers=member,
    )
    assert first.status_code == 200, first.text
    second = client.post(
        f"/api/generations/{generation}/feedback",
        json={"rating": "up", "correction": "Bring bread, cheese and a blanket."},
        headers=member,
    ).json()
    assert (
        second["rating"] == "up" and second["reason"] is None and second["feature"] == "assistant"
    )
    listed = client.get("/api/feedback", headers=auth(keys["admin"])).json()["data"]
    assert [(f["generation_id"], f["rating"]) for f in listed] == [(generation, "up")]


def test_bad_feedback_is_refused(
    client: TestClient, keys: dict[str, str], services: Services
) -> None:
    generation = chat_turn(client, keys["member"])
    # someone else's generation reads as missing, even for an admin
    for persona in ("outsider", "admin"):
        other = client.post(
            f"/api/generations/{generation}/feedback",
            json={"rating": "up"},
            headers=auth(keys[persona]),
        )
        assert other.status_code == 404
    member = auth(keys["member"])
    assert (
        client.post(
            f"/api/generations/{generation}/feedback", json={"rating": "meh"}, headers=member
        ).status_code
        == 422
    )
    assert (
        client.post(
            f"/api/generations/{generation}/feedback",
            json={"rating": "up", "reason": "because"},
            headers=member,
        ).status_code
        == 422
    )
    limit = services.settings.limits.max_message_chars
    too_long = client.post(
        f"/api/generations/{generation}/feedback",
        json={"rating": "down", "correction": "x" * (limit + 1)},
        headers=member,
    )
    assert too_long.status_code == 422 and too_long.json()["error"]["field"] == "correction"


def test_accepting_an_edited_draft_is_feedback(
    client: TestClient, keys: dict[str, str], fake_text: FakeText
) -> None:
    member = auth(keys["member"])
    fake_text.enqueue(DRAFT)
    draft = client.post("/api/listings/l-active/description", json={}, headers=member).json()
    client.post(
        "/api/listings/l-active/description/accept",
        json={"generation_id": draft["generation_id"], "description": "My own words."},
        headers=member,
    )
    listed = client.get("/api/feedback", headers=auth(keys["admin"])).json()["data"]
    assert listed[0]["source"] == "accept" and listed[0]["correction"] == "My own words."


def test_export_for_training_respects_opt_out_and_refuses_to_overwrite(
    client: TestClient,
    keys: dict[str, str],
    services: Services,
    fake_text: FakeText,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    member, creator = auth(keys["member"]), auth(keys["creator"])
    liked = chat_turn(client, keys["member"], "Name a board game")
    client.post(f"/api/generations/{liked}/feedback", json={"rating": "up"}, headers=member)
    fixed = chat_turn(client, keys["member"], "Capital of Portugal?")
    client.post(
        f"/api/generations/{fixed}/feedback",
        json={"rating": "down", "reason": "inaccurate", "correction": "Lisbon."},
        headers=member,
    )
    disliked = chat_turn(client, keys["member"], "Tell a joke")
    client.post(f"/api/generations/{disliked}/feedback", json={"rating": "down"}, headers=member)
    private = chat_turn(client, keys["creator"], "My secret plans")
    client.post(f"/api/generations/{private}/feedback", json={"rating": "up"}, headers=creator)
    with services.sessions.begin() as db:
        db.query(User).filter_by(name="creator").one().training_opt_out = True

    monkeypatch.setenv("TOWNSQUARE_DATA_DIR", str(services.settings.data_dir))
    monkeypatch.setenv("TOWNSQUARE_TEXT__BACKEND", "fake")
    monkeypatch.setenv("TOWNSQUARE_EMBED__BACKEND", "fake")
    runner = CliRunner()
    sft, dpo = tmp_path / "sft.jsonl", tmp_path / "dpo.jsonl"
    assert runner.invoke(cli, ["feedback", "export", str(sft)]).exit_code == 0
    rows = [json.loads(line) for line in sft.read_text().splitlines()]
    # the liked answer and the corrected one; not the disliked one, not the opted-out member's
    assert [r["metadata"]["generation_id"] for r in rows] == [liked, fixed]
    assert rows[0]["messages"][0]["role"] == "system"
    assert rows[0]["messages"][-2] == {"role": "user", "content": "Name a board game"}
    assert rows[1]["messages"][-1] == {"role": "assistant", "content": "Lisbon."}
    assert runner.invoke(cli, ["feedback", "export", str(dpo), "--format", "dpo"]).exit_code == 0
    pairs = [json.loads(line) for line in dpo.read_text().splitlines()]
    assert len(pairs) == 1 and pairs[0]["chosen"] == "Lisbon."
    assert pairs[0]["rejected"] == "echo: Capital of Portugal?"
    again = runner.invoke(cli, ["feedback", "export", str(sft)])
    assert again.exit_code == 2 and "--force" in again.output
    forced = runner.invoke(cli, ["feedback", "export", str(sft), "--force", "--feature", "shops"])
    assert forced.exit_code == 0 and sft.read_text() == ""
