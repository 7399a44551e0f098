import json
from collections.abc import Sequence
from typing import ClassVar

import pytest
from sqlalchemy import select

from townsquare.backends.base import GenerationOptions, Message
from townsquare.backends.fake import FakeText
from townsquare.errors import ContentBlocked
from townsquare.safety.pipeline import Context, Decision, LengthPolicy, SafetyPolicy
from townsquare.services import Services
from townsquare.settings import Settings
from townsquare.storage.tables import SafetyEventRow


class BlockWord(SafetyPolicy):
    """Blocks any input or output containing ``word`` (a test policy)."""

    name: ClassVar[str] = "block-word"

    def __init__(self, word: str) -> None:
        self.word = word

    def check_input(self, messages: Sequence[Message], context: Context) -> Decision:
        if any(self.word in m.content for m in messages):
            return Decision(False, ("S1",), f"'{self.word}' is not allowed here.")
        return Decision.allow()

    def check_output(self, text: str, context: Context, *, final: bool) -> Decision:
        return Decision(False, ("S2",)) if self.word in text else Decision.allow()


def test_length_policy() -> None:
    policy = LengthPolicy(max_input_chars=10, max_output_chars=5)
    context = Context("test")
    assert policy.check_input([Message("user", "short")], context).allowed
    blocked = policy.check_input([Message("user", "much too long")], context)
    assert not blocked.allowed and blocked.hazards == ("length",)
    assert policy.check_input([Message("user", "a\x00b")], context).hazards == ("format",)
    assert policy.check_input([Message("user", "a\nb\tc")], context).allowed
    assert not policy.check_output("123456", context, final=False).allowed


async def test_blocked_input_never_reaches_the_backend_and_is_audited(
    settings: Settings, fake_text: FakeText
) -> None:
    services = Services.build(settings, text=fake_text, policies=[BlockWord("pills")])
    with pytest.raises(ContentBlocked) as info:
        await services.guarded_text.complete(
            [Message("user", "buy pills")], GenerationOptions(), Context("test", user_id=4)
        )
    assert info.value.hazards == ["S1"]
    assert fake_text.calls == []
    services.audit_writer.flush()  # refusals are written by a thread of their own
    with services.sessions() as db:
        row = db.scalars(select(SafetyEventRow)).one()
    assert (row.stage, row.feature, row.user_id, json.loads(row.hazards)) == (
        "input",
        "test",
        4,
        ["S1"],
    )
    await services.aclose()


async def _streamed_until_blocked(services: Services, fake: FakeText, reply: str) -> str:
    fake.enqueue(reply)
    seen = []
    with pytest.raises(ContentBlocked):
        async for delta in services.guarded_text.stream(
            [Message("user", "hi")], GenerationOptions(), Context("test")
        ):
            seen.append(delta.text)
    return "".join(seen)


async def test_stream_stops_before_the_blocked_delta(
    settings: Settings, fake_text: FakeText
) -> None:
    settings.safety.stream_check_chars = 1  # every delta
    services = Services.build(settings, text=fake_text, policies=[BlockWord("PILLS")])
    seen = await _streamed_until_blocked(services, fake_text, "hello there BUY CHEAP PILLS now")
    assert seen == "hello there BUY CHEAP"
    await services.aclose()


async def test_stream_checks_every_n_characters_and_at_the_end(
    settings: Settings, fake_text: FakeText
) -> None:
    settings.safety.stream_check_chars = 12
    services = Services.build(settings, text=fake_text, policies=[BlockWord("PILLS")])
    seen = await _streamed_until_blocked(services, fake_text, "hello there BUY CHEAP PILLS now")
    # checked at 12 characters ("hello there ") and again 12 later: never past the word + 12
    assert "PILLS" not in seen and seen.startswith("hello there")
    # shorter than one window: the final check catches it
    assert "PILLS" not in await _streamed_until_blocked(services, fake_text, "a short PILLS")
    await services.aclose()


async def test_admins_read_the_moderation_log_by_code_and_group(
    settings: Settings, fake_text: FakeText
) -> None:
    from fastapi.testclient import TestClient

    from tests.conftest import add_user, auth
    from townsquare.app import create_app

    services = Services.build(settings, text=fake_text, policies=[BlockWord("pills")])
    admin, member = add_user(services, "ada", role="admin"), add_user(services, "mo")
    for group_id in (None, 7):
        with pytest.raises(ContentBlocked):
            await services.guarded_text.complete(
                [Message("user", "buy pills")],
                GenerationOptions(),
                Context("comment_suggestions", user_id=1, group_id=group_id),
            )
    services.audit_writer.flush()
    with TestClient(create_app(services=services)) as client:
        log = client.get("/api/moderation/log", headers=auth(admin)).json()["data"]
        assert [(e["feature"], e["stage"], e["hazards"]) for e in log] == [
            ("comment_suggestions", "input", ["S1"])
        ] * 2
        assert log[0]["user"] == "ada" and log[0]["id"] > log[1]["id"]
        assert client.get("/api/moderation/log?code=S10", headers=auth(admin)).json()["data"] == []
        paged = client.get(
            f"/api/moderation/log?before_id={log[0]['id']}", headers=auth(admin)
        ).json()["data"]
        assert [e["id"] for e in paged] == [log[1]["id"]]
        bad = client.get("/api/moderation/log?code=Z1", headers=auth(admin))
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "code"
        assert client.get("/api/moderation/log", headers=auth(member)).status_code == 403
    with services.sessions() as db:
        groups = {r.group_id for r in db.scalars(select(SafetyEventRow))}
    assert groups == {None, 7}
    await services.aclose()
