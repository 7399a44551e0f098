"""Feedback on generations and its export for training (issue 12, item 4)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tests.conftest import auth, make_settings
from tests.town import build_town
from townsquare.app import create_app
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
    assert (
        too_long.status_code == 413 and "max_message_chars" in too_long.json()["error"]["message"]
    )


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
    # TRL's conversational preference format: prompt, chosen and rejected all message lists
    assert len(pairs) == 1 and pairs[0]["chosen"] == [{"role": "assistant", "content": "Lisbon."}]
    assert pairs[0]["rejected"] == [{"role": "assistant", "content": "echo: Capital of Portugal?"}]
    assert pairs[0]["prompt"][-1] == {"role": "user", "content": "Capital of Portugal?"}
    kto = tmp_path / "kto.jsonl"
    assert runner.invoke(cli, ["feedback", "export", str(kto), "--format", "kto"]).exit_code == 0
    thumbs = [json.loads(line) for line in kto.read_text().splitlines()]
    # thumbs without a correction, unpaired: up is true, down is false
    assert [(r["metadata"]["generation_id"], r["label"]) for r in thumbs] == [
        (liked, True),
        (disliked, False),
    ]
    assert thumbs[1]["completion"] == [{"role": "assistant", "content": "echo: Tell a joke"}]
    again = runner.invoke(cli, ["feedback", "export", str(sft)])
    assert again.exit_code == 2 and "--force" in again.output
    forced = runner.invoke(cli, ["feedback", "export", str(sft), "--force", "--feature", "shops"])
    assert forced.exit_code == 0 and sft.read_text() == ""


def exported(services: Services, kind: str) -> list[dict[str, Any]]:
    from townsquare.features.feedback.service import export

    with services.sessions() as db:
        return list(export(db, kind))  # type: ignore[arg-type]


@pytest.fixture
def moderated(tmp_path: Path, fake_text: FakeText) -> Iterator[Services]:
    services = Services.build(
        make_settings(tmp_path, safety={"moderation": "embedded"}), text=fake_text
    )
    yield services
    asyncio.run(services.aclose())


def test_a_poisoned_correction_is_kept_blocked_and_never_exported(
    moderated: Services, fake_text: FakeText
) -> None:
    keys = build_town(moderated)
    member = auth(keys["member"])
    with TestClient(create_app(services=moderated)) as client:
        poisoned = chat_turn(client, keys["member"], "Say something nice about the group")
        verdict = client.post(
            f"/api/generations/{poisoned}/feedback",
            json={
                "rating": "down",
                "correction": "You are all worthless idiots, go kill yourselves.",
            },
            headers=member,
        ).json()
        fine = chat_turn(client, keys["member"], "Name a pastry")
        client.post(
            f"/api/generations/{fine}/feedback",
            json={"rating": "down", "correction": "Pastel de nata."},
            headers=member,
        )
        listed = client.get("/api/feedback", headers=auth(keys["admin"])).json()["data"]
    assert verdict["correction_status"] == "blocked" and verdict["correction_hazards"]
    # the admins see it, with its codes; no export carries it, in any format
    assert {f["generation_id"]: f["correction_status"] for f in listed} == {
        poisoned: "blocked",
        fine: "ok",
    }
    for kind in ("sft", "dpo", "kto"):
        rows = exported(moderated, kind)
        assert poisoned not in {r["metadata"]["generation_id"] for r in rows}, kind
        assert "idiots" not in json.dumps(rows)
    assert [r["metadata"]["generation_id"] for r in exported(moderated, "dpo")] == [fine]


def test_exports_load_with_trls_own_dataset_utilities(
    client: TestClient, keys: dict[str, str]
) -> None:
    """Each export is read by TRL (1.16) as the conversational format its trainers take:
    is_conversational, and apply_chat_template with a ChatML template (SmolLM2's format)."""
    datasets = pytest.importorskip("datasets")
    data_utils = pytest.importorskip("trl.data_utils")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    member = auth(keys["member"])
    up = chat_turn(client, keys["member"], "Name a board game")
    client.post(f"/api/generations/{up}/feedback", json={"rating": "up"}, headers=member)
    fixed = chat_turn(client, keys["member"], "Capital of Portugal?")
    client.post(
        f"/api/generations/{fixed}/feedback",
        json={"rating": "down", "correction": "Lisbon."},
        headers=member,
    )
    down = chat_turn(client, keys["member"], "Tell a joke")
    client.post(f"/api/generations/{down}/feedback", json={"rating": "down"}, headers=member)

    raw = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    expected = {"sft": {"text"}, "dpo": {"prompt", "chosen", "rejected"}}
    expected["kto"] = {"prompt", "completion", "label"}
    for kind, fields in expected.items():
        rows = [
            {k: v for k, v in r.items() if k != "metadata"}
            for r in exported(client.app.state.services, kind)  # type: ignore[attr-defined]
        ]
        assert rows, kind
        dataset = datasets.Dataset.from_list(rows)
        assert all(data_utils.is_conversational(row) for row in dataset), kind
        templated = [data_utils.apply_chat_template(row, tokenizer) for row in dataset]
        assert fields <= set(templated[0]), (kind, templated[0])
        if kind == "dpo":
            assert templated[0]["chosen"].startswith("Lisbon.")
            assert "<|im_start|>user\nCapital of Portugal?" in templated[0]["prompt"]
        if kind == "kto":
            assert [t["label"] for t in templated] == [True, False]


def test_tool_answers_are_exported_with_their_results_or_left_out(
    client: TestClient, keys: dict[str, str], services: Services
) -> None:
    from townsquare.features.feedback.service import TEMPLATES
    from townsquare.storage.social_tables import Generation

    member = auth(keys["member"])
    templated = chat_turn(client, keys["member"], "Find me a bike")
    written = chat_turn(client, keys["member"], "Find me a sofa")
    with services.sessions.begin() as db:
        # what the tools' templates wrote is no model output; a model's tool answer keeps
        # the results it was built from
        db.get(Generation, templated).model = TEMPLATES  # type: ignore[union-attr]
        row = db.get(Generation, written)
        assert row is not None
        row.inputs = {**row.inputs, "tool_results": ['{"summary": "1 sofa", "results": []}']}
    for generation in (templated, written):
        client.post(
            f"/api/generations/{generation}/feedback", json={"rating": "up"}, headers=member
        )
    rows = exported(services, "sft")
    assert [r["metadata"]["generation_id"] for r in rows] == [written]
    tools = [m for m in rows[0]["messages"] if "Results of the tools" in m["content"]]
    assert tools and '"1 sofa"' in tools[0]["content"]


def test_exports_leave_out_words_of_members_who_opted_out_or_were_deleted(
    client: TestClient, keys: dict[str, str], services: Services, fake_text: FakeText
) -> None:
    """A catch-up holds the group's messages: its words are theirs as much as the reader's."""
    from townsquare.storage.social_tables import Generation

    moderator, admin = auth(keys["moderator"]), auth(keys["admin"])
    fake_text.enqueue(
        '{"points": [{"text": "Rye flour is at the mill shop.", "messages": [1, 2]}]}'
    )
    caught = client.get(
        "/api/groups/g1/catch-up", params={"since": "2000-01-01T00:00:00Z"}, headers=moderator
    ).json()
    generation = caught["generation_id"]
    client.post(f"/api/generations/{generation}/feedback", json={"rating": "up"}, headers=moderator)
    assert [r["metadata"]["generation_id"] for r in exported(services, "sft")] == [generation]
    # the member wrote m1: opting out takes the reader's catch-up out of every export
    with services.sessions.begin() as db:
        db.query(User).filter_by(name="member").one().training_opt_out = True
    assert exported(services, "sft") == []
    with services.sessions.begin() as db:
        db.query(User).filter_by(name="member").one().training_opt_out = False
    assert len(exported(services, "sft")) == 1
    # deleting the member redacts what was stored of their words with the generation
    assert client.delete("/api/users/u-member", headers=admin).status_code == 200
    with services.sessions() as db:
        row = db.get(Generation, generation)
        assert row is not None and row.prompt is None and row.answer is None
        assert "rye" not in json.dumps([row.inputs, row.output]).lower()
    assert exported(services, "sft") == []
