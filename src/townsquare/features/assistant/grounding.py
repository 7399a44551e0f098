"""The mechanical check every answer with tool results passes before it is sent.

An answer around cards may only claim what the cards hold:

- a count ("3 listings", "two reels") must equal the number of cards of that kind;
- a quoted name (“…” or "…") must be the request's own words, a tool argument, or a field of a
  card (a title, a caption, a topic, a group);
- a listing title or reel caption of the town that is named must be one of the cards (checked
  against ``known_titles`` when the caller has them: the evaluation passes the whole town's).

Template answers pass by construction; the check is what keeps a bigger model's free text (and
any future template) honest: a failing text is replaced by the template, never sent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from townsquare.features.assistant.tools import ToolResult

NUMBER_WORDS = {
    "no": 0,
    "zero": 0,
    "one": 1,
    "a single": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
}
NOUNS = {
    "listing": "listing",
    "reel": "reel",
    "video": "reel",
    "topic": "topic",
    "comment": "suggestion",
    "reply": "reply",
    "replie": "reply",
    "point": "point",
    "source": "source",
}
COUNT = re.compile(
    r"\b(\d+|no|zero|one|a single|two|three|four|five|six|seven|eight|nine|ten)\s+"
    r"(?:\w+\s+)?(listing|reel|video|topic|comment|repl(?:y|ie)|point|source)s?\b",
    re.IGNORECASE,
)
QUOTED = re.compile(r"“([^”]+)”|\"([^\"]+)\"")


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().strip("…").strip()).casefold()


def problems(
    text: str,
    results: Sequence[ToolResult],
    *,
    request: str = "",
    known_titles: Iterable[str] = (),
) -> list[str]:
    """What ``text`` claims that the tool ``results`` do not hold (empty: grounded)."""
    found: list[str] = []
    cards = [card for result in results for card in result.cards]
    counts: dict[str, int] = {}
    for card in cards:
        counts[str(card.get("type"))] = counts.get(str(card.get("type")), 0) + 1
    for match in COUNT.finditer(text):
        word, noun = match.group(1).lower(), match.group(2).lower()
        claimed = int(word) if word.isdigit() else NUMBER_WORDS[word]
        kind = NOUNS[noun]
        if counts.get(kind, 0) != claimed:
            found.append(f"claims {claimed} {noun}(s) but the tools returned {counts.get(kind, 0)}")
    allowed = {_norm(s) for s in _strings([r.arguments for r in results]) if s}
    allowed |= {_norm(s) for s in _strings(cards) if s}
    allowed.add(_norm(request))
    for match in QUOTED.finditer(text):
        quoted = _norm(match.group(1) or match.group(2))
        if quoted and not any(quoted == a or (len(quoted) >= 8 and quoted in a) for a in allowed):
            found.append(f"names “{quoted}”, which no tool returned")
    shown = {_norm(str(card.get("title") or card.get("caption") or "")) for card in cards}
    folded = _norm(text)
    for title in known_titles:
        name = _norm(title)
        if len(name) >= 6 and name in folded and name not in shown and name not in allowed:
            found.append(f"names “{title}”, which no tool returned")
    return found
