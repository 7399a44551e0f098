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


HOLD_WORDS = 6  # how far into a sentence an announcement is looked for before it streams


def without_unshown_cards(text: str) -> str:
    """``text`` without the sentences that announce cards, for an answer that shows none (a
    model answering on its own: 'Here are 2 reels...' and no reel); ``NO_CARDS`` when nothing
    is left. The same as ``CardClaimFilter`` over a stream, by construction."""
    claims = CardClaimFilter()
    return (claims.feed(text) + claims.close()).strip()


class CardClaimFilter:
    """Holds back, in a stream, a sentence that announces cards. Each sentence is held until
    its first ``HOLD_WORDS`` words are in (announcements open a sentence: "Here are 2
    reels", "I found 3 listings", "These videos"); one that announces nothing by then, or
    ends sooner without announcing, streams on word by word; one that does is dropped whole.
    ``feed`` returns what may be sent now, ``close`` the rest (``NO_CARDS`` when every
    sentence was dropped). A line break of a dropped sentence stays: Markdown keeps its
    shape."""

    def __init__(self) -> None:
        self.buffer = ""  # the current sentence's text not yet sent
        self.open = False  # the current sentence was judged innocent and streams on
        self.sent = False
        self.held = False
        self.pending = ""  # whitespace after the last text sent, sent with the next text

    def feed(self, piece: str) -> str:
        """What of the text so far may be sent."""
        self.buffer += piece
        out = []
        while True:
            end = SENTENCE_END.search(self.buffer)
            if end is None or end.end() == len(self.buffer):  # no whole separator yet
                break
            sentence, separator = self.buffer[: end.start()], end.group(0)
            self.buffer = self.buffer[end.end() :]
            out.append(self._sentence(sentence, separator))
        if self.buffer:
            if self.open:
                out.append(self._emit(self.buffer))
                self.buffer = ""
            elif len(self.buffer.split()) > HOLD_WORDS and not announces_cards(self.buffer):
                self.open = True
                out.append(self._emit(self.buffer))
                self.buffer = ""
        return "".join(out)

    def close(self) -> str:
        """The rest, or ``NO_CARDS`` if nothing could be sent."""
        rest = self._sentence(self.buffer, "") if self.buffer.strip() else ""
        self.buffer = ""
        if not self.sent and self.held:
            self.sent = True
            return NO_CARDS
        return rest

    def _sentence(self, sentence: str, separator: str) -> str:
        """A whole sentence: sent (what was not sent yet of it), or dropped."""
        was_open, self.open = self.open, False
        if not was_open and announces_cards(sentence):
            self.held = True
            if "\n" in separator and self.sent:
                self.pending += "\n"
            return ""
        return self._emit(sentence) + self._space(separator)

    def _space(self, separator: str) -> str:
        self.pending += separator
        return ""

    def _emit(self, text: str) -> str:
        if not text:
            return ""
        if not self.sent:
            text = text.lstrip()
            if not text:
                return ""
        out = self.pending + text if self.sent else text
        self.pending = ""
        trimmed = out.rstrip()
        self.pending = out[len(trimmed) :]
        self.sent = True
        return trimmed
