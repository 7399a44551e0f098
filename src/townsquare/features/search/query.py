"""The one reading of what a member typed into a marketplace search: the assistant's router and
the search box both call ``read_filters`` (rules) and ``infer_category`` (the town's own
listings), so 'kids bike under 150 near Alfama' means the same filters in both places.

What the rules read:

- **prices**: 'under 150', 'budget 60', 'between 20 and 50', '€100-200', '60 or less';
- **a place** the listings name ('near Alfama', 'in alfama');
- **conditions as a set**: 'like new' -> {like_new}; 'new or like new' -> {new, like_new};
  'good or better' -> {good, like_new, new}; a negation ('not for parts', "isn't broken",
  'anything but fair') removes a condition from the set (from every condition when nothing else
  is asked for);
- **a category**: the request's words are a category ('books'), else the categories of the
  listings nearest in meaning to its core words, when most of those close to the nearest
  agree ('sci-fi novels' -> books; 'balance bike' -> kids where the town lists them there),
  else the one category the words name ('kitchen stuff'). Never a guess: no category when
  the neighbours disagree and the words name none or several.

What is left after the asking, the prices, places and conditions is the request's core words,
the text that is searched.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from typing import Any

from townsquare.backends.base import EmbeddingBackend
from townsquare.social.schemas import CONDITIONS  # best first
from townsquare.storage.filters import Eq
from townsquare.storage.vectors import VectorIndex

RANK = {c: i for i, c in enumerate(CONDITIONS)}


def fold(text: str) -> str:
    """Lower case without accents: 'Alfama', 'alfama' and 'ALFAMA' are one place."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


_NUMBER = r"(\d+(?:[.,]\d+)?)\s*(?:€|eur(?:os?)?|\$|dollars?|bucks)?"
_MONEY = r"(?:€|eur\s*|\$)?\s*" + _NUMBER
_PRICE_RULES: list[tuple[re.Pattern[str], tuple[str, ...]]] = [
    (re.compile(rf"\bbetween\s+{_MONEY}\s+and\s+{_MONEY}"), ("min_price", "max_price")),
    # a bare range needs a currency: "2 to 5 year olds" is not a price
    (
        re.compile(r"(?:€|\$)\s*(\d+(?:[.,]\d+)?)\s*(?:-|to)\s*(?:€|\$)?\s*(\d+(?:[.,]\d+)?)"),
        ("min_price", "max_price"),
    ),
    (
        re.compile(r"\b(\d+(?:[.,]\d+)?)\s*(?:-|to)\s*(\d+(?:[.,]\d+)?)\s*(?:€|eur|\$|dollar)"),
        ("min_price", "max_price"),
    ),
    (
        re.compile(
            rf"(?:\bunder|\bbelow|\bless than|\bcheaper than|\bmax(?:imum)?|\bup to|\bat most|"
            rf"\bno more than|\bbudget(?: of| is|:)?|\bnot (?:more|over) than|"
            rf"\b(?:nothing|not|never) (?:over|above|more than)|<)\s*{_MONEY}"
        ),
        ("max_price",),
    ),
    (re.compile(rf"{_MONEY}\s*(?:or|and) (?:less|under|below|cheaper)\b"), ("max_price",)),
    (re.compile(rf"{_MONEY}\s*(?:max(?:imum)?|tops|at most)\b"), ("max_price",)),
    (
        # 'no more than 45' is a most, read above
        re.compile(
            rf"(?:(?<!nothing )(?<!not )(?<!never )\bover|(?<!nothing )(?<!not )\babove|"
            rf"(?<!no )(?<!not )(?<!nothing )\bmore than|\bat least|\bmin(?:imum)?|>)"
            rf"\s*{_MONEY}"
        ),
        ("min_price",),
    ),
    (re.compile(rf"{_MONEY}\s*(?:or|and) (?:more|over|above|up)\b"), ("min_price",)),
]
# condition phrases, longest first: a span read as 'like new' is not read again as 'new'
_CONDITION_PHRASES: list[tuple[str, str]] = [
    ("like_new", r"like[\s-]new|as new|mint( condition)?|barely used|hardly used|nearly new"),
    (
        "for_parts",
        r"for (spare )?parts|spares( or repair)?|broken|not working|does ?n'?t work|faulty|"
        r"for repair",
    ),
    ("new", r"brand[\s-]new|new|unused|never used|unopened|sealed"),
    ("good", r"good (condition|shape|state)|good"),
    ("fair", r"fair (condition|shape)|well[\s-]used|worn|fair"),
]
_CONDITION = re.compile(
    "|".join(f"(?P<{name}>\\b(?:{pattern})\\b)" for name, pattern in _CONDITION_PHRASES)
)
# a negation up to three words before a condition: 'not for parts', "isn't broken",
# 'anything but', 'no broken ones', 'except for parts'
_NEGATION = re.compile(
    r"\b(not|no|never|nothing|without|except|excluding|avoid|anything but|other than|"
    r"\w+n'?t)\b(\s+[\w']+){0,3}\s*$"
)
# words that say it must work: every condition but for parts ("not working" is for parts)
_WORKS = re.compile(
    r"(?<!not )(?<!n't )\b(that works|which works|works( fine| well)?|working|in working order|"
    r"fully functional)\b"
)
_OR_BETTER = re.compile(
    r"^\s*((condition|shape|state)\s+)?((or|and)\s+(better|above|up|newer)|at least|minimum)\b"
)
_AT_LEAST = re.compile(r"\b(at least|minimum|min\.?)\s*$")
# a bare 'good' or 'fair' is a condition only beside another kind of condition, negated, or
# with 'or better': "a good bike for a fair price" is no filter ('good condition' always is)
_LOOSE = {"good", "fair"}


def read_conditions(text: str) -> list[str] | None:
    """The conditions a member accepts, best first, or None when the words set none."""
    folded = fold(text)
    wanted: set[str] = set()
    refused: set[str] = set()
    found = list(_CONDITION.finditer(folded))
    named = {m.lastgroup for m in found}
    if _WORKS.search(folded) and "for_parts" not in named:
        refused.add("for_parts")
    for match in found:
        condition = str(match.lastgroup)
        phrase = match.group(0)
        before, after = folded[: match.start()], folded[match.end() :]
        negated = _NEGATION.search(before) is not None
        widened = bool(_OR_BETTER.match(after) or _AT_LEAST.search(before))
        if phrase in _LOOSE and not named - _LOOSE and not (negated or widened):
            continue
        if negated:
            refused.add(condition)
            continue
        if widened:
            wanted.update(c for c in CONDITIONS if RANK[c] <= RANK[condition])
        else:
            wanted.add(condition)
    if not wanted and not refused:
        return None
    accepted = (wanted or set(CONDITIONS)) - refused
    return [c for c in CONDITIONS if c in accepted] or None


def read_filters(query: str, known_places: Sequence[str]) -> dict[str, Any]:
    """Filters stated in the wording, read by rules (see the module docstring): ``max_price``,
    ``min_price``, ``near`` and ``condition`` (a list). What the rules cannot read is left
    out."""
    folded = fold(query)
    out: dict[str, Any] = {}
    for pattern, keys in _PRICE_RULES:
        found = pattern.search(folded)
        if found is None:
            continue
        for key, value in zip(keys, found.groups(), strict=True):
            out.setdefault(key, float(value.replace(",", ".")))
    for place in sorted(known_places, key=len, reverse=True):  # "Alfama Sul" before "Alfama"
        if re.search(rf"\b{re.escape(fold(place))}\b", folded):
            out["near"] = place
            break
    conditions = read_conditions(query)
    if conditions is not None and len(conditions) < len(CONDITIONS):
        out["condition"] = conditions
    if out.get("min_price", 0) > out.get("max_price", float("inf")):
        out.pop("min_price")
    return out


_FILLER = re.compile(
    r"\b(find( me)?|show( me)?|get( me)?|i'?m|i am|i want( to)?|i'?d like( to)?|i need|looking "
    r"(to buy|for)|shopping for|search( the town)?( and)?|where can i buy|buy|want to buy|does "
    r"anyone sell|is anyone selling|anyone selling|any|some|got|please|for sale|on the "
    r"market(place)?|listed|around here|a|an|the|me|my|for|of|on|about|in|to|with|what'?s|what|"
    r"does|do|did|is|are|say|says|saying|said|people|town|community|locals|folks|neighbours|"
    r"summari[sz]e|sum up|overview|give|tell|word|around|take|buzz|think|tips|posts?|messages?|"
    r"and|recommend|watch|watching|videos?|reels|clips?|something|short|could|should|can|you|"
    r"i|like|tonight|from|here|has|have|said|chatter|knows|care|up|max|cheap|decent|over|"
    r"under|below|less than|up to|between|euros?|eur|near|others?|budget|or|better|less|more|"
    r"one|ones|that'?s|that|which|isn'?t|not|no|but|anything|only|condition|shape|state|"
    r"at least|at most|than|cheaper|is fine|fine|ok|okay)\b"
)
_PRICE = re.compile(r"[€$]?\s*\d+(?:[.,]\d+)?\s*(?:€|euros?|eur|\$)?", re.IGNORECASE)


def core_words(text: str, places: Sequence[str] = ()) -> str:
    """What a request is about, without the asking, the prices, places and conditions:
    'Find me a kids bike under 150 near Alfama' -> 'kids bike'."""
    out = fold(text)
    for place in sorted(places, key=len, reverse=True):
        out = re.sub(rf"\b{re.escape(fold(place))}\b", " ", out)
    out = _PRICE.sub(" ", out)
    out = _CONDITION.sub(" ", out)
    out = re.sub(r"[^\w\s'-]", " ", out)
    previous = None
    while previous != out:
        previous = out
        out = _FILLER.sub(" ", out)
    return " ".join(w for w in out.split() if len(w) > 1 or w.isdigit())


def _singular(word: str) -> str:
    return word[:-1] if word.endswith("s") and len(word) > 3 else word


def infer_category(
    core: str,
    *,
    known: Sequence[str],
    embedder: EmbeddingBackend,
    vectors: VectorIndex,
    neighbours: int,
    share: float,
    min_similarity: float,
    margin: float,
    use_named: bool = True,
) -> str | None:
    """The category ``core`` asks for: a category's name ('books'); else the category of most
    (at least ``share``) of the active listings nearest in meaning: among the ``neighbours``
    nearest, those within ``margin`` of the nearest one, which must be at least
    ``min_similarity`` similar ('balance bike' -> kids, where the town lists them); else, with
    ``use_named``, the one category the words name ('kitchen stuff'). None when nothing
    agrees."""
    words = core.split()
    if not words:
        return None
    singular = [_singular(w.strip("'")) for w in words]
    named = [c for c in known if _singular(fold(c)) in singular]
    if " ".join(singular) in {_singular(fold(c)) for c in named}:
        return named[0]  # the words are a category's name
    voted = _vote(core, embedder, vectors, neighbours, share, min_similarity, margin, known)
    if voted is None and len(named) == 1 and use_named:
        return named[0]  # 'kitchen stuff': no cluster agrees, one category is named
    return voted


def _vote(
    core: str,
    embedder: EmbeddingBackend,
    vectors: VectorIndex,
    neighbours: int,
    share: float,
    min_similarity: float,
    margin: float,
    known: Sequence[str],
) -> str | None:
    vector = embedder.embed_sync([core])[0]
    hits = vectors.search("listings", vector, neighbours, Eq("status", "active"))
    if not hits or hits[0][1] < min_similarity:
        return None
    # the close cluster, and at least the three nearest above the floor: one listing far
    # nearer than the rest (the very one asked for) is no agreement
    near = [
        item
        for n, (item, similarity) in enumerate(hits)
        if similarity >= min_similarity and (n < 3 or similarity >= hits[0][1] - margin)
    ]
    if len(near) < 2:
        return None
    found: list[str] = []
    for category in known:  # one small lookup per category, over the neighbours only
        found.extend(
            category for _ in vectors.filter_ids("listings", near, Eq("category", category))
        )
    if not found:
        return None
    category, count = Counter(found).most_common(1)[0]
    return category if count / len(near) >= share else None
