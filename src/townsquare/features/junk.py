"""The junk detector every writing feature runs before a generation reaches a member (issue 25).

A small model's output can be well-formed and still noise: "Riverside Runners [1][2]" as a
catch-up point, "IQL_143825" as a topic, "{1, {2} } 🔥" as a reply, "[NODE_TAGS]" in a
description. ``junk_reasons`` names what is wrong with a text; an empty list means none of
these was found (it says nothing about whether the text is true: grounding checks do that).

- placeholders and tag-like tokens: ``[NODE_TAGS]``, ``{1}``, ``<name>``, ``IQL_143825``,
  ``{{slot}}``;
- non-words: a word the source texts do not contain that the embedding model's WordPiece
  vocabulary splits into three or more pieces ('Riverslamb', 'Narazino'), when such words are
  a large part of the text;
- repeated tokens: the same word three times in a row, or one word over 40 % of a longer text;
- too little language: under half of the characters are letters, or fewer than two words;
- a text that is only a name (the group's, a member's) or a URL, or an opener that starts with
  a URL.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

PLACEHOLDER = re.compile(
    r"\[[A-Z0-9_ ]{2,}\]|\{\{?[^{}]{0,20}\}?\}|<[a-z_]{2,20}>|\b[A-Za-z]+_[A-Za-z0-9_]+\b|"
    r"\b[A-Z]{2,}\d{3,}\b|\b[A-Za-z]+\d{4,}\b"
)
URL = re.compile(r"(https?://|www\.)\S+", re.IGNORECASE)
CITATION = re.compile(r"\[\d+\]")
# what may surround a text without being part of it: spaces, punctuation, dashes and quotes
PUNCTUATION = " \t\n.,;:!?-\u2013\u2014\"'\u201c\u201d\u2018\u2019()"
WORD = re.compile(r"[^\W\d_]+(?:['\u2019-][^\W\d_]+)*")


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _pieces(word: str, vocabulary: frozenset[str]) -> int:
    """How many pieces WordPiece's greedy longest match cuts ``word`` into (99: it cannot);
    a word with an apostrophe or hyphen counts by its longest part ("you're": "you", "re")."""
    parts = re.split(r"['\u2019-]", word)
    if len(parts) > 1:
        return max(_pieces(part, vocabulary) for part in parts if part) if any(parts) else 0
    word = _fold(word)
    pieces, start = 0, 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = word[start:end]
            if (piece if start == 0 else f"##{piece}") in vocabulary:
                break
            end -= 1
        if end == start:
            return 99
        pieces += 1
        start = end
    return pieces


@functools.cache
def _subword_vocabulary() -> frozenset[str]:
    """The bundled MiniLM's WordPiece vocabulary; empty without the bundled model."""
    try:
        from townsquare.backends.sentence_embed import bundled_embedding_path

        root = Path(bundled_embedding_path())
    except Exception:
        return frozenset()
    files = list(root.rglob("vocab.txt"))
    return frozenset(files[0].read_text(encoding="utf-8").split()) if files else frozenset()


def junk_reasons(
    text: str,
    *,
    sources: Iterable[str] = (),
    names: Iterable[str] = (),
    opener: bool = False,
    min_words: int = 2,
) -> list[str]:
    """What makes ``text`` junk (see the module docstring); [] when nothing does.

    ``sources``: the texts it was made from (their words are never non-words); ``names``: the
    group's and members' names a text must not consist of; ``opener``: the text opens a
    conversation (a URL may not start it); ``min_words``: fewer words is junk (a topic's name
    may be one word)."""
    reasons: list[str] = []
    stripped = CITATION.sub("", text).strip(PUNCTUATION)
    if not stripped or stripped in {"...", "…"}:
        return ["empty"]
    placeholder = PLACEHOLDER.search(stripped)
    if placeholder:
        reasons.append(f"placeholder or tag {placeholder.group(0)!r}")
    if URL.fullmatch(stripped) or (opener and URL.match(stripped)):
        reasons.append("a URL, not words")
    folded = _fold(stripped)
    names = list(names)
    for name in names:
        if name and folded == _fold(name).strip():
            reasons.append(f"only the name {name!r}")
    words = WORD.findall(stripped)
    letters = sum(c.isalpha() for c in stripped)
    if len(words) < min_words and not reasons:
        reasons.append(f"fewer than {min_words} words")
    if letters < 0.5 * len(stripped.replace(" ", "")):
        reasons.append("under half of it is letters")
    lowered = [w.lower() for w in words]
    for a, b, c in zip(lowered, lowered[1:], lowered[2:], strict=False):
        if a == b == c:
            reasons.append(f"{a!r} three times in a row")
            break
    if len(lowered) >= 6:
        word, count = Counter(lowered).most_common(1)[0]
        if count / len(lowered) > 0.4:
            reasons.append(f"{word!r} is {count} of {len(lowered)} words")
    vocabulary = _subword_vocabulary()
    if vocabulary and words:
        known = {_fold(w) for s in [*sources, *names] for w in WORD.findall(s)}
        odd = [
            w
            for w in words
            if len(w) >= 5 and _fold(w) not in known and _pieces(w, vocabulary) >= 3
        ]
        if odd and (len(odd) >= 2 or len(odd) / len(words) >= 0.25):
            reasons.append(f"not words: {', '.join(odd[:3])}")
    return reasons


def is_junk(text: str, **kwargs: object) -> bool:
    """``junk_reasons`` found something."""
    return bool(junk_reasons(text, **kwargs))  # type: ignore[arg-type]
