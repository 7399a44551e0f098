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


# a sentence that points at cards: "Here are ...", "below", "these reels", "the cards"
_THINGS = r"(listings?|reels?|videos?|clips?|topics?|results?|cards?|options?|items?|suggestions?)"
ANNOUNCE = re.compile(
    rf"\b(here (is|are) (some |a few |the |your |a |an )?(\w+ )?{_THINGS}|"
    rf"(these|those|the following) (\w+ )?{_THINGS}|(see|shown|listed) (below|above))\b",
    re.IGNORECASE,
)
SENTENCE_END = re.compile(r"((?<=[.!?…])[ \t]+|\s*\n\s*)")  # kept: Markdown needs its lines
NO_CARDS = "I have nothing to show for that here."


def announces_cards(sentence: str) -> bool:
    """``sentence`` promises cards ("Here are 2 reels", "these listings", "3 topics")."""
    return bool(COUNT.search(sentence) or ANNOUNCE.search(sentence))


def _keep(parts: list[str]) -> tuple[str, bool]:
    """(text, held): ``parts`` alternate sentence and separator; a sentence announcing cards
    is left out with its separator (a line break stays, so Markdown keeps its shape)."""
    out, held = [], False
    for i in range(0, len(parts), 2):
        sentence = parts[i]
        separator = parts[i + 1] if i + 1 < len(parts) else ""
        if announces_cards(sentence):
            held = True
            if "\n" in separator:
                out.append("\n")
            continue
        out.append(sentence + separator)
    return "".join(out), held


def without_unshown_cards(text: str) -> str:
    """``text`` without the sentences that announce cards, for an answer that shows none (a
    model answering on its own: 'Here are 2 reels...' and no reel); ``NO_CARDS`` when nothing
    is left."""
    kept, _ = _keep(SENTENCE_END.split(text))
    kept = kept.strip()
    return kept if kept else (NO_CARDS if text.strip() else text)


class CardClaimFilter:
    """``without_unshown_cards`` over a stream: text is released a sentence at a time, and a
    sentence that announces cards is held back. ``feed`` returns what may be sent now;
    ``close`` the rest (``NO_CARDS`` when every sentence was held back)."""

    def __init__(self) -> None:
        self.buffer = ""
        self.pending = ""
        self.sent = False
        self.held = False

    def feed(self, piece: str) -> str:
        """What of the text so far may be sent: its whole sentences that announce nothing."""
        self.buffer += piece
        parts = SENTENCE_END.split(self.buffer)
        if len(parts) < 3 or not parts[-1]:  # a separator is whole once text follows it
            return ""
        self.buffer = parts[-1]
        return self._release(parts[:-1])

    def close(self) -> str:
        """The last sentence if it may be sent, or ``NO_CARDS`` if nothing could be."""
        rest = self._release([self.buffer]) if self.buffer else ""
        self.buffer = ""
        if not self.sent and self.held:
            self.sent = True
            return NO_CARDS
        return rest

    def _release(self, parts: list[str]) -> str:
        text, held = _keep(parts)
        self.held = self.held or held
        if not text.strip():
            return ""
        # the space or line break after a sentence goes out with the next one: a reply never
        # ends in one
        text = (self.pending + text) if self.sent else text.lstrip()
        released = text.rstrip()
        self.pending = text[len(released) :]
        self.sent = True
        return released
