"""Reads go through the access rules; invisible things read as missing."""

import pytest
from fastapi.testclient import TestClient

from tests.conftest import auth
from tests.town import build_town
from townsquare.services import Services


@pytest.fixture
def keys(services: Services) -> dict[str, str]:
    return build_town(services)


def get(client: TestClient, key: str, path: str) -> tuple[int, object]:
    response = client.get(path, headers=auth(key))
    return response.status_code, response.json()


def ids(client: TestClient, key: str, path: str) -> list[str]:
    status, body = get(client, key, path)
    assert status == 200, body
    return [item["id"] for item in body["data"]]  # type: ignore[index]


def test_group_content_is_for_members(client: TestClient, keys: dict[str, str]) -> None:
    assert ids(client, keys["member"], "/api/groups/g1/messages") == ["m2", "m1"]
    status, body = get(client, keys["outsider"], "/api/groups/g1/messages")
    assert status == 404 and "that you can see" in str(body)
    assert get(client, keys["outsider"], "/api/groups/g1")[0] == 404
    assert get(client, keys["outsider"], "/api/groups/nope")[0] == 404  # same answer either way
    assert ids(client, keys["outsider"], "/api/groups") == []
    assert ids(client, keys["member"], "/api/groups") == ["g1"]
    assert ids(client, keys["admin"], "/api/groups") == ["g1"]


def test_feed_and_posts(client: TestClient, keys: dict[str, str]) -> None:
    assert set(ids(client, keys["member"], "/api/posts")) == {"p1", "p-public"}
    assert ids(client, keys["outsider"], "/api/posts") == ["p-public"]
    status, post = get(client, keys["moderator"], "/api/posts/p1")
    assert status == 200 and [c["text"] for c in post["comments"]] == ["Nice"]  # type: ignore[index]
    assert get(client, keys["creator"], "/api/posts/p1")[0] == 404


def test_dm_threads_are_for_their_participants(client: TestClient, keys: dict[str, str]) -> None:
    assert ids(client, keys["creator"], "/api/dm-threads") == ["t1"]
    assert ids(client, keys["member"], "/api/dm-threads/t1/messages") == ["d2", "d1"]
    assert get(client, keys["moderator"], "/api/dm-threads/t1/messages")[0] == 404
    assert ids(client, keys["outsider"], "/api/dm-threads") == []


def test_listings_and_reels(client: TestClient, keys: dict[str, str]) -> None:
    assert ids(client, keys["outsider"], "/api/listings") == ["l-active"]
    assert set(ids(client, keys["member"], "/api/listings")) == {"l-active", "l1"}  # own draft
    assert get(client, keys["outsider"], "/api/listings/l1")[0] == 404
    assert ids(client, keys["outsider"], "/api/listings?category=furniture") == []
    assert get(client, keys["outsider"], "/api/reels/r-public")[0] == 200
    assert get(client, keys["outsider"], "/api/reels/r1")[0] == 404
    assert get(client, keys["moderator"], "/api/reels/r1")[0] == 200
    assert get(client, keys["member"], "/api/reels/r-private")[0] == 404
    assert get(client, keys["creator"], "/api/reels/r-private")[0] == 200


def test_moderators_act_within_their_group(client: TestClient, keys: dict[str, str]) -> None:
    member_try = client.delete("/api/groups/g1/messages/m1", headers=auth(keys["member"]))
    assert member_try.status_code == 403 and "moderators" in member_try.json()["error"]["message"]
    assert (
        client.delete("/api/groups/g1/messages/m1", headers=auth(keys["outsider"])).status_code
        == 404
    )
    done = client.delete("/api/groups/g1/messages/m1", headers=auth(keys["moderator"]))
    assert done.json() == {"id": "m1", "status": "hidden"}
    assert ids(client, keys["member"], "/api/groups/g1/messages") == ["m2"]
    event = client.get("/api/audit", headers=auth(keys["admin"])).json()["data"][0]
    assert (event["action"], event["target"], event["actor_role"]) == (
        "moderate.hide_message",
        "g1/m1",
        "member",
    )


def test_me(client: TestClient, keys: dict[str, str]) -> None:
    assert get(client, keys["creator"], "/api/me")[1] == {
        "name": "creator",
        "id": "u-creator",
        "role": "creator",
        "display_name": "creator",
    }


def test_index_filters_agree_with_the_sql_rules(services: Services, keys: dict[str, str]) -> None:
    """Search applies visibility as filters over the metadata kept in the index; they must
    select exactly what the SQL conditions select, for every persona and every item (the
    town is built so each rule has items on both sides)."""
    import random

    from sqlalchemy import select

    from townsquare.features.search.indexer import listing_attrs, post_attrs, reel_attrs
    from townsquare.social import access
    from townsquare.social.ingest import KINDS, ingest
    from townsquare.storage.filters import matches
    from townsquare.storage.social_tables import Listing, Post, Reel
    from townsquare.storage.tables import User

    rng = random.Random(5)
    extra = {
        "listings": [
            {
                "external_id": f"lx{n}",
                "seller": rng.choice(["u-member", "u-creator", "u-outsider"]),
                "title": "thing",
                "price": "10",
                "category": "misc",
                "status": rng.choice(["active", "sold", "draft"]),
            }
            for n in range(12)
        ],
        "reels": [
            {
                "external_id": f"rx{n}",
                "creator": rng.choice(["u-member", "u-creator", "u-outsider"]),
                "duration_s": 10,
                "media_url": "https://videos.example/x.mp4",
                **rng.choice(
                    [
                        {"visibility": "public"},
                        {"visibility": "private"},
                        {"visibility": "group", "group": "g1"},
                    ]
                ),
            }
            for n in range(12)
        ],
    }
    with services.sessions.begin() as db:
        for kind, rows in extra.items():
            ingest(db, KINDS[kind], rows, settings=services.settings.ingest, actor=None)
    with services.sessions() as db:
        for user in db.scalars(select(User)):
            groups = access.member_group_ids(db, user)
            for table, attrs, sql_rule, index_rule in (
                (
                    Listing,
                    listing_attrs,
                    access.visible_listings(user),
                    access.listings_filter(user),
                ),
                (Post, post_attrs, access.visible_posts(user), access.posts_filter(user, groups)),
                (Reel, reel_attrs, access.visible_reels(user), access.reels_filter(user, groups)),
            ):
                by_sql = set(db.scalars(select(table.id).where(sql_rule)))
                by_index = {
                    item.id
                    for item in db.scalars(select(table))
                    if matches(index_rule, attrs(item))
                }
                assert by_index == by_sql, (user.name, table.__name__)
