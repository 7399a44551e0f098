"""A deterministic demo community ("Riverside", a Lisbon-like town), built from templates and
word lists so that every run gives the same town, without downloads.

It goes through the same ingestion service host apps use. `townsquare seed demo` builds it;
`make run` does so on an empty database.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from townsquare.identity import issue_key
from townsquare.settings import IngestSettings
from townsquare.social.ingest import KINDS, ingest
from townsquare.storage.social_tables import Group
from townsquare.storage.tables import User

SEED = 20261129
# the word lists, places, catalogue and replies the generator draws from: data, not code
DATA: dict[str, Any] = json.loads((Path(__file__).parent / "demo_town.json").read_text())
START = datetime(2026, 10, 1, 8, 0, tzinfo=UTC)

FIRST = DATA["first"]
LAST = DATA["last"]
PLACES = DATA["places"]

CREATOR_A = "sol.rivera"  # street food and travel: terse, lowercase, emoji-heavy
CREATOR_B = "dr.amelia.hart"  # gardening and wellbeing: long, formal, signs off


def _members(rng: random.Random) -> list[dict[str, Any]]:
    rows = []
    for i, first in enumerate(FIRST):
        last = LAST[i % len(LAST)]
        rows.append(
            {
                "external_id": f"u-{first}",
                "name": first,
                "display_name": f"{first.capitalize()} {last.capitalize()}",
                "locale": rng.choice(["en", "en", "pt"]),
                "role": "member",
            }
        )
    rows.append(
        {
            "external_id": f"u-{CREATOR_A}",
            "name": CREATOR_A,
            "display_name": "Sol Rivera",
            "role": "creator",
        }
    )
    rows.append(
        {
            "external_id": f"u-{CREATOR_B}",
            "name": CREATOR_B,
            "display_name": "Dr Amelia Hart",
            "role": "creator",
        }
    )
    return rows


GROUP_TALK = DATA["group_talk"]
FILL = DATA["fill"]


def _fill(rng: random.Random, template: str) -> str:
    values = {k: rng.choice(v) for k, v in FILL.items()}
    values["place"] = rng.choice(PLACES)[0]
    return template.format(**values)


def _groups(
    rng: random.Random, users: list[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    groups, messages = [], []
    for index, (name, talk) in enumerate(GROUP_TALK.items()):
        members = sorted(rng.sample(users, 12))
        group_id = f"g-{name}"
        groups.append(
            {
                "external_id": group_id,
                "name": name.replace("-", " ").title(),
                "kind": "chat",
                "description": f"The {name.replace('-', ' ')} group chat.",
                "members": [
                    {"user": u, "role": "moderator" if i == 0 else "member"}
                    for i, u in enumerate(members)
                ],
            }
        )
        when = START + timedelta(hours=index)
        thread_start = None
        for n in range(130):
            when += timedelta(minutes=rng.randint(7, 240))
            new_thread = n % 5 == 0
            text = _fill(rng, rng.choice(talk["opener" if new_thread else "reply"]))
            external = f"m-{name}-{n:03d}"
            if new_thread:
                thread_start = external
            messages.append(
                {
                    "external_id": external,
                    "group": group_id,
                    "author": rng.choice(members),
                    "text": text,
                    "reply_to": None if new_thread else thread_start,
                    "created_at": when.isoformat(),
                }
            )
    return groups, messages


POST_TOPICS = DATA["post_topics"]
COMMENTS = DATA["comments"]


def _posts(
    rng: random.Random, users: list[str], groups: list[dict[str, Any]]
) -> tuple[list[Any], list[Any]]:
    posts, comments = [], []
    for n in range(100):
        template, has_image = POST_TOPICS[n % len(POST_TOPICS)]
        group = groups[n % 3] if n % 4 == 0 else None
        pool = [m["user"] for m in group["members"]] if group else users
        when = START + timedelta(hours=7 * n + rng.randint(0, 6))
        posts.append(
            {
                "external_id": f"p-{n:03d}",
                "author": rng.choice(pool),
                "group": group["external_id"] if group else None,
                "text": _fill(rng, template),
                "image_url": f"https://img.example/posts/{n:03d}.jpg" if has_image else None,
                "created_at": when.isoformat(),
            }
        )
        for c in range(rng.randint(0, 5)):
            comments.append(
                {
                    "external_id": f"c-{n:03d}-{c}",
                    "post": f"p-{n:03d}",
                    "author": rng.choice(pool),
                    "text": rng.choice(COMMENTS),
                    "created_at": (when + timedelta(minutes=10 * (c + 1))).isoformat(),
                }
            )
    return posts, comments


FAN_QUESTIONS = DATA["fan_questions"]
A_REPLIES = DATA["a_replies"]
B_REPLIES = DATA["b_replies"]
FAN_THANKS = DATA["fan_thanks"]
DISHES = DATA["dishes"]
PLANTS = DATA["plants"]


def _dms(rng: random.Random, fans: list[str]) -> tuple[list[Any], list[Any]]:
    threads, messages = [], []
    for creator, topics, replies in [
        (CREATOR_A, ["food", "travel"], A_REPLIES),
        (CREATOR_B, ["garden", "wellbeing"], B_REPLIES),
    ]:
        for t in range(26):
            fan = fans[(t * 7 + len(creator)) % len(fans)]
            thread = f"dm-{creator}-{t:02d}"
            threads.append({"external_id": thread, "participants": [f"u-{creator}", fan]})
            when = START + timedelta(days=t % 28, hours=rng.randint(8, 20))
            for k in range(6):
                topic = rng.choice(topics) if k % 3 != 2 else "thanks"
                place = rng.choice(PLACES)[0]
                words = {
                    "dish": rng.choice(DISHES),
                    "plant": rng.choice(PLANTS),
                    "place": place,
                    "fan": fan.removeprefix("u-").capitalize(),
                }
                question = (
                    rng.choice(FAN_THANKS)
                    if topic == "thanks"
                    else rng.choice(FAN_QUESTIONS[topic]).format(**words)
                )
                reply = rng.choice(replies[topic]).format(**words)
                when += timedelta(hours=rng.randint(2, 30))
                messages.append(
                    {
                        "external_id": f"{thread}-{k}q",
                        "thread": thread,
                        "author": fan,
                        "text": question,
                        "created_at": when.isoformat(),
                    }
                )
                messages.append(
                    {
                        "external_id": f"{thread}-{k}r",
                        "thread": thread,
                        "author": f"u-{creator}",
                        "text": reply,
                        "created_at": (when + timedelta(minutes=rng.randint(5, 300))).isoformat(),
                    }
                )
    return threads, messages


CATALOGUE = DATA["catalogue"]
CONDITIONS = DATA["conditions"]


def _listings(rng: random.Random, sellers: list[str]) -> list[dict[str, Any]]:
    rows = []
    categories = list(CATALOGUE)
    for n in range(500):
        category = categories[n % len(categories)]
        spec = CATALOGUE[category]
        item, brand = rng.choice(spec["items"]), rng.choice(spec["brands"])
        condition = rng.choice(CONDITIONS)
        low, high = spec["price"]
        price = round(
            rng.uniform(low, high) * (0.5 if condition in {"fair", "for_parts"} else 1), 0
        )
        place, lat, lon = rng.choice(PLACES)
        extra = {name: rng.choice(values) for name, values in spec["extra"].items()}
        attributes: dict[str, Any] = {"brand": brand, **extra}
        rows.append(
            {
                "external_id": f"l-{n:04d}",
                "seller": rng.choice(sellers),
                "title": f"{brand} {item}"
                if brand not in {"vintage", "handmade"}
                else f"{brand.capitalize()} {item}",
                "attributes": attributes,
                "price": f"{max(price, 1):.2f}",
                "currency": "EUR",
                "category": category,
                "condition": condition,
                "location": place,
                "lat": round(lat + rng.uniform(-0.004, 0.004), 5),
                "lon": round(lon + rng.uniform(-0.004, 0.004), 5),
                "images": [
                    f"https://img.example/listings/{n:04d}-{i}.jpg"
                    for i in range(rng.randint(1, 3))
                ],
                "status": "active" if n % 17 else rng.choice(["sold", "draft"]),
            }
        )
    return rows


REEL_TOPICS = DATA["reel_topics"]


def _reels(
    rng: random.Random, creators: list[str], groups: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    rows = []
    topics = list(REEL_TOPICS)
    for n in range(300):
        topic = topics[n % len(topics)]
        captions, transcript, tags = REEL_TOPICS[topic]
        words = {k: rng.choice(v) for k, v in FILL.items()} | {
            "dish": rng.choice(DISHES),
            "plant": rng.choice(PLANTS),
            "place": rng.choice(PLACES)[0],
        }
        creator = (
            f"u-{CREATOR_A}"
            if topic in {"cooking", "travel"} and n % 2
            else (f"u-{CREATOR_B}" if topic == "gardening" and n % 2 else rng.choice(creators))
        )
        group = groups[n % 3] if n % 10 == 0 else None
        if group is not None and creator not in [m["user"] for m in group["members"]]:
            creator = group["members"][1]["user"]
        rows.append(
            {
                "external_id": f"r-{n:03d}",
                "creator": creator,
                "caption": rng.choice(captions).format(**words),
                "transcript": transcript.format(**words),
                "tags": [*tags, topic],
                "duration_s": float(rng.randint(12, 90)),
                "media_url": f"https://video.example/reels/{n:03d}.mp4",
                "visibility": "group" if group else "public",
                "group": group["external_id"] if group else None,
                "created_at": (START + timedelta(hours=5 * n)).isoformat(),
            }
        )
    return rows


def _interactions(
    rng: random.Random, users: list[str], reels: list[Any], listings: list[Any]
) -> list[Any]:
    rows = []
    public_reels = [r for r in reels if r["visibility"] == "public"]
    for user in users:
        favourite = rng.sample(list(REEL_TOPICS), 2)
        for k in range(45):
            reel = rng.choice(public_reels)
            liked = reel["tags"][-1] in favourite
            action = rng.choices(
                ["view", "like", "save", "hide"],
                weights=[5, 4 if liked else 1, 2 if liked else 0.5, 0.2 if liked else 1],
            )[0]
            rows.append(
                {
                    "external_id": f"i-{user}-r{k}",
                    "user": user,
                    "target_kind": "reel",
                    "target": reel["external_id"],
                    "action": action,
                    "value": reel["duration_s"] * rng.uniform(0.2, 1.0)
                    if action == "view"
                    else None,
                }
            )
        for k in range(15):
            listing = rng.choice(listings)
            if listing["status"] != "active":
                continue
            rows.append(
                {
                    "external_id": f"i-{user}-l{k}",
                    "user": user,
                    "target_kind": "listing",
                    "target": listing["external_id"],
                    "action": rng.choice(["view", "view", "save", "like"]),
                }
            )
    return rows


# kinds dated together: each family is moved so that its newest row is a few minutes old
_TIMELINES = (("messages",), ("posts", "comments"), ("dm-messages",), ("reels",))


def _date_relative_to(rows: dict[str, list[dict[str, Any]]], now: datetime) -> None:
    """Move each timeline so that it ends ten minutes before ``now``: the demo's group chats
    always have messages from the last day (catch-up's default window), whenever it is seeded."""
    for kinds in _TIMELINES:
        dated = [r for kind in kinds for r in rows[kind] if "created_at" in r]
        newest = max(datetime.fromisoformat(r["created_at"]) for r in dated)
        shift = (now - timedelta(minutes=10) - newest) // timedelta(minutes=1)
        for row in dated:
            moved = datetime.fromisoformat(row["created_at"]) + timedelta(minutes=shift)
            row["created_at"] = moved.isoformat()


def town(now: datetime | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every row of the demo town, by kind, in ingestion order, dated up to ``now`` (default:
    the current time)."""
    rng = random.Random(SEED)
    users = _members(rng)
    members = [u["external_id"] for u in users if u["role"] == "member"]
    everyone = [u["external_id"] for u in users]
    groups, messages = _groups(rng, members)
    posts, comments = _posts(rng, everyone, groups)
    threads, dms = _dms(rng, members)
    listings = _listings(rng, members)
    reels = _reels(rng, members, groups)
    rows = {
        "users": users,
        "groups": groups,
        "messages": messages,
        "posts": posts,
        "comments": comments,
        "dm-threads": threads,
        "dm-messages": dms,
        "listings": listings,
        "reels": reels,
        "interactions": _interactions(rng, everyone, reels, listings),
    }
    _date_relative_to(rows, now or datetime.now(UTC))
    return rows


DEMO_LOGINS = ("mia", CREATOR_A, CREATOR_B)


def is_seeded(db: Session) -> bool:
    """Whether the database already has groups (the demo town or real content)."""
    return bool(db.scalar(select(func.count()).select_from(Group)))


def seed(
    db: Session, settings: IngestSettings, progress: Callable[[str, int], None] | None = None
) -> dict[str, str]:
    """Ingest the demo town and return login keys for a few demo users (shown once)."""
    for kind, rows in town().items():
        report = ingest(db, KINDS[kind], rows, settings=settings, actor=None)
        if progress is not None:
            progress(kind, report.created + report.updated + report.unchanged)
    keys = {}
    for name in DEMO_LOGINS:
        user = db.scalar(select(User).where(User.name == name))
        assert user is not None
        keys[name] = issue_key(db, user, label="demo")
    return keys
