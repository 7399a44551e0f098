"""The demo town: deterministic, complete, and with two clearly different creator voices."""

import re
import statistics

from sqlalchemy import func, select

from townsquare.services import Services
from townsquare.social.demo import CREATOR_A, CREATOR_B, seed, town
from townsquare.storage.social_tables import DMMessage, Group, Listing, Reel
from townsquare.storage.tables import User

EMOJI = re.compile("[\U0001f300-\U0001faff\u2600-\u27bf]")


def test_town_is_deterministic_and_the_right_size() -> None:
    rows = town()
    assert rows == town()
    sizes = {kind: len(items) for kind, items in rows.items()}
    assert 28 <= sizes["users"] <= 35 and sizes["groups"] == 3
    assert sizes["messages"] >= 300 and 90 <= sizes["posts"] <= 110 and sizes["comments"] > 100
    assert 450 <= sizes["listings"] <= 550 and 280 <= sizes["reels"] <= 320
    assert sizes["interactions"] > 1000
    assert len({r["category"] for r in rows["listings"]}) >= 8


def replies(rows: dict, creator: str) -> list[str]:  # type: ignore[type-arg]
    return [m["text"] for m in rows["dm-messages"] if m["author"] == f"u-{creator}"]


def test_creators_have_distinct_styles() -> None:
    rows = town()
    terse, formal = replies(rows, CREATOR_A), replies(rows, CREATOR_B)
    assert len(terse) >= 150 and len(formal) >= 150
    assert statistics.mean(len(t) for t in terse) * 4 < statistics.mean(len(t) for t in formal)
    assert sum(bool(EMOJI.search(t)) for t in terse) / len(terse) > 0.8
    assert sum(bool(EMOJI.search(t)) for t in formal) == 0
    assert all(t.startswith("Dear ") and "Amelia" in t for t in formal)
    assert sum(t == t.lower() for t in terse) / len(terse) > 0.8


def test_seed_stores_everything_and_returns_working_keys(services: Services) -> None:
    with services.sessions.begin() as db:
        keys = seed(db, services.settings.ingest)
    with services.sessions() as db:
        assert db.scalar(select(func.count()).select_from(Group)) == 3
        assert db.scalar(select(func.count()).select_from(Listing)) == len(town()["listings"])
        assert db.scalar(select(func.count()).select_from(Reel)) == len(town()["reels"])
        amelia = db.scalar(select(User).where(User.name == CREATOR_B))
        assert amelia is not None and amelia.role == "creator"
        assert db.scalar(select(func.count()).where(DMMessage.author_id == amelia.id)) >= 150
    assert set(keys) == {"mia", CREATOR_A, CREATOR_B}
    from townsquare.identity import user_for_key

    with services.sessions() as db:
        assert user_for_key(db, keys["mia"]).name == "mia"  # type: ignore[union-attr]
