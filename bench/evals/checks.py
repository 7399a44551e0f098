"""Independent checks for the evaluations: written from the listing's own attributes and from
word lists of their own, sharing no code or vocabulary file with the service's grounding
filter (features/shops/service.py and claims.toml), so they can disagree with it.

- ``covers(listing, text)``: the share of the listing's attribute values the text states, with
  units and number formats normalised ("16 in" = "16-inch" = '16"'; "128" = "128GB").
- ``claims(listing, text, kinds)``: facts the text asserts that the listing does not: numbers
  it does not contain, capitalised names it does not mention (brands, models), colours and
  materials from the lists below, and the kind of a different product (``kinds``: head nouns of
  the other categories' listings in the same town).
"""

from __future__ import annotations

import math
import re
from typing import Any

# CSS/X11 colour names a draft is likely to use (an independent list, not claims.toml's)
COLOURS = set(
    [
        "black",
        "white",
        "red",
        "green",
        "blue",
        "yellow",
        "orange",
        "purple",
        "violet",
        "pink",
        "brown",
        "grey",
        "gray",
        "silver",
        "gold",
        "beige",
        "cream",
        "ivory",
        "navy",
        "teal",
        "turquoise",
        "cyan",
        "magenta",
        "maroon",
        "olive",
        "lime",
        "coral",
        "salmon",
        "khaki",
        "lavender",
        "indigo",
        "charcoal",
        "burgundy",
        "mint",
        "tan",
    ]
)
MATERIALS = set(
    [
        "wood",
        "wooden",
        "oak",
        "pine",
        "walnut",
        "teak",
        "beech",
        "birch",
        "ash",
        "cedar",
        "maple",
        "mahogany",
        "bamboo",
        "rattan",
        "wicker",
        "metal",
        "steel",
        "iron",
        "aluminium",
        "aluminum",
        "chrome",
        "brass",
        "bronze",
        "copper",
        "titanium",
        "carbon",
        "leather",
        "suede",
        "velvet",
        "linen",
        "cotton",
        "wool",
        "cashmere",
        "silk",
        "satin",
        "denim",
        "nylon",
        "polyester",
        "fleece",
        "canvas",
        "plastic",
        "acrylic",
        "glass",
        "ceramic",
        "porcelain",
        "stone",
        "marble",
        "granite",
        "concrete",
        "rubber",
        "foam",
    ]
)
STOP_CAPITALS = {"I", "I'm", "I've", "The", "A", "An", "It", "This", "Its", "Details"}
NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")


def _numbers(text: str) -> set[float]:
    return {float(n.replace(",", ".")) for n in NUMBER.findall(text)}


def _words(text: str) -> set[str]:
    out = set()
    for word in WORD.findall(text.lower()):
        out.add(word)
        out.add(word.rstrip("s"))
    return out


def _listing_text(listing: Any) -> str:
    return " ".join(
        [
            listing.title,
            listing.category,
            listing.condition.replace("_", " "),
            listing.location or "",
            listing.currency,
            f"{listing.price_cents / 100:.2f}",
            *(f"{k.replace('_', ' ')} {v}" for k, v in listing.attributes.items()),
        ]
    )


def covers(listing: Any, text: str) -> float:
    """Share of attribute values stated in ``text``."""
    if not listing.attributes:
        return 1.0
    words, numbers = _words(text), _numbers(text)
    hits = 0
    for value in listing.attributes.values():
        value_numbers = _numbers(str(value))
        value_words = _words(str(value)) - {"in", "cm", "gb", "mm", "kg"}
        if value_numbers and not value_numbers <= numbers:
            continue
        if value_words and not value_words <= words:
            continue
        hits += 1
    return hits / len(listing.attributes)


def claims(listing: Any, parts: list[str], kinds: set[str]) -> list[str]:
    """What the draft's ``parts`` (title, description, each highlight and tag) assert that
    the listing does not state. Each part is read on its own: a capital at its start, or at a
    sentence's, is no claim."""
    stated = _listing_text(listing)
    stated_words, stated_numbers = _words(stated), _numbers(stated)
    stated_numbers |= {math.floor(n) for n in stated_numbers}
    found: list[str] = []
    for text in parts:
        found += [
            n for n in NUMBER.findall(text) if float(n.replace(",", ".")) not in stated_numbers
        ]
        for sentence in re.split(r"(?<=[.!?:])\s+", text):
            for word in WORD.findall(sentence)[1:]:
                word = word.strip("'")
                if (
                    word[:1].isupper()
                    and word not in STOP_CAPITALS
                    and word.lower() not in stated_words
                    and word.lower().rstrip("s") not in stated_words
                ):
                    found.append(word)
        for word in _words(text):
            if word in (COLOURS | MATERIALS | kinds) and word not in stated_words:
                found.append(word)
    return found


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(centre - half, 3), round(centre + half, 3))
