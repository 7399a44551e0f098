"""Ingestion over HTTP: single rows, batches (JSON and JSON Lines), idempotency, bad rows."""

import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.conftest import auth, make_settings
from tests.town import ROWS, build_town
from townsquare.app import create_app
from townsquare.backends.fake import FakeText
from townsquare.services import Services
from townsquare.social.ingest import Removal
from townsquare.storage.social_tables import (
    AuditEvent,
    DMMessage,
    Feedback,
    Generation,
    GroupMessage,
    Interaction,
    Listing,
    Post,
    Reel,
)
from townsquare.storage.tables import Conversation, User


@pytest.fixture
def keys(services: Services) -> dict[str, str]:
    return build_town(services)


def count(services: Services, table: object) -> int:
    with services.sessions() as db:
        return db.scalar(select(func.count()).select_from(table)) or 0  # type: ignore[arg-type]


def test_put_creates_then_updates_then_leaves_alone(
    client: TestClient, keys: dict[str, str]
) -> None:
    body = {
        "seller": "u-member",
        "title": "Oak table",
        "price": "120.50",
        "category": "Furniture",
        "attributes": {"material": "oak", "width_cm": 160},
    }
    admin = auth(keys["admin"])
    first = client.put("/api/listings/l-oak", json=body, headers=admin)
    assert (first.status_code, first.json()) == (201, {"id": "l-oak", "status": "created"})
    same = client.put("/api/listings/l-oak", json=body, headers=admin)
    assert (same.status_code, same.json()["status"]) == (200, "unchanged")
    changed = client.put("/api/listings/l-oak", json={**body, "price": "99"}, headers=admin)
    assert changed.json()["status"] == "updated"
    listing = client.get("/api/listings/l-oak", headers=admin).json()
    assert listing["price"] == "99.00" and listing["category"] == "furniture"
    assert listing["attributes"] == {"material": "oak", "width_cm": 160}


def test_batch_twice_changes_nothing(
    client: TestClient, services: Services, keys: dict[str, str]
) -> None:
    rows = [
        {"external_id": f"x-{n}", "group": "g1", "author": "u-member", "text": f"hello {n}"}
        for n in range(20)
    ]
    rows.append(
        {
            "external_id": "x-reply",
            "group": "g1",
            "author": "u-moderator",
            "text": "replying within the batch",
            "reply_to": "x-3",
        }
    )
    first = client.post("/api/messages:batch", json=rows, headers=auth(keys["admin"])).json()
    assert (first["created"], first["updated"], first["unchanged"]) == (21, 0, 0)
    with services.sessions() as db:
        before = [
            (m.external_id, m.text, m.reply_to_id, m.created_at)
            for m in db.scalars(select(GroupMessage))
        ]
    again = client.post("/api/messages:batch", json=rows, headers=auth(keys["admin"])).json()
    assert (again["created"], again["updated"], again["unchanged"]) == (0, 0, 21)
    with services.sessions() as db:
        after = [
            (m.external_id, m.text, m.reply_to_id, m.created_at)
            for m in db.scalars(select(GroupMessage))
        ]
    assert before == after
    messages = client.get("/api/groups/g1/messages?limit=200", headers=auth(keys["member"])).json()[
        "data"
    ]
    assert {m["id"]: m["reply_to"] for m in messages}["x-reply"] == "x-3"


def test_json_lines_batch(client: TestClient, services: Services, keys: dict[str, str]) -> None:
    lines = "\n".join(
        json.dumps({"external_id": f"p-jl-{n}", "author": "u-creator", "text": f"post {n}"})
        for n in range(5)
    )
    response = client.post(
        "/api/posts:batch",
        content=lines + "\n",
        headers={**auth(keys["admin"]), "content-type": "application/x-ndjson"},
    )
    assert response.status_code == 200 and response.json()["created"] == 5
    assert count(services, Post) == 2 + 5


def test_bad_rows_reject_the_whole_batch_with_reasons(
    client: TestClient, services: Services, keys: dict[str, str]
) -> None:
    rows = [
        {
            "external_id": "ok-1",
            "seller": "u-member",
            "title": "Lamp",
            "price": "10",
            "category": "home",
        },
        {
            "external_id": "bad-1",
            "seller": "u-member",
            "title": "Lamp",
            "price": "-3",
            "category": "home",
        },
        {
            "external_id": "bad-2",
            "seller": "u-ghost",
            "title": "Chair",
            "price": "5",
            "category": "home",
        },
        {
            "external_id": "bad-3",
            "seller": "u-member",
            "title": "Desk",
            "price": "5",
            "category": "home",
            "colour": "red",
        },
        {"seller": "u-member", "title": "No id", "price": "5", "category": "home"},
        {
            "external_id": "ok-1",
            "seller": "u-member",
            "title": "Twice",
            "price": "5",
            "category": "home",
        },
    ]
    before = count(services, Listing)
    response = client.post("/api/listings:batch", json=rows, headers=auth(keys["admin"]))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_batch" and "nothing was stored" in error["message"]
    reasons = {r["row"]: " ".join(r["errors"]) for r in error["rows"]}
    assert set(reasons) == {2, 3, 4, 5, 6}
    assert "price" in reasons[2]
    assert "user 'u-ghost' does not exist" in reasons[3] and "PUT /api/users/u-ghost" in reasons[3]
    assert "colour: unknown field" in reasons[4]
    assert "external_id: required" in reasons[5]
    assert "appears twice" in reasons[6]
    assert count(services, Listing) == before

    partial = client.post(
        "/api/listings:batch?partial=true", json=rows, headers=auth(keys["admin"])
    )
    assert partial.status_code == 200
    assert partial.json()["created"] == 1 and len(partial.json()["rejected"]) == 5
    assert count(services, Listing) == before + 1


def test_single_row_errors(client: TestClient, keys: dict[str, str]) -> None:
    admin = auth(keys["admin"])
    unknown = client.put(
        "/api/posts/p9", json={"author": "u-member", "text": "x", "mood": "happy"}, headers=admin
    )
    assert unknown.status_code == 422 and "mood: unknown field" in str(unknown.json())
    empty = client.put("/api/posts/p9", json={"author": "u-member"}, headers=admin)
    assert empty.status_code == 422 and "needs text or an image_url" in str(empty.json())
    orphan = client.put(
        "/api/messages/m9",
        json={"group": "g-nope", "author": "u-member", "text": "hi"},
        headers=admin,
    )
    assert orphan.status_code == 422 and "group 'g-nope' does not exist" in str(orphan.json())
    stranger = client.put(
        "/api/messages/m9",
        json={"group": "g1", "author": "u-outsider", "text": "hi"},
        headers=admin,
    )
    assert stranger.status_code == 422 and "not a member of group 'g1'" in str(stranger.json())
    intruder = client.put(
        "/api/dm-messages/d9",
        json={"thread": "t1", "author": "u-outsider", "text": "hi"},
        headers=admin,
    )
    assert intruder.status_code == 422 and "not a participant" in str(intruder.json())
    mismatch = client.put(
        "/api/posts/p9",
        json={"external_id": "p8", "author": "u-member", "text": "x"},
        headers=admin,
    )
    assert mismatch.status_code == 400


def test_text_and_batch_limits(tmp_path, fake_text: FakeText) -> None:
    settings = make_settings(tmp_path, ingest={"max_text_chars": 20, "max_batch_rows": 3})
    services = Services.build(settings, text=fake_text)
    keys = build_town(services)
    with TestClient(create_app(services=services)) as client:
        long = client.put(
            "/api/posts/p-long",
            json={"author": "u-member", "text": "x" * 21},
            headers=auth(keys["admin"]),
        )
        assert long.status_code == 422
        assert "limit is 20 (ingest.max_text_chars)" in str(long.json())
        big = client.post(
            "/api/posts:batch",
            json=[{"external_id": f"b{n}", "author": "u-member", "text": "x"} for n in range(4)],
            headers=auth(keys["admin"]),
        )
        assert big.status_code == 413 and "ingest.max_batch_rows" in big.json()["error"]["message"]


def test_only_admins_ingest(client: TestClient, keys: dict[str, str]) -> None:
    row = {"author": "u-member", "text": "sneaky"}
    assert client.put("/api/posts/p-x", json=row, headers=auth(keys["member"])).status_code == 403
    assert client.put("/api/posts/p-x", json=row).status_code == 401


def test_messages_are_soft_deleted_unless_hard(
    client: TestClient, services: Services, keys: dict[str, str]
) -> None:
    admin = auth(keys["admin"])
    assert client.delete("/api/messages/m1", headers=admin).json()["status"] == "soft-deleted"
    shown = [
        m["id"]
        for m in client.get("/api/groups/g1/messages", headers=auth(keys["member"])).json()["data"]
    ]
    assert shown == ["m2"]
    assert count(services, GroupMessage) == 2  # kept: the reply still points at it
    assert (
        client.delete("/api/dm-messages/d1?hard=true", headers=admin).json()["status"] == "deleted"
    )
    assert count(services, DMMessage) == 1
    assert client.delete("/api/listings/l-active", headers=admin).json()["status"] == "deleted"
    assert count(services, Interaction) == 1  # the save on that listing went with it
    assert client.delete("/api/listings/l-nope", headers=admin).status_code == 404


def test_deleting_a_user_removes_them_everywhere(
    client: TestClient, services: Services, keys: dict[str, str]
) -> None:
    removed: list[Removal] = []
    services.deletion_hooks.append(removed.append)
    member = auth(keys["member"])
    client.post("/api/conversations", json={"title": "mine"}, headers=member)
    with services.sessions() as db:
        user = db.scalar(select(User).where(User.name == "member"))
        owned = {
            "listings": sorted(db.scalars(select(Listing.id).where(Listing.seller_id == user.id))),
            "posts": sorted(db.scalars(select(Post.id).where(Post.author_id == user.id))),
            "reels": sorted(db.scalars(select(Reel.id).where(Reel.creator_id == user.id))),
        }
    with services.sessions.begin() as db:  # something a writing feature made for them, rated
        made = Generation(feature="comments", user_id=user.id, answer="their words")
        db.add(made)
        db.flush()
        db.add(Feedback(generation_id=made.id, user_id=user.id, rating="up"))
    response = client.delete("/api/users/u-member", headers=auth(keys["admin"]))
    assert response.json() == {"id": "u-member", "status": "deleted"}
    # the hooks learn exactly what went, cascades included, so derived data prunes only that
    assert [(r.kind, r.external_id, r.users) for r in removed] == [("users", "u-member", [user.id])]
    assert {k: sorted(v) for k, v in removed[0].items.items()} == {
        k: v for k, v in owned.items() if v
    }
    with services.sessions() as db:
        assert db.scalar(select(User).where(User.name == "member")) is None
        assert (
            db.scalar(
                select(func.count())
                .select_from(GroupMessage)
                .where(GroupMessage.external_id == "m1")
            )
            == 0
        )
        assert (
            db.scalar(select(func.count()).select_from(Post).where(Post.external_id == "p1")) == 0
        )
        assert db.scalar(select(func.count()).select_from(Listing)) == 0
        assert (
            db.scalar(select(func.count()).select_from(Reel).where(Reel.external_id == "r1")) == 0
        )
        assert db.scalar(select(func.count()).select_from(Conversation)) == 0
        assert db.scalar(select(func.count()).select_from(Generation)) == 0
        assert db.scalar(select(func.count()).select_from(Feedback)) == 0
        # the outsider's save pointed at the member's listing: gone too; the moderator's message stays
        assert db.scalar(select(func.count()).select_from(Interaction)) == 0
        assert db.scalar(select(func.count()).select_from(GroupMessage)) == 1
    assert client.get("/api/me", headers=member).status_code == 401
    assert (
        client.delete("/api/users/root", headers=auth(keys["admin"])).status_code == 404
    )  # admins have no external id


def test_admin_actions_are_audited(
    client: TestClient, services: Services, keys: dict[str, str]
) -> None:
    client.put(
        "/api/posts/p-a", json={"author": "u-member", "text": "x"}, headers=auth(keys["admin"])
    )
    client.delete("/api/posts/p-a", headers=auth(keys["admin"]))
    events = client.get("/api/audit", headers=auth(keys["admin"])).json()["data"]
    assert [e["action"] for e in events[:2]] == ["delete.posts", "ingest.posts"]
    assert events[0]["target"] == "p-a" and events[0]["actor_role"] == "admin"
    assert count(services, AuditEvent) >= 2
    assert client.get("/api/audit", headers=auth(keys["moderator"])).status_code == 403


def test_ingesting_admins_is_refused(client: TestClient, keys: dict[str, str]) -> None:
    response = client.put(
        "/api/users/u-boss", json={"name": "boss", "role": "admin"}, headers=auth(keys["admin"])
    )
    assert response.status_code == 422 and "role" in str(response.json())


def test_rows_in_the_fixture_town_were_all_stored(services: Services, keys: dict[str, str]) -> None:
    assert count(services, Reel) == len(ROWS["reels"])
