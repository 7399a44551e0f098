"""Creator-style suggested replies on the demo town's two creators."""

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.conftest import auth, make_settings
from townsquare.app import create_app
from townsquare.backends.fake import FakeText
from townsquare.backends.llamacpp import LlamaCppText
from townsquare.features.suggestions.style import EMOJI, StyleProfile, shape
from townsquare.services import Services
from townsquare.social.demo import seed

SOL_THREAD, AMELIA_THREAD = "dm-sol.rivera-00", "dm-dr.amelia.hart-00"


@pytest.fixture
def demo(tmp_path) -> Iterator[tuple[TestClient, dict[str, str], FakeText]]:
    fake = FakeText()
    services = Services.build(make_settings(tmp_path), text=fake)
    with services.sessions.begin() as db:
        keys = seed(db, services.settings.ingest)
    with TestClient(create_app(services=services)) as client:
        yield client, keys, fake


def test_profiles_differ_and_start_switched_off(demo) -> None:  # type: ignore[no-untyped-def]
    client, keys, _ = demo
    sol = client.get("/api/creators/me/style", headers=auth(keys["sol.rivera"])).json()
    amelia = client.get("/api/creators/me/style", headers=auth(keys["dr.amelia.hart"])).json()
    assert sol["enabled"] is False and amelia["enabled"] is False
    assert sol["profile"]["replies"] >= 150 and amelia["profile"]["replies"] >= 150
    assert sol["profile"]["lowercase_rate"] > 0.8 and sol["profile"]["emoji_rate"] > 0.8
    assert amelia["profile"]["emoji_rate"] == 0 and amelia["profile"]["greeting"] == "Dear"
    assert amelia["profile"]["sign_off"] == "Kind regards, Amelia"
    assert amelia["profile"]["median_chars"] > 4 * sol["profile"]["median_chars"]
    assert client.get("/api/creators/me/style", headers=auth(keys["mia"])).status_code == 403


def test_edit_and_switch_on(demo) -> None:  # type: ignore[no-untyped-def]
    client, keys, _ = demo
    amelia = auth(keys["dr.amelia.hart"])
    edited = client.put(
        "/api/creators/me/style",
        json={"enabled": True, "sign_off": "Warmly, Amelia"},
        headers=amelia,
    ).json()
    assert (
        edited["enabled"] and edited["edited"] and edited["profile"]["sign_off"] == "Warmly, Amelia"
    )
    assert (
        client.put("/api/creators/me/style", json={"tone": "x"}, headers=amelia).status_code == 422
    )


def test_styled_replies_use_examples_and_the_profile(demo) -> None:  # type: ignore[no-untyped-def]
    client, keys, fake = demo
    sol = auth(keys["sol.rivera"])
    fake.enqueue('{"replies": ["Sure, go before noon!", "Thanks so much", "Try the market stall"]}')
    plain = client.post(f"/api/dm-threads/{SOL_THREAD}/suggested-replies", headers=sol).json()
    assert plain["styled"] is False and plain["replies"][0] == "Sure, go before noon!"
    assert "Past replies" not in fake.calls[-1][0][0].content
    client.put("/api/creators/me/style", json={"enabled": True}, headers=sol)
    fake.enqueue('{"replies": ["Sure, go before noon!", "Thanks so much", "Try the market stall"]}')
    styled = client.post(f"/api/dm-threads/{SOL_THREAD}/suggested-replies", headers=sol).json()
    assert styled["styled"] is True
    assert all(r == r.lower() and EMOJI.search(r) for r in styled["replies"])
    prompt = fake.calls[-1][0][0].content
    assert prompt.count("Fan: ") == 3 and "all lowercase" in prompt


def test_only_the_creator_gets_suggestions(demo) -> None:  # type: ignore[no-untyped-def]
    client, keys, _ = demo
    fan = client.get("/api/dm-threads", headers=auth(keys["mia"])).json()["data"]
    if fan:
        refused = client.post(
            f"/api/dm-threads/{fan[0]['id']}/suggested-replies", headers=auth(keys["mia"])
        )
        assert refused.status_code == 403
    assert (
        client.post(
            f"/api/dm-threads/{AMELIA_THREAD}/suggested-replies", headers=auth(keys["sol.rivera"])
        ).status_code
        == 404
    )


def test_shape() -> None:
    terse = StyleProfile(
        median_chars=30, p75_chars=40, emoji_rate=0.9, top_emoji=["🔥"], lowercase_rate=0.95
    )
    assert shape("Go Before Noon", terse) == "go before noon 🔥"
    formal = StyleProfile(
        median_chars=200, p75_chars=260, emoji_rate=0.0, sign_off="Kind regards, Amelia"
    )
    assert shape("Thank you 🙏", formal) == "Thank you Kind regards, Amelia"
    assert (
        shape("Thanks. Kind regards, Amelia. PS see you", formal) == "Thanks. Kind regards, Amelia"
    )
    long = shape("A. " * 400, formal)
    assert len(long) <= 1.5 * 260 + len(" Kind regards, Amelia") + 1


@pytest.mark.model
def test_real_model_in_the_creators_voice(tmp_path, real_text: LlamaCppText) -> None:
    services = Services.build(make_settings(tmp_path), text=real_text)
    with services.sessions.begin() as db:
        keys = seed(db, services.settings.ingest)
    with TestClient(create_app(services=services)) as client:
        sol = auth(keys["sol.rivera"])
        client.put("/api/creators/me/style", json={"enabled": True}, headers=sol)
        body = client.post(f"/api/dm-threads/{SOL_THREAD}/suggested-replies", headers=sol).json()
        assert body["styled"] and 1 <= len(body["replies"]) <= 3
        assert all(r == r.lower() and EMOJI.search(r) for r in body["replies"])
        amelia = auth(keys["dr.amelia.hart"])
        client.put("/api/creators/me/style", json={"enabled": True}, headers=amelia)
        formal = client.post(
            f"/api/dm-threads/{AMELIA_THREAD}/suggested-replies", headers=amelia
        ).json()
        assert all(
            re.search(r"Kind regards, Amelia$", r) and not EMOJI.search(r)
            for r in formal["replies"]
        )
        # access: someone else's thread is invisible; a member is not a creator
        assert (
            client.post(
                f"/api/dm-threads/{AMELIA_THREAD}/suggested-replies", headers=sol
            ).status_code
            == 404
        )
        assert client.post(
            f"/api/dm-threads/{SOL_THREAD}/suggested-replies", headers=auth(keys["mia"])
        ).status_code in {403, 404}


def test_shaping_never_cuts_off_the_emoji_it_adds() -> None:
    """A terse, emoji-heavy creator: a long reply is cut to their length and still ends with
    their emoji (the emoji used to be added first and then cut away)."""
    profile = StyleProfile(
        replies=50,
        median_chars=20,
        p75_chars=24,
        emoji_rate=0.9,
        top_emoji=["🔥"],
        lowercase_rate=1,
    )
    shaped = shape("Go early, the queue gets long after noon and the best ones sell out", profile)
    assert len(shaped) <= 40 and shaped.endswith("🔥") and shaped == shaped.lower()


def test_the_core_suggests_the_creators_own_past_replies(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """writing="core": three of the creator's own earlier replies (to the fan messages most
    like this one), unlike each other; no model call."""
    from sqlalchemy import select

    from townsquare.storage.social_tables import DMMessage
    from townsquare.storage.tables import User

    fake = FakeText()
    services = Services.build(make_settings(tmp_path, writing="core"), text=fake)
    with services.sessions.begin() as db:
        keys = seed(db, services.settings.ingest)
    with TestClient(create_app(services=services)) as client:
        sol = auth(keys["sol.rivera"])
        found = client.post(f"/api/dm-threads/{SOL_THREAD}/suggested-replies", headers=sol)
    assert found.status_code == 200, found.text
    replies = found.json()["replies"]
    assert len(replies) == 3 and len(set(replies)) == 3 and fake.calls == []
    assert found.json()["generation_id"]  # recorded: the creator can rate it
    with services.sessions() as db:
        creator = db.scalar(select(User).where(User.name == "sol.rivera"))
        assert creator is not None
        own = set(db.scalars(select(DMMessage.text).where(DMMessage.author_id == creator.id)))
        names = "|".join(n.split()[0] for n in db.scalars(select(User.display_name)) if n)
    # each is one of the creator's own replies, up to the fan's name
    anonymous = {re.sub(rf"\b({names})\b", "X", past) for past in own}
    for reply in replies:
        assert re.sub(rf"\b({names})\b", "X", reply) in anonymous, reply


def test_a_creator_with_no_past_replies_gets_not_enough_to_suggest_from(tmp_path) -> None:  # type: ignore[no-untyped-def]
    services = Services.build(make_settings(tmp_path, writing="core"), text=FakeText())
    from tests.town import build_town

    keys = build_town(services)
    with TestClient(create_app(services=services)) as client:
        # the creator's only thread: the fan wrote last, the creator never replied to anyone
        client.put(
            "/api/dm-messages/d3",
            json={"thread": "t1", "author": "u-member", "text": "Any tips for sourdough?"},
            headers=auth(keys["admin"]),
        )
        with services.sessions.begin() as db:
            from sqlalchemy import delete

            from townsquare.storage.social_tables import DMMessage

            db.execute(delete(DMMessage).where(DMMessage.external_id == "d2"))
        response = client.post(
            "/api/dm-threads/t1/suggested-replies", headers=auth(keys["creator"])
        )
    assert response.status_code == 422, response.text
    assert "Not enough to suggest from" in response.json()["error"]["message"]
