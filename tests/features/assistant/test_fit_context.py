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
