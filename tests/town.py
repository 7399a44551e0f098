"""A tiny town for access tests: one group chat, one DM thread, a few posts, listings and reels.

Personas: ``member`` (in group g1, in DM thread t1), ``moderator`` (moderates g1), ``creator``
(the other side of t1, not in g1), ``outsider`` (in nothing), ``admin``.
"""

from __future__ import annotations

from typing import Any

from tests.conftest import add_user
from townsquare.services import Services
from townsquare.social.ingest import KINDS, ingest

ROWS: dict[str, list[dict[str, Any]]] = {
    "users": [
        {"external_id": "u-member", "name": "member"},
        {"external_id": "u-moderator", "name": "moderator"},
        {"external_id": "u-creator", "name": "creator", "role": "creator"},
        {"external_id": "u-outsider", "name": "outsider"},
        {"external_id": "u-extra", "name": "extra"},
    ],
    "groups": [
        {
            "external_id": "g1",
            "name": "Bakers",
            "members": [{"user": "u-member"}, {"user": "u-moderator", "role": "moderator"}],
        },
    ],
    "messages": [
        {"external_id": "m1", "group": "g1", "author": "u-member", "text": "Who has rye flour?"},
        {
            "external_id": "m2",
            "group": "g1",
            "author": "u-moderator",
            "text": "The mill shop.",
            "reply_to": "m1",
        },
    ],
    "posts": [
        {"external_id": "p-public", "author": "u-creator", "text": "Hello town"},
        {"external_id": "p1", "author": "u-member", "group": "g1", "text": "Bakers only"},
    ],
    "comments": [{"external_id": "c1", "post": "p1", "author": "u-moderator", "text": "Nice"}],
    "dm-threads": [{"external_id": "t1", "participants": ["u-creator", "u-member"]}],
    "dm-messages": [
        {"external_id": "d1", "thread": "t1", "author": "u-member", "text": "Love your videos"},
        {"external_id": "d2", "thread": "t1", "author": "u-creator", "text": "thank u!! 💛"},
    ],
    "listings": [
        {
            "external_id": "l-active",
            "seller": "u-member",
            "title": "Kids' bike",
            "price": "80",
            "category": "bikes",
            "attributes": {"brand": "Btwin", "frame_size": "16 in"},
        },
        {
            "external_id": "l1",
            "seller": "u-member",
            "title": "Draft sofa",
            "price": "200",
            "category": "furniture",
            "status": "draft",
            "attributes": {"material": "velvet", "seats": 3},
        },
    ],
    "reels": [
        {
            "external_id": "r-public",
            "creator": "u-creator",
            "duration_s": 30,
            "media_url": "https://v/1.mp4",
            "caption": "Sardines",
        },
        {
            "external_id": "r1",
            "creator": "u-member",
            "duration_s": 20,
            "media_url": "https://v/2.mp4",
            "visibility": "group",
            "group": "g1",
            "caption": "Our loaves",
        },
        {
            "external_id": "r-private",
            "creator": "u-creator",
            "duration_s": 10,
            "media_url": "https://v/3.mp4",
            "visibility": "private",
        },
    ],
    "interactions": [
        {
            "external_id": "i1",
            "user": "u-member",
            "target_kind": "reel",
            "target": "r-public",
            "action": "like",
        },
        {
            "external_id": "i2",
            "user": "u-outsider",
            "target_kind": "listing",
            "target": "l-active",
            "action": "save",
        },
    ],
}

PERSONAS = ("member", "moderator", "creator", "outsider")


def build_town(services: Services) -> dict[str, str]:
    """Ingest the town; return an API key per persona (and 'admin')."""
    with services.sessions.begin() as db:
        for kind, rows in ROWS.items():
            ingest(db, KINDS[kind], rows, settings=services.settings.ingest, actor=None)
    services.indexer.sync_all()  # as the API does after ingestion
    keys = {"admin": add_user(services, "root", role="admin")}
    from townsquare.identity import issue_key
    from townsquare.storage.tables import User

    with services.sessions.begin() as db:
        for name in PERSONAS:
            user = db.query(User).filter_by(name=name).one()
            keys[name] = issue_key(db, user)
    return keys
