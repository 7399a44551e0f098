"""Every route of the app, called as every persona, against the access rule it declares.

Each route declares ``openapi_extra={"x-access": RULE}``. A route without one, or with a rule
this table does not know, fails the test: a new route cannot slip in without a decision about
who may call it. Writes run on a fresh copy of the town so that one persona's delete cannot
change what the next one sees.
"""

from __future__ import annotations

import asyncio
import io
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from starlette.routing import Mount, Route

from tests.conftest import auth, copy_database, drop_database, make_settings
from tests.town import build_town
from townsquare.app import create_app
from townsquare.backends.fake import FakeText
from townsquare.safety import redteam
from townsquare.services import Services
from townsquare.storage.social_tables import Webhook, WebhookDelivery

PERSONAS = ("anonymous", "member", "outsider", "creator", "moderator", "admin")
OK = "ok"

# rule -> persona -> expected outcome ("ok" = 2xx/3xx, or an exact status)
RULES: dict[str, dict[str, int | str]] = {
    "public": dict.fromkeys(PERSONAS, OK),
    "authenticated": {**dict.fromkeys(PERSONAS, OK), "anonymous": 401},
    "admin": {**dict.fromkeys(PERSONAS, 403), "anonymous": 401, "admin": OK},
    # the conversation belongs to the member; even admins do not read private chats
    "owner": {**dict.fromkeys(PERSONAS, 404), "anonymous": 401, "member": OK},
    # the generation (the member's description draft) was made for the member: only they rate it
    "generation-owner": {**dict.fromkeys(PERSONAS, 404), "anonymous": 401, "member": OK},
    # g1 has the member and the moderator; p1 and r1 are g1's
    "group-member": {
        "anonymous": 401,
        "member": OK,
        "outsider": 404,
        "creator": 404,
        "moderator": OK,
        "admin": OK,
    },
    "group-moderator": {
        "anonymous": 401,
        "member": 403,
        "outsider": 404,
        "creator": 404,
        "moderator": OK,
        "admin": OK,
    },
    "post-viewer": {
        "anonymous": 401,
        "member": OK,
        "outsider": 404,
        "creator": 404,
        "moderator": OK,
        "admin": OK,
    },
    "reel-viewer": {
        "anonymous": 401,
        "member": OK,
        "outsider": 404,
        "creator": 404,
        "moderator": OK,
        "admin": OK,
    },
    # t1 is between the creator and the member
    "dm-participant": {
        "anonymous": 401,
        "member": OK,
        "outsider": 404,
        "creator": OK,
        "moderator": 404,
        "admin": OK,
    },
    # l1 is the member's draft
    "listing-viewer": {
        "anonymous": 401,
        "member": OK,
        "outsider": 404,
        "creator": 404,
        "moderator": 404,
        "admin": OK,
    },  # only l1's seller (the member) and admins; others cannot even see the draft listing
    "listing-seller": {
        "anonymous": 401,
        "member": OK,
        "outsider": 404,
        "creator": 404,
        "moderator": 404,
        "admin": OK,
    },
    # t1 is between the creator and the member: only the creator (and admins) get replies
    "dm-creator": {
        "anonymous": 401,
        "member": 403,
        "outsider": 404,
        "creator": OK,
        "moderator": 404,
        "admin": OK,
    },
    "creator": {**dict.fromkeys(PERSONAS, 403), "anonymous": 401, "creator": OK, "admin": OK},
    # the image was made by the member in g1: its members see and remix it
    "image-viewer": {
        "anonymous": 401,
        "member": OK,
        "outsider": 404,
        "creator": 404,
        "moderator": OK,
        "admin": OK,
    },
    # ...and its author, g1's moderator and admins may delete it
    "image-author": {
        "anonymous": 401,
        "member": OK,
        "outsider": 404,
        "creator": 404,
        "moderator": OK,
        "admin": OK,
    },
    # a signed link is its own permission: without a valid signature everyone is refused
    "signed-url": dict.fromkeys(PERSONAS, 403),
}
# Framework routes with no handler of ours: the API docs and static files.
FRAMEWORK = {"/openapi.json", "/docs/oauth2-redirect", "/static", "/static/swagger-ui"}

PATH_VALUES = {
    "group_id": "g1",
    "message_id": "m1",
    "post_id": "p1",
    "thread_id": "t1",
    "listing_id": "l1",
    "reel_id": "r1",
}
EXISTING = {
    "users": "u-extra",
    "groups": "g1",
    "messages": "m1",
    "posts": "p1",
    "comments": "c1",
    "dm-threads": "t1",
    "dm-messages": "d1",
    "listings": "l1",
    "reels": "r1",
    "interactions": "i1",
}
EXAMPLES: dict[str, dict[str, Any]] = {
    "users": {"name": "newbie"},
    "groups": {"name": "New group", "members": [{"user": "u-member"}]},
    "messages": {"group": "g1", "author": "u-member", "text": "hello"},
    "posts": {"author": "u-member", "text": "hello"},
    "comments": {"post": "p1", "author": "u-member", "text": "hi"},
    "dm-threads": {"participants": ["u-member", "u-outsider"]},
    "dm-messages": {"thread": "t1", "author": "u-member", "text": "hi"},
    "listings": {"seller": "u-member", "title": "Lamp", "price": "5", "category": "home"},
    "reels": {"creator": "u-member", "duration_s": 5, "media_url": "https://v/x.mp4"},
    "interactions": {
        "user": "u-member",
        "target_kind": "reel",
        "target": "r-public",
        "action": "view",
    },
}
BODIES = {
    ("POST", "/api/conversations"): {"title": "x"},
    ("POST", "/api/conversations/{conversation_id}/messages"): {"content": "hi"},
    ("POST", "/v1/chat/completions"): {
        "model": "fake",
        "messages": [{"role": "user", "content": "hi"}],
    },
    ("POST", "/v1/embeddings"): {"model": "fake-embed", "input": "kids bike"},
    ("POST", "/api/posts/{post_id}/comment-suggestions"): {"count": 2},
    ("POST", "/api/search/summary"): {"query": "bike"},
    ("POST", "/api/generations/{generation_id}/feedback"): {"rating": "up"},
    ("POST", "/api/groups/{group_id}/topic-suggestions"): {"count": 2},
    ("PUT", "/api/moderation/policy"): {"rules": {"X5": {"action": "warn"}}},
    ("PUT", "/api/groups/{group_id}/moderation-policy"): {"rules": {"X5": {"action": "allow"}}},
    ("POST", "/v1/moderations"): {"input": "hello"},
    ("POST", "/api/redteam/runs"): {"suite": "quick"},
    ("PUT", "/api/groups/{group_id}/assistant"): {"name": "baker"},
    ("POST", "/api/groups/{group_id}/messages"): {"text": "hello"},
    # a public address written as an IP: no DNS lookup. Plain http: a delivery attempt cut
    # by the app stopping mid TLS handshake leaves its socket to the garbage collector
    # (httpcore closes it only on Exception, not on cancellation): a ResourceWarning later
    ("POST", "/api/webhooks"): {"url": "http://93.184.216.34/hook"},
    ("POST", "/api/imagine"): {"prompt": "a red bike"},
    ("POST", "/api/images/{image_id}/reimagine"): {"prompt": "make it blue"},
    ("POST", "/v1/images/generations"): {"prompt": "a red bike"},
}
# the web pages' form posts (bearer-key callers need no CSRF token)
FORMS = {
    ("POST", "/groups/{group_id}/messages"): {"text": "hello"},
    ("POST", "/posts/{post_id}/comments"): {"text": "hi"},
    ("POST", "/inbox/{thread_id}/messages"): {"text": "hi"},
    ("POST", "/imagine"): {"prompt": "a red bike"},
    ("POST", "/images/{image_id}/reimagine"): {"prompt": "make it blue"},
    ("POST", "/feedback/{generation_id}"): {"rating": "up"},
    ("POST", "/admin/users"): {"name": "newbie"},
}
QUERIES = {
    "/market/summary": {"q": "bike"},
    "/api/listings/search": {"q": "bike"},
    "/api/search/sources": {"q": "bike"},
    "/api/reels/recommendations": {"context": "baking"},
    "/api/groups/{group_id}/catch-up": {"since": "2000-01-01T00:00:00Z"},
    "/api/groups/{group_id}/events": {"max_s": 0},  # the stream ends at once
}


def all_routes(app: FastAPI) -> list[tuple[str, str, str | None]]:
    """(method, path, declared rule) for every route, including those of included routers."""
    found: list[tuple[str, str, str | None]] = []

    def walk(routes: list[Any], prefix: str) -> None:
        for route in routes:
            if hasattr(route, "original_router"):  # FastAPI's lazily included routers
                walk(route.original_router.routes, prefix + route.include_context.prefix)
            elif isinstance(route, Mount):
                found.append(("MOUNT", prefix + route.path, None))
            elif isinstance(route, Route) or hasattr(route, "methods"):
                rule = (getattr(route, "openapi_extra", None) or {}).get("x-access")
                for method in sorted(set(route.methods or ()) - {"HEAD"}):
                    found.append((method, prefix + route.path, rule))

    walk(app.router.routes, "")
    return found


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    directory = tmp_path_factory.mktemp("town")
    services = Services.build(make_settings(directory), text=FakeText())
    keys = build_town(services)
    with TestClient(create_app(services=services)) as client:
        conversation = client.post("/api/conversations", json={}, headers=auth(keys["member"]))
        keys["conversation_id"] = str(conversation.json()["id"])
        draft = client.post("/api/listings/l1/description", json={}, headers=auth(keys["member"]))
        keys["generation_id"] = str(draft.json()["generation_id"])
        image = client.post(
            "/api/imagine",
            json={"prompt": "a bike", "group_id": "g1"},
            headers=auth(keys["member"]),
        )
        keys["image_id"] = image.json()["data"][0]["id"]
    with services.sessions.begin() as db:
        hook = Webhook(url="http://93.184.216.34/hook", secret="s" * 32, events=["x"])
        db.add(hook)
        db.flush()
        delivery = WebhookDelivery(
            webhook_id=hook.id, event="x", payload={}, status="dead", attempts=3, last_error=""
        )
        db.add(delivery)
        db.flush()
        keys["webhook_id"], keys["delivery_id"] = str(hook.id), str(delivery.id)
    run_id = redteam.start(services.sessions, "quick", "matrix")
    redteam.finish(services.sessions, run_id, redteam.summarise([], suite="quick", target="x"))
    keys["run_id"] = str(run_id)
    keys["__database_url"] = services.settings.resolved_database_url
    asyncio.run(services.aclose())
    return directory, keys


def town_copy(template: Path, target: Path, database_url: str) -> Services:
    """A copy of the template town: its files, and its database (the SQLite file, or a
    PostgreSQL database cloned from the template's)."""
    for name in ("townsquare.db", "townsquare.db-wal", "townsquare.db-shm", "watermark.key"):
        if (template / name).exists():
            shutil.copy(template / name, target / name)
    shutil.copytree(template / "blobs", target / "blobs")
    overrides: dict[str, Any] = {}
    if database_url.startswith("postgresql"):
        url = copy_database(database_url)
        overrides = {"database_url": url, "search": {"vector_index": f"pgvector:{url}"}}
    return Services.build(make_settings(target, **overrides), text=FakeText())


def plain_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (256, 256), (120, 130, 140)).save(buffer, "PNG")
    return buffer.getvalue()


def request_for(method: str, path: str, keys: dict[str, str]) -> tuple[str, dict[str, Any]]:
    kind = path.split("/")[2].split(":")[0] if path.startswith("/api/") else ""
    values = {
        **PATH_VALUES,
        "conversation_id": keys["conversation_id"],
        "generation_id": keys["generation_id"],
        "run_id": keys["run_id"],
        "webhook_id": keys["webhook_id"],
        "delivery_id": keys["delivery_id"],
        "image_id": keys["image_id"],
        "name": keys["image_id"] + ".png",
        "external_id": EXISTING.get(kind, "x") if method == "DELETE" else "new-1",
        "user_id": "1",
        "key_id": "1",
    }
    url = re.sub(r"{(\w+)}", lambda m: values[m.group(1)], path)
    kwargs: dict[str, Any] = {}
    if path.endswith(":batch"):
        kwargs["json"] = [{"external_id": "new-1", **EXAMPLES[kind]}]
    elif path.endswith("/style") and method == "PUT":
        kwargs["json"] = {"enabled": True}
    elif (method, path) in BODIES:
        kwargs["json"] = BODIES[(method, path)]
    elif method == "PUT":
        kwargs["json"] = EXAMPLES[kind]
    elif (method, path) in FORMS:
        kwargs["data"] = FORMS[(method, path)]
    elif path == "/market/{listing_id}/accept":
        kwargs["data"] = {
            "generation_id": keys["generation_id"],
            "title": "Sofa",
            "description": "A sofa.",
        }
    elif path == "/admin/provenance":
        kwargs["files"] = {"file": ("plain.png", plain_png(), "image/png")}
    elif path.endswith("/description/accept"):
        kwargs["json"] = {"generation_id": int(keys["generation_id"])}
    elif path.endswith("/description"):
        kwargs["json"] = {}
    elif path in QUERIES:
        kwargs["params"] = QUERIES[path]
    elif path == "/api/provenance/detect":
        kwargs["files"] = {"file": ("plain.png", plain_png(), "image/png")}
    elif path == "/v1/images/edits":
        kwargs["files"] = {"image": ("plain.png", plain_png(), "image/png")}
        kwargs["data"] = {"prompt": "make it blue"}
    elif (method, path) == ("POST", "/login"):
        # the login form's CSRF token is its cookie's value, echoed in the form
        kwargs["data"] = {"key": keys.get("__persona_key", "ts_wrong"), "csrf_token": "t" * 32}
        kwargs["headers"] = {"Cookie": "townsquare_login=" + "t" * 32}
    return url, kwargs


def routes_to_check() -> list[tuple[str, str, str | None]]:
    app = create_app(make_settings(Path("unused")))  # services are built only at start-up
    return [r for r in all_routes(app) if r[1] not in FRAMEWORK]


ROUTES = routes_to_check()


def test_every_route_declares_a_known_rule() -> None:
    missing = [f"{m} {p}" for m, p, rule in ROUTES if rule is None]
    unknown = [
        f"{m} {p}: {rule}" for m, p, rule in ROUTES if rule is not None and rule not in RULES
    ]
    assert missing == [], "routes without openapi_extra={'x-access': ...}"
    assert unknown == []
    assert len(ROUTES) > 50  # the walk really found the included routers


@pytest.fixture
def open_client(template: tuple[Path, dict[str, str]], tmp_path: Path) -> Iterator[Any]:
    """Opens a client on a fresh copy of the town."""
    directory, keys = template
    opened: list[tuple[Services, TestClient]] = []

    def open_one() -> TestClient:
        target = tmp_path / str(len(opened))
        target.mkdir()
        services = town_copy(directory, target, keys["__database_url"])
        client = TestClient(create_app(services=services), follow_redirects=False)
        client.__enter__()
        opened.append((services, client))
        return client

    yield open_one
    for services, client in opened:
        client.__exit__(None, None, None)
        asyncio.run(services.aclose())
        if services.settings.database_url:
            drop_database(services.settings.database_url)


@pytest.mark.parametrize(("method", "path", "rule"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_route_answers_each_persona_as_its_rule_says(
    open_client: Any, template: tuple[Path, dict[str, str]], method: str, path: str, rule: str
) -> None:
    _, keys = template
    shared = open_client()  # reads, and requests that must be refused, cannot change the town
    failures = []
    for persona in PERSONAS:
        expected = RULES[rule][persona]
        if (method, path) == ("POST", "/login") and persona == "anonymous":
            expected = 401  # a wrong key is refused; that is the public page working
        # a write that should succeed gets a town of its own
        client = shared if method == "GET" or expected != OK else open_client()
        url, kwargs = request_for(
            method, path, {**keys, "__persona_key": keys.get(persona, "ts_wrong")}
        )
        headers = auth(keys[persona]) if persona != "anonymous" else {}
        headers.update(kwargs.pop("headers", {}))
        response = client.request(method, url, headers=headers, **kwargs)
        ok = response.status_code < 400 if expected == OK else response.status_code == expected
        if not ok:
            failures.append(
                f"{persona}: {response.status_code} (expected {expected}) {response.text[:160]}"
            )
    assert failures == []
