from collections.abc import Sequence

import pytest

from townsquare.backends.base import Message
from townsquare.errors import PromptTooLong
from townsquare.features.assistant.service import fit_context, system_prompt


def words(messages: Sequence[Message]) -> int:
    return sum(len(m.content.split()) + 1 for m in messages)


SYSTEM = Message("system", "be kind")


def turns(n: int) -> list[Message]:
    out = []
    for i in range(n):
        out += [Message("user", f"question {i} " * 3), Message("assistant", f"answer {i} " * 3)]
    return out


def test_everything_kept_when_it_fits() -> None:
    history = turns(2)
    new = Message("user", "next")
    assert fit_context(SYSTEM, history, new, count=words, window=100, max_tokens=10) == [
        SYSTEM,
        *history,
        new,
    ]


def test_oldest_turns_dropped_whole_and_history_starts_with_a_question() -> None:
    history = turns(5)  # each message costs 7
    new = Message("user", "next")  # system 3 + new 2 = 5
    kept = fit_context(SYSTEM, history, new, count=words, window=40, max_tokens=10)
    # budget 30: 5 + 3 messages (21) = 26; the oldest kept would be an answer, so it goes too
    assert kept[0] == SYSTEM and kept[-1] == new
    assert kept[1:-1] == history[-2:]
    assert all(m.content.endswith(" ") for m in kept[1:-1])  # never cut mid-message


def test_message_that_cannot_fit_states_the_limit() -> None:
    with pytest.raises(PromptTooLong, match="only 10 fit"):
        fit_context(SYSTEM, [], Message("user", "x " * 50), count=words, window=20, max_tokens=10)


def test_persona_is_part_of_the_system_prompt() -> None:
    assert "You are a pirate." in system_prompt("You are a pirate.")
    assert "townsquare assistant" in system_prompt(None)


def test_history_budget_keeps_every_turns_prompt_bounded() -> None:
    new = Message("user", "next")
    long = turns(200)  # far more than the window could hold
    kept = fit_context(
        SYSTEM, long, new, count=words, window=100_000, max_tokens=10, history_tokens=60
    )
    assert kept[0] == SYSTEM and kept[-1] == new
    assert words(kept[1:-1]) <= 60
    assert kept[1].role == "user" and kept[-2] == long[-1]  # the most recent turns stay


def test_a_long_conversation_sends_a_bounded_prompt(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from tests.conftest import _close, add_user, auth, make_settings
    from townsquare.app import create_app
    from townsquare.backends.fake import FakeText
    from townsquare.services import Services

    fake = FakeText(context_window=100_000)
    services = Services.build(
        make_settings(tmp_path, assistant={"tool_mode": "off", "history_tokens": 300}), text=fake
    )
    key = add_user(services, "talker")
    sizes = []
    with TestClient(create_app(services=services)) as client:
        cid = client.post("/api/conversations", json={}, headers=auth(key)).json()["id"]
        for turn in range(40):
            fake.enqueue("a fairly long answer " * 20)
            response = client.post(
                f"/api/conversations/{cid}/messages",
                json={"content": f"question {turn} " * 10},
                headers=auth(key),
            )
            assert response.status_code == 200
            sizes.append(fake.count_message_tokens(fake.calls[-1][0]))
    _close(services)
    assert max(sizes) <= 300 + sizes[0] + 10  # the history budget plus system and question
    assert sizes[-1] <= sizes[10] * 1.2  # flat, not growing with the conversation
