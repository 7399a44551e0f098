"""The assistant uses the town: the router with the real MiniLM picks tools on the demo town,
the tools run with the member's permissions, answers are grounded (cards + template text)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.conftest import auth, make_settings
from tests.helpers import sse_data
from townsquare.app import create_app
from townsquare.backends.base import Message
from townsquare.backends.fake import FakeText
from townsquare.backends.sentence_embed import SentenceEmbeddings
from townsquare.features.assistant import grounding
from townsquare.features.assistant.agent import FALLBACK
from townsquare.features.assistant.router import EXAMPLES, core_words, match_group
from townsquare.features.assistant.tools import ToolResult
from townsquare.identity import issue_key
from townsquare.safety.pipeline import Decision, SafetyPolicy
from townsquare.services import Services
from townsquare.social.demo import seed
from townsquare.storage.social_tables import Group, Listing, Membership, Reel
from townsquare.storage.tables import User

pytestmark = pytest.mark.model  # the real embedding model

HELD_OUT = EXAMPLES.parents[4].parent / "bench" / "data" / "assistant_requests.jsonl"


class BlockWord(SafetyPolicy):
    """Blocks any input with 'forbidden' in it (a stand-in for the moderator)."""

    name = "block-word"

    def check_input(self, messages: Any, context: Any) -> Decision:
        text = " ".join(m.content for m in messages)
        return Decision(False, ("S2",), "blocked") if "forbidden" in text else Decision(True)

    def check_output(self, text: str, context: Any, *, final: bool) -> Decision:
        return Decision(True)


@pytest.fixture(scope="module")
def town(
    tmp_path_factory: pytest.TempPathFactory, real_embed: SentenceEmbeddings
) -> Iterator[tuple[TestClient, dict[str, str], Services, FakeText]]:
    fake = FakeText()
    services = Services.build(
        make_settings(tmp_path_factory.mktemp("tools"), assistant={"tool_mode": "router"}),
        text=fake,
        embed=real_embed,
        policies=[BlockWord()],
    )
    with services.sessions.begin() as db:
        keys = seed(db, services.settings.ingest)
        bakers = db.scalar(select(Group).where(Group.external_id == "g-sunday-bakers"))
        assert bakers is not None
        member_ids = set(
            db.scalars(select(Membership.user_id).where(Membership.group_id == bakers.id))
        )
        baker = db.scalar(select(User).where(User.id.in_(member_ids), User.role == "member"))
        stranger = db.scalar(select(User).where(User.id.not_in(member_ids), User.role == "member"))
        seller = db.get(User, db.scalar(select(Listing.seller_id).limit(1)))
        assert baker and stranger and seller
        keys["baker"] = issue_key(db, baker, label="t")
        keys["stranger"] = issue_key(db, stranger, label="t")
        keys["seller"] = issue_key(db, seller, label="t")
    services.indexer.sync_all()
    with TestClient(create_app(services=services)) as client:
        yield client, keys, services, fake
    asyncio.run(services.aclose())


def ask(client: TestClient, key: str, content: str, **extra: Any) -> dict[str, Any]:
    cid = client.post("/api/conversations", json={}, headers=auth(key)).json()["id"]
    response = client.post(
        f"/api/conversations/{cid}/messages", json={"content": content, **extra}, headers=auth(key)
    )
    assert response.status_code == 200, response.text
    return response.json()["reply"] if not extra.get("stream") else {"sse": response.text}


def titles(services: Services) -> list[str]:
    with services.sessions() as db:
        return list(db.scalars(select(Listing.title))) + list(db.scalars(select(Reel.caption)))


def test_marketplace_request_gets_listings_with_its_filters(
    town: tuple[TestClient, dict[str, str], Services, FakeText],
) -> None:
    client, keys, services, fake = town
    calls = len(fake.calls)
    reply = ask(client, keys["mia"], "Find me a kids bike under 150 near Alfama")
    cards = reply["cards"]
    assert cards and all(c["type"] == "listing" for c in cards)
    assert all(float(c["price"]) <= 150 for c in cards)
    assert reply["content"].startswith(f"Here are {len(cards)} listings for “kids bike” under €150")
    assert "near Alfama" in reply["content"]
    assert len(fake.calls) == calls  # the model wrote nothing
    assert reply["model"] == "townsquare-tools"
    results = [ToolResult("search_listings", {"query": "kids bike"}, cards)]
    assert grounding.problems(reply["content"], results, known_titles=titles(services)) == []
    metrics = client.get("/metrics").text
    assert 'townsquare_assistant_tool_runs_total{outcome="ok",tool="search_listings"}' in metrics


def test_reels_answer_never_invents_a_count_or_a_title(
    town: tuple[TestClient, dict[str, str], Services, FakeText],
) -> None:
    client, keys, services, _ = town
    reply = ask(client, keys["mia"], "Any reels on running along the river?")
    cards = reply["cards"]
    assert cards and all(c["type"] == "reel" for c in cards)
    assert len({c["caption"] for c in cards}) == len(cards)
    results = [ToolResult("recommend_reels", {"topic": "running along river"}, cards)]
    assert grounding.problems(reply["content"], results, known_titles=titles(services)) == []
    streamed = sse_data(ask(client, keys["mia"], "show me cooking videos", stream=True)["sse"])
    final = streamed[-2]["townsquare"]["reply"]
    assert final["cards"] and final["cards"][0]["type"] == "reel"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in streamed[:-2])
    assert text == final["content"]


def test_catch_up_runs_with_the_members_permissions(
    town: tuple[TestClient, dict[str, str], Services, FakeText],
) -> None:
    client, keys, _services, _ = town
    reply = ask(client, keys["baker"], "What did I miss in the Sunday Bakers group?")
    assert reply["content"].startswith("Here is what you missed in Sunday Bakers")
    points = reply["cards"]
    assert points and all(p["type"] == "point" and p["message_ids"] for p in points)
    assert all(m.startswith("m-sunday-bakers-") for p in points for m in p["message_ids"])
    # someone outside the group learns nothing about it
    outside = ask(client, keys["stranger"], "What did I miss in the Sunday Bakers group?")
    assert outside["cards"] == []
    assert "not in a group" in outside["content"] or "Which group" in outside["content"]


def test_creator_replies_seller_drafts_and_plain_chat(
    town: tuple[TestClient, dict[str, str], Services, FakeText],
) -> None:
    client, keys, _services, fake = town
    replies = ask(client, keys["sol.rivera"], "Suggest three replies to my latest fan DM")
    assert replies["cards"] and all(c["type"] == "reply" for c in replies["cards"])
    assert replies["cards"][0]["thread_id"].startswith("dm-sol.rivera-")
    # a member who is not a creator is told why, not shown someone else's DMs
    refused = ask(client, keys["mia"], "Suggest three replies to my latest fan DM")
    assert refused["cards"] == [] and "creator" in refused["content"].lower()
    draft = ask(client, keys["seller"], "Write a description for my latest listing")
    [card] = draft["cards"]
    assert card["type"] == "draft" and card["accept_url"].endswith("/description/accept")
    comments = ask(client, keys["mia"], "Suggest a comment for the latest post")
    assert comments["cards"] and all(c["type"] == "suggestion" for c in comments["cards"])
    for answer in (replies, draft, comments):  # the templates pass the check: no fallback line
        assert answer["content"] != FALLBACK and answer["content"].endswith(":")
    fake.enqueue("Hello! How can I help?")
    plain = ask(client, keys["mia"], "Hi!")
    assert plain["cards"] == [] and plain["content"] == "Hello! How can I help?"


def test_a_description_is_drafted_for_the_listing_the_seller_names(
    town: tuple[TestClient, dict[str, str], Services, FakeText],
) -> None:
    """Issue 25's defect: 'my <thing>' drafted for the seller's latest listing instead."""
    client, keys, services, _fake = town
    with services.sessions() as db:
        seller_id = db.scalar(select(Listing.seller_id).limit(1))
        mine = list(
            db.scalars(
                select(Listing).where(Listing.seller_id == seller_id).order_by(Listing.id.desc())
            )
        )
    named = next(
        m
        for m in mine[1:]
        if all(word not in m.title for other in mine if other is not m for word in [other.title])
    )
    answer = ask(client, keys["seller"], f"Write a description for my {named.title}")
    [card] = answer["cards"]
    assert card["listing_id"] == named.external_id, (named.title, card["listing_title"])
    unknown = ask(client, keys["seller"], "Write a description for my spaceship")
    assert unknown["cards"] == [] and "spaceship" in unknown["content"]
    assert mine[0].title in unknown["content"]  # the seller's own listings, to choose from


def test_a_blocked_request_never_reaches_a_tool(
    town: tuple[TestClient, dict[str, str], Services, FakeText],
) -> None:
    client, keys, _, _ = town
    cid = client.post("/api/conversations", json={}, headers=auth(keys["mia"])).json()["id"]
    response = client.post(
        f"/api/conversations/{cid}/messages",
        json={"content": "Find me forbidden things for sale under 50"},
        headers=auth(keys["mia"]),
    )
    assert response.status_code == 422 and response.json()["error"]["hazards"] == ["S2"]


def test_router_examples_hold_no_held_out_request() -> None:
    shipped = {json.loads(line)["text"] for line in EXAMPLES.read_text().splitlines()}
    rows = [json.loads(line) for line in HELD_OUT.read_text().splitlines()]
    held_out = {r["text"] for r in rows if r["split"] == "heldout"}
    assert len(held_out) >= len(rows) // 4 and not shipped & held_out
    assert shipped == {r["text"] for r in rows if r["split"] == "train"}


def test_argument_rules() -> None:
    places = ["Alfama", "Campo de Ourique"]
    assert core_words("Find me a kids bike under 150 near Alfama", places) == "kids bike"
    assert core_words("armchair for sale around Campo de Ourique", places) == "armchair"
    groups = ["Sunday Bakers", "Riverside Runners", "Maple Street Neighbours"]
    assert match_group("catch me up with the bakers", groups) == "Sunday Bakers"
    assert match_group("what are the runners up to", groups) == "Riverside Runners"
    assert match_group("what do people think about the bakery", groups) is None
    assert match_group("street food reels", groups) is None
    # a word anyone uses is no group's name: running, neighbours
    assert match_group("what's a good stretch after running?", groups) is None
    assert match_group("what are neighbours saying about the noise?", groups) is None


def test_grounding_check_catches_invented_counts_and_names() -> None:
    cards = [{"type": "reel", "caption": "Riverside 5 km at sunrise"}]
    results = [ToolResult("recommend_reels", {"topic": "running"}, cards)]
    assert grounding.problems("Here is 1 reel about “running” you might like:", results) == []
    assert grounding.problems("Here are 18 reels:", results)
    assert grounding.problems("Watch “Marathon secrets” tonight", results)
    known = ["Riverside 5 km at sunrise", "Fado on a Tuesday night"]
    assert grounding.problems("Try Fado on a Tuesday night!", results, known_titles=known)
    assert grounding.problems("two reels for you", results)
    assert not grounding.problems("one reel for you", results)


def test_model_mode_feeds_tool_errors_back_and_replaces_ungrounded_text(
    town: tuple[TestClient, dict[str, str], Services, FakeText],
) -> None:
    client, keys, services, fake = town
    services.settings.assistant.tool_mode = "model"
    try:
        fake.enqueue(
            json.dumps({"tool_calls": [{"name": "recommend_reels", "arguments": {"topik": 1}}]}),
            json.dumps(
                {"tool_calls": [{"name": "recommend_reels", "arguments": {"topic": "cats"}}]}
            ),
            json.dumps({"content": "done"}),
            "I found 18 reels, including “Cats of the moon”.",
        )
        reply = ask(client, keys["mia"], "something fun to watch")
    finally:
        services.settings.assistant.tool_mode = "router"
    cards = reply["cards"]
    assert cards and all(c["type"] == "reel" for c in cards)
    # the model's claim failed the check: the template went out instead
    assert "18" not in reply["content"] and "Cats of the moon" not in reply["content"]
    assert reply["content"].startswith("Here")
    final_prompt: list[Message] = fake.calls[-1][0]
    errors = [m.content for m in final_prompt if "do not match its schema" in m.content]
    assert errors, "the schema error was fed back to the model"
