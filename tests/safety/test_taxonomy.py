"""The hazard taxonomy and its OpenAI mapping (issue 12, item 1)."""

import pytest

from townsquare.safety.taxonomy import (
    CODES,
    CODES_TO_OPENAI,
    HAZARDS,
    OPENAI_CATEGORIES,
    OPENAI_TO_CODES,
    codes_from_openai,
    openai_from_codes,
    parse_llama_guard,
)


def test_the_codes_are_llama_guards_and_ours() -> None:
    assert tuple(f"S{n}" for n in range(1, 15)) + tuple(f"X{n}" for n in range(1, 6)) == CODES
    assert HAZARDS["S10"].name == "Hate" and HAZARDS["S11"].name == "Suicide & Self-Harm"
    assert HAZARDS["X3"].source == "townsquare"


def test_the_mapping_covers_both_vocabularies() -> None:
    assert set(OPENAI_TO_CODES) == set(OPENAI_CATEGORIES) and len(OPENAI_CATEGORIES) == 13
    assert set(CODES_TO_OPENAI) == set(CODES)
    # every OpenAI category is reported by some code, and every mapped target exists
    reported = {c for cats in CODES_TO_OPENAI.values() for c in cats}
    assert reported <= set(OPENAI_CATEGORIES)
    assert {c for codes in OPENAI_TO_CODES.values() for c in codes} <= set(CODES)
    # a round trip keeps the code for every code OpenAI has a category for
    for code, categories in CODES_TO_OPENAI.items():
        if categories:
            assert code in codes_from_openai(openai_from_codes([code])) or code in {"S3", "S9"}


def test_conversions() -> None:
    assert codes_from_openai({"hate/threatening": True, "sexual": False}) == ["S1", "S10"]
    flags = openai_from_codes(["S11", "X5"])
    assert flags["self-harm"] and sum(flags.values()) == 1
    with pytest.raises(ValueError, match="Z9"):
        openai_from_codes(["Z9"])


@pytest.mark.parametrize(
    ("answer", "parsed"),
    [
        ("safe", (True, [])),
        ("unsafe\nS2,S10", (False, ["S2", "S10"])),
        ("\n unsafe \n S1, s9 \n", (False, ["S1", "S9"])),
        ("unsafe", (False, [])),
        ("unsafe\nS99", (False, [])),
    ],
)
def test_llama_guard_answers(answer: str, parsed: tuple[bool, list[str]]) -> None:
    assert parse_llama_guard(answer) == parsed


def test_a_non_answer_is_refused() -> None:
    with pytest.raises(ValueError, match="not a Llama Guard answer"):
        parse_llama_guard("I cannot help with that")
