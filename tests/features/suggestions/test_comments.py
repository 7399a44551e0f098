"""Comment suggestions: logic with the fake backend, and end to end with the real model."""

from collections.abc import Sequence
from typing import ClassVar

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.conftest import auth, make_settings
from tests.town import build_town
from townsquare.app import create_app
from townsquare.backends.base import Message
from townsquare.backends.fake import FakeText
from townsquare.backends.llamacpp import LlamaCppText
from townsquare.features.suggestions.service import clean
from townsquare.safety.pipeline import Context, Decision, LengthPolicy, SafetyPolicy
from townsquare.services import Services
from townsquare.storage.social_tables import Generation


class NoPills(SafetyPolicy):
    name: ClassVar[str] = "no-pills"

    def check_input(self, messages: Sequence[Message], context: Context) -> Decision:
        return Decision.allow()

    def check_output(self, text: str, context: Context, *, final: bool) -> Decision:
        return Decision(False, ("S7",)) if "PILLS" in text else Decision.allow()


def test_clean_drops_repeats_and_echoes() -> None:
    kept, dropped = clean(
        ["Nice!", "nice", " Bakers only ", "Love it", "So good", '"Wow"'], "Bakers only", 3
    )
    assert kept == ["Nice!", "Love it", "So good"]
    assert dropped == 3


@pytest.fixture
def town(tmp_path) -> tuple[TestClient, dict[str, str], FakeText, Services]:  # type: ignore[misc]
    fake = FakeText()
    services = Services.build(
        make_settings(tmp_path), text=fake, policies=[LengthPolicy(16000, 16000), NoPills()]
    )
    keys = build_town(services)
    with TestClient(create_app(services=services)) as client:
        yield client, keys, fake, services


def test_unsafe_and_repeated_suggestions_are_dropped(town) -> None:  # type: ignore[no-untyped-def]
    client, keys, fake, services = town
    fake.enqueue(
        '{"comments": ["Welcome aboard!", "BUY CHEAP PILLS", "welcome aboard", "Glad you are here"]}'
    )
    response = client.post(
        "/api/posts/p1/comment-suggestions",
        json={"count": 3, "tone": "supportive"},
        headers=auth(keys["member"]),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["suggestions"] == ["Welcome aboard!", "Glad you are here"]
    assert body["dropped"] == 2
    system = fake.calls[-1][0][0].content
    assert "3 different comments in English" in system and "warm and encouraging" in system
    with services.sessions() as db:
        row = db.get(Generation, body["generation_id"])
    assert (
        row is not None and row.first_try_valid and row.output["suggestions"] == body["suggestions"]
    )


def test_invalid_output_is_retried_once_then_a_clear_502(town) -> None:  # type: ignore[no-untyped-def]
    client, keys, fake, services = town
    fake.enqueue('{"wrong": 1}', '{"comments": ["Second try works"]}')
    ok = client.post(
        "/api/posts/p1/comment-suggestions", json={"count": 1}, headers=auth(keys["member"])
    ).json()
    assert ok["suggestions"] == ["Second try works"]
    with services.sessions() as db:
        row = db.get(Generation, ok["generation_id"])
    assert row is not None and (row.attempts, row.first_try_valid) == (2, False)
    fake.enqueue("not json", '{"comments": []}')
    failed = client.post(
        "/api/posts/p1/comment-suggestions", json={"count": 1}, headers=auth(keys["member"])
    )
    assert failed.status_code == 502
    assert failed.json()["error"]["code"] == "invalid_output"
    assert "bigger model" in failed.json()["error"]["message"]


def test_bad_requests(town) -> None:  # type: ignore[no-untyped-def]
    client, keys, _, _ = town
    for count in (0, 6):
        response = client.post(
            "/api/posts/p1/comment-suggestions", json={"count": count}, headers=auth(keys["member"])
        )
        assert response.status_code == 422 and response.json()["error"]["field"] == "count"
    tone = client.post(
        "/api/posts/p1/comment-suggestions",
        json={"tone": "sarcastic"},
        headers=auth(keys["member"]),
    )
    assert tone.status_code == 422
    assert (
        client.post(
            "/api/posts/p1/comment-suggestions", json={}, headers=auth(keys["outsider"])
        ).status_code
        == 404
    )


@pytest.mark.model
def test_real_model_end_to_end(tmp_path, real_text: LlamaCppText) -> None:
    services = Services.build(make_settings(tmp_path), text=real_text)
    keys = build_town(services)
    with TestClient(create_app(services=services)) as client:
        response = client.post(
            "/api/posts/p-public/comment-suggestions",
            json={"count": 3, "tone": "curious"},
            headers=auth(keys["member"]),
        )
        assert response.status_code == 200, response.text
        body = response.json()
        # the 135M model sometimes only echoes the post: such answers are dropped, by design
        assert len(body["suggestions"]) + body["dropped"] >= 1
        assert len(body["suggestions"]) <= 3
        assert all(isinstance(s, str) and s.strip() for s in body["suggestions"])
        assert len({s.lower() for s in body["suggestions"]}) == len(body["suggestions"])
        assert all(s.strip(" !.").lower() != "hello town" for s in body["suggestions"])
        assert (
            client.post(
                "/api/posts/p1/comment-suggestions", json={}, headers=auth(keys["creator"])
            ).status_code
            == 404
        )
    with services.sessions() as db:
        generation = db.scalars(select(Generation)).one()
    assert generation.model == real_text.model_id and generation.feature == "comment_suggestions"


async def test_a_post_with_nothing_to_comment_on_is_422(services: Services) -> None:
    from townsquare.errors import InvalidField
    from townsquare.features.suggestions.schemas import CommentRequest
    from townsquare.features.suggestions.service import suggest_comments
    from townsquare.storage.social_tables import Post
    from townsquare.storage.tables import User

    empty = Post(external_id="p-empty", author_id=1, text="  ", image_url=None)
    with services.sessions() as db, pytest.raises(InvalidField) as info:
        await suggest_comments(
            db,
            services.sessions,
            User(id=1, name="x", role="member"),
            empty,
            CommentRequest(),
            text=services.guarded_text,
        )
    assert info.value.field == "post" and "neither text nor an image" in info.value.message


def test_the_core_suggests_the_towns_own_comments_on_similar_posts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """writing="core": comments members actually left on the posts most like this one."""
    from townsquare.social.demo import seed
    from townsquare.storage.social_tables import Comment, Post

    fake = FakeText()
    services = Services.build(make_settings(tmp_path, writing="core"), text=fake)
    with services.sessions.begin() as db:
        keys = seed(db, services.settings.ingest)
    services.indexer.sync_all()
    with services.sessions() as db:
        said = set(db.scalars(select(Comment.text)))
        post = db.scalar(select(Post).where(Post.group_id.is_(None)).limit(1))
        assert post is not None
        post_id = post.external_id
    member = next(k for name, k in keys.items() if name not in {"sol.rivera", "dr.amelia.hart"})
    with TestClient(create_app(services=services)) as client:
        found = client.post(
            f"/api/posts/{post_id}/comment-suggestions",
            json={"count": 3, "tone": "curious"},
            headers=auth(member),
        )
    assert found.status_code == 200, found.text
    suggestions = found.json()["suggestions"]
    assert len(suggestions) == 3 and len(set(suggestions)) == 3
    assert set(suggestions) <= said and fake.calls == []
    if any(s.endswith("?") for s in said):  # the curious tone puts questions first
        assert suggestions[0].endswith("?")
