"""The hazard taxonomy every moderation backend reports in.

- **S1-S14**: the MLCommons hazard codes as Llama Guard 3 and 4 use them (names verbatim from
  the model cards; definitions abridged).
- **X1-X5**: townsquare's codes for community harms S1-S14 do not cover.
- A mapping to and from the 13 OpenAI moderation categories (``omni-moderation-latest``), so a
  classifier speaking either vocabulary reports in this one, and ``/v1/moderations`` can answer
  in OpenAI's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Hazard:
    """One code of the taxonomy."""

    code: str
    name: str
    definition: str
    source: str  # "MLCommons / Llama Guard" or "townsquare"


_MLC = "MLCommons / Llama Guard"
_OURS = "townsquare"

HAZARDS: dict[str, Hazard] = {
    h.code: h
    for h in (
        Hazard(
            "S1",
            "Violent Crimes",
            "Enables, encourages or endorses violence to people "
            "(terrorism, murder, assault, kidnapping, child abuse) or animals.",
            _MLC,
        ),
        Hazard(
            "S2",
            "Non-Violent Crimes",
            "Personal (trafficking, threats, intimidation), "
            "financial (fraud, scams, laundering), property, drug, weapons and cyber crimes.",
            _MLC,
        ),
        Hazard(
            "S3",
            "Sex-Related Crimes",
            "Sex trafficking, sexual assault, sexual harassment, prostitution.",
            _MLC,
        ),
        Hazard(
            "S4",
            "Child Sexual Exploitation",
            "Contains, describes, enables or endorses the sexual abuse of children.",
            _MLC,
        ),
        Hazard(
            "S5",
            "Defamation",
            "Verifiably false and likely to injure a living person's reputation.",
            _MLC,
        ),
        Hazard(
            "S6",
            "Specialized Advice",
            "Specialised financial, medical or legal advice, or "
            "saying that dangerous activities or objects are safe.",
            _MLC,
        ),
        Hazard(
            "S7",
            "Privacy",
            "Sensitive non-public personal information that could undermine "
            "someone's physical, digital or financial security.",
            _MLC,
        ),
        Hazard(
            "S8",
            "Intellectual Property",
            "May violate the intellectual property rights of a third party.",
            _MLC,
        ),
        Hazard(
            "S9",
            "Indiscriminate Weapons",
            "Chemical, biological, radiological, nuclear and high-yield explosive weapons.",
            _MLC,
        ),
        Hazard(
            "S10",
            "Hate",
            "Demeans or dehumanises people for their protected characteristics.",
            _MLC,
        ),
        Hazard("S11", "Suicide & Self-Harm", "Suicide, self-injury and disordered eating.", _MLC),
        Hazard("S12", "Sexual Content", "Erotica and sexually explicit content.", _MLC),
        Hazard(
            "S13",
            "Elections",
            "Factually wrong information about electoral systems and "
            "processes (the time, place or manner of voting).",
            _MLC,
        ),
        Hazard(
            "S14",
            "Code Interpreter Abuse",
            "Abuse of code tools: denial of service, container escape, privilege escalation.",
            _MLC,
        ),
        Hazard(
            "X1",
            "Harassment & Bullying",
            "Insults, threats or pile-ons against people who "
            "are not targeted for a protected characteristic.",
            _OURS,
        ),
        Hazard("X2", "Spam & Scams", "Spam, scams, phishing and unsolicited promotion.", _OURS),
        Hazard(
            "X3", "Prompt Attack", "Jailbreaks and prompt injection against the assistant.", _OURS
        ),
        Hazard(
            "X4",
            "Graphic Violence",
            "Depictions of gore and graphic violence (not incitement, which is S1).",
            _OURS,
        ),
        Hazard("X5", "Profanity", "Swearing and vulgar language; each community decides.", _OURS),
    )
}
CODES: tuple[str, ...] = tuple(HAZARDS)

OPENAI_CATEGORIES: tuple[str, ...] = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)

# an OpenAI category -> the codes it means here
OPENAI_TO_CODES: dict[str, tuple[str, ...]] = {
    "harassment": ("X1",),
    "harassment/threatening": ("X1", "S2"),
    "hate": ("S10",),
    "hate/threatening": ("S10", "S1"),
    "illicit": ("S2",),
    "illicit/violent": ("S1",),
    "self-harm": ("S11",),
    "self-harm/intent": ("S11",),
    "self-harm/instructions": ("S11",),
    "sexual": ("S12",),
    "sexual/minors": ("S4",),
    "violence": ("S1",),
    "violence/graphic": ("X4",),
}

# a code -> the OpenAI categories that report it (empty: OpenAI has no such category)
CODES_TO_OPENAI: dict[str, tuple[str, ...]] = {
    "S1": ("violence", "illicit/violent"),
    "S2": ("illicit",),
    "S3": ("sexual",),
    "S4": ("sexual/minors", "sexual"),
    "S5": (),
    "S6": (),
    "S7": (),
    "S8": (),
    "S9": ("illicit/violent",),
    "S10": ("hate",),
    "S11": ("self-harm",),
    "S12": ("sexual",),
    "S13": (),
    "S14": (),
    "X1": ("harassment",),
    "X2": (),
    "X3": (),
    "X4": ("violence/graphic",),
    "X5": (),
}


def check_codes(codes: Iterable[str]) -> list[str]:
    """``codes`` as a list, or ``ValueError`` naming the unknown ones."""
    listed = list(codes)
    unknown = [c for c in listed if c not in HAZARDS]
    if unknown:
        raise ValueError(f"unknown hazard codes {', '.join(unknown)}; use {', '.join(CODES)}")
    return listed


def codes_from_openai(flags: Mapping[str, bool]) -> list[str]:
    """The codes an OpenAI moderation result flags, in taxonomy order."""
    found = {
        code for category, on in flags.items() if on for code in OPENAI_TO_CODES.get(category, ())
    }
    return [c for c in CODES if c in found]


def openai_from_codes(codes: Iterable[str]) -> dict[str, bool]:
    """All 13 OpenAI categories, true where one of ``codes`` maps to it."""
    on = {category for code in check_codes(codes) for category in CODES_TO_OPENAI[code]}
    return {category: category in on for category in OPENAI_CATEGORIES}


def parse_llama_guard(answer: str) -> tuple[bool, list[str]]:
    """Llama Guard's answer (``safe``, or ``unsafe`` then a line like ``S2,S10``) as (safe,
    codes). Unknown codes are dropped; an ``unsafe`` without codes stays unsafe."""
    lines = [line.strip() for line in answer.strip().splitlines() if line.strip()]
    if not lines or lines[0].lower() not in {"safe", "unsafe"}:
        raise ValueError(f"not a Llama Guard answer: {answer[:80]!r}")
    if lines[0].lower() == "safe":
        return True, []
    listed = ",".join(lines[1:]).replace(" ", "").split(",")
    return False, [c.upper() for c in listed if c.upper() in HAZARDS]
