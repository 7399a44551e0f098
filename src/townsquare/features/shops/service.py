"""Product descriptions grounded in a listing's attributes.

The check is mechanical: a number, brand, material, colour or size word in the draft that is
not among the listing's facts is invented; the sentence (or highlight, or tag) carrying it is
dropped, never rewritten. Every attribute given is used: those the draft left out are added as
a closing "Details" sentence.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session, sessionmaker

from townsquare.backends.base import GenerationOptions, Message
from townsquare.bounds import MAX_INT
from townsquare.errors import InvalidField, NotFound
from townsquare.features import prompts, structured
from townsquare.features.feedback import service as feedback
from townsquare.safety.pipeline import Context, Decision, GuardedText
from townsquare.storage.social_tables import Generation, Listing
from townsquare.storage.tables import User

FEATURE = "product_description"
SENTENCES = {"short": 2, "medium": 3, "long": 5}
NOT_NAMES = {"I", "I'm", "I've", "I'll", "I'd", "OK"}
CURRENCY_WORDS = {
    "EUR": "euro euros",
    "USD": "dollar dollars",
    "GBP": "pound pounds sterling",
    "BRL": "real reais",
}
# a number as people write prices: 1200, 1,200, 1.200,50, 120.00
NUMBER = re.compile(r"\d{1,3}(?:[,.]\d{3})+(?:[.,]\d{1,2})?(?!\d)|\d+(?:[.,]\d+)?")
WORD = re.compile(r"[\w'-]+")
# words whose presence claims a fact: invented unless the listing states them (claims.toml)
CLAIMS: frozenset[str] = frozenset(
    word
    for words in tomllib.loads((Path(__file__).parent / "claims.toml").read_text()).values()
    for word in words
)


class DescriptionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tone: Literal["friendly", "professional", "playful"] = "friendly"
    length: Literal["short", "medium", "long"] = "short"


class Draft(BaseModel):
    generation_id: int
    listing_id: str
    title: str
    description: str
    highlights: list[str]
    tags: list[str]
    removed: list[str] = Field(description="Sentences, highlights or tags dropped as invented.")
    added_attributes: list[str] = Field(
        description="Attributes added because the draft left them out."
    )


class Accept(BaseModel):
    model_config = ConfigDict(extra="forbid")

    generation_id: int = Field(ge=1, le=MAX_INT, description="The draft's id.")
    title: str | None = Field(None, min_length=1, max_length=300, description="An edited title.")
    description: str | None = Field(
        None, min_length=1, max_length=5000, description="An edited text."
    )


def facts(listing: Listing) -> tuple[set[str], set[str]]:
    """(words, numbers) the listing states."""
    text = " ".join(
        [
            listing.title,
            listing.category,
            listing.condition.replace("_", " "),
            listing.location,
            f"{listing.price_cents / 100:.2f}",
            str(listing.price_cents // 100),
            # the price's currency as a draft may write it: "120 EUR", "120 euros"
            listing.currency,
            CURRENCY_WORDS.get(listing.currency.upper(), ""),
            *(f"{k} {k.replace('_', ' ')} {v}" for k, v in listing.attributes.items()),
        ]
    )
    words = {w.lower() for w in WORD.findall(text)}
    words |= {w[:-1] for w in words if w.endswith("s")}  # "bikes" states "bike"
    numbers = {n.replace(",", ".") for n in NUMBER.findall(text)}
    numbers |= {n.split(".")[0] for n in numbers}
    return words, numbers


def _claim(word: str) -> str | None:
    """The claim word ``word`` makes (its singular when that is the listed form), or None."""
    lowered = word.lower()
    if lowered in CLAIMS:
        return lowered
    if lowered.endswith("s") and lowered[:-1] in CLAIMS:
        return lowered[:-1]
    return None


def number_value(written: str) -> float | None:
    """The value of a number as written: '1,200' and '1.200' are 1200 (thousands), '1.200,50'
    is 1200.5, '120,5' is 120.5."""
    digits = written.replace(" ", "")
    if re.fullmatch(r"\d{1,3}(,\d{3})+(\.\d+)?", digits):
        digits = digits.replace(",", "")
    elif re.fullmatch(r"\d{1,3}(\.\d{3})+(,\d+)?", digits):
        digits = digits.replace(".", "").replace(",", ".")
    else:
        digits = digits.replace(",", ".")
    try:
        return float(digits)
    except ValueError:
        return None


def invented(text: str, words: set[str], numbers: set[str]) -> list[str]:
    """The numbers and claim words in ``text`` that the listing's facts do not state (a number
    is stated when its value is: the price written '€1,200' is the listing's 1200.00)."""
    values = {number_value(n) for n in numbers} - {None}
    found = [
        n
        for n in NUMBER.findall(text)
        if n.replace(",", ".") not in numbers
        and n.replace(",", ".").split(".")[0] not in numbers
        and number_value(n) not in values
    ]
    for word in WORD.findall(text):
        claim = _claim(word)
        if claim is not None and claim not in words and word.lower() not in words:
            found.append(word)
    # a capitalised name the listing does not state (a brand, a model, a city): "Barcelona",
    # "Gamera". The first word of a sentence is capitalised anyway.
    for sentence in re.split(r"(?<=[.!?:])\s+", text):
        for word in WORD.findall(sentence)[1:]:
            name = word.strip("'")
            lowered = name.lower()
            if (
                name[:1].isupper()
                and name not in NOT_NAMES
                and lowered not in words
                and lowered.rstrip("s") not in words
            ):
                found.append(name)
    return list(dict.fromkeys(found))


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()]


def ground(raw: dict[str, Any], listing: Listing) -> tuple[dict[str, Any], list[str], list[str]]:
    """Drop invented claims; add left-out attributes. Returns (draft, removed, added)."""
    words, numbers = facts(listing)
    removed: list[str] = []
    kept_sentences: list[str] = []
    for sentence in _sentences(raw["description"]):
        (removed if invented(sentence, words, numbers) else kept_sentences).append(sentence)
    highlights = [h for h in raw["highlights"] if not invented(h, words, numbers)]
    removed += [h for h in raw["highlights"] if h not in highlights]
    tags = [t.lower().strip("#") for t in raw["tags"] if not invented(t, words, numbers)]
    removed += [t for t in raw["tags"] if t.lower().strip("#") not in tags]
    title = raw["title"] if not invented(raw["title"], words, numbers) else listing.title
    body = " ".join(kept_sentences + highlights + [title]).lower()
    missing = [
        f"{k.replace('_', ' ')}: {v}"
        for k, v in listing.attributes.items()
        if str(v).lower() not in body
    ]
    if missing:
        kept_sentences.append("Details: " + "; ".join(missing) + ".")
    draft = {
        "title": title,
        # each sentence closed, so two kept ones never run together into one
        "description": " ".join(s if s[-1] in ".!?" else f"{s}." for s in kept_sentences if s),
        "highlights": highlights,
        "tags": list(dict.fromkeys(tags)),
    }
    return draft, removed, missing


OPENERS = {
    "friendly": "Up for grabs",
    "professional": "For sale",
    "playful": "Looking for a new home",
}
CONDITION_WORDS = {
    "new": "new",
    "like_new": "like new",
    "good": "in good condition",
    "fair": "in fair condition",
    "for_parts": "sold for parts or repair",
}


def template_draft(listing: Listing, request: DescriptionRequest) -> dict[str, Any]:
    """A draft from the listing's stated facts and nothing else (the extractive core): the
    seller's title, its condition, place and price, and every attribute as written. The tone
    changes only the opening words, which state nothing."""
    attributes = [(k.replace("_", " "), str(v)) for k, v in sorted(listing.attributes.items())]
    price = f"{listing.price_cents / 100:.2f}".removesuffix(".00")
    where = f" in {listing.location}" if listing.location else ""
    sentences = [
        f"{OPENERS[request.tone]}: {listing.title}, {CONDITION_WORDS[listing.condition]}.",
        f"{price} {listing.currency}{where}.",
    ]
    if attributes:
        sentences.append("; ".join(f"{k.capitalize()}: {v}" for k, v in attributes) + ".")
    highlights = [f"{k.capitalize()}: {v}" for k, v in attributes][:4]
    highlights.append(CONDITION_WORDS[listing.condition].capitalize())
    tags = [listing.category.lower()] + [
        v.lower() for _, v in attributes if re.fullmatch(r"[^\W\d_][\w-]{1,19}", v)
    ]
    return {
        "title": listing.title,
        "description": " ".join(sentences),
        "highlights": highlights[:5],
        "tags": list(dict.fromkeys(tags))[:6],
    }


def schema(length: str) -> dict[str, Any]:
    """The JSON schema of a description draft of ``length``."""
    return {
        "type": "object",
        "required": ["title", "description", "highlights", "tags"],
        "properties": {
            "title": structured.text_field(90, 3),
            "description": structured.text_field(160 * SENTENCES[length], 10),
            "highlights": {
                "type": "array",
                "minItems": 3,
                "maxItems": 5,
                "items": structured.text_field(60, 2),
            },
            "tags": {
                "type": "array",
                "minItems": 3,
                "maxItems": 6,
                "items": structured.text_field(20, 2),
            },
        },
    }


async def describe(
    db: Session,
    sessions: sessionmaker[Session],
    user: User,
    listing: Listing,
    request: DescriptionRequest,
    *,
    text: GuardedText,
    writing: str = "model",
) -> Draft:
    """Draft a title, description, highlights and tags from the listing's facts only.
    ``writing="core"``: the template (``template_draft``), nothing outside the facts;
    ``"model"``: the text model writes it, invented claims are dropped and left-out
    attributes added."""
    if not listing.attributes:
        raise InvalidField(
            "Not enough to describe from: the listing has no attributes. Add some first (brand, "
            "material, size, colour...) with PUT /api/listings/{id}.",
            "attributes",
        )
    if writing == "core":
        draft = template_draft(listing, request)
        generation_id = await structured.record_core(
            sessions,
            Context(FEATURE, user.id, user.role, subject=(listing.title,)),
            inputs={"listing": listing.external_id, **request.model_dump()},
            output={**draft, "removed": [], "added_attributes": []},
        )
        return Draft(
            generation_id=generation_id,
            listing_id=listing.external_id,
            removed=[],
            added_attributes=[],
            **draft,
        )
    prompt = prompts.render(
        __file__,
        "description.j2",
        tone=request.tone,
        sentences=SENTENCES[request.length],
        highlights="3 to 5",
        title=listing.title,
        category=listing.category,
        condition=listing.condition.replace("_", " "),
        location=listing.location or "not given",
        price=f"{listing.price_cents / 100:.2f} {listing.currency}",
        attributes=sorted(listing.attributes.items()),
    )
    context = Context(FEATURE, user.id, user.role, subject=(listing.title,))

    async def finish(
        raw: dict[str, Any],
    ) -> tuple[tuple[dict[str, Any], list[str], list[str]], dict[str, Any]]:
        draft, removed, added = ground(raw, listing)
        return (draft, removed, added), {**draft, "removed": removed, "added_attributes": added}

    (draft, removed, added), generation_id = await structured.generate_recorded(
        text,
        sessions,
        [Message("user", prompt)],
        schema(request.length),
        dict,
        options=GenerationOptions(max_tokens=64, temperature=0.7),  # raised to the schema's need
        context=context,
        inputs={"listing": listing.external_id, **request.model_dump()},
        finish=finish,
    )
    return Draft(
        generation_id=generation_id,
        listing_id=listing.external_id,
        removed=removed,
        added_attributes=added,
        **draft,
    )


def accept(
    db: Session,
    user: User,
    listing: Listing,
    body: Accept,
    *,
    screen: Callable[[str], Decision] | None = None,
) -> Listing:
    """Store a draft (as generated, or edited by the seller) on the listing. An edited text is
    feedback on the draft, moderated by ``screen`` before it can reach a training export."""
    generation = db.get(Generation, body.generation_id)
    if (
        generation is None
        or generation.feature != FEATURE
        or generation.inputs.get("listing") != listing.external_id
    ):
        raise NotFound(f"There is no description draft {body.generation_id} for this listing.")
    # The title is the seller's: a drafted title is a suggestion the seller may send back as
    # ``title``; accepting a draft never rewrites it on its own.
    if body.title is not None:
        listing.title = body.title
    listing.description = body.description or generation.output["description"]
    generation.output = {
        **generation.output,
        "accepted": True,
        "edited": body.title is not None or body.description is not None,
    }
    if generation.user_id == user.id:  # accepting (or editing) a draft is feedback on it
        feedback.give(
            db,
            user,
            generation.id,
            feedback.FeedbackIn(rating="up", correction=body.description),
            max_chars=None,  # Accept.description is bounded already
            source="accept",
            screen=screen,
        )
    db.commit()
    return listing
