"""Search result summaries: a short answer built only from retrieved sources, with [n] markers.

The schema lets the model cite only the numbers of the sources it was given, and requires at
least one citation per sentence; validation enforces the same again (markers outside the
sources are removed, sentences left without a marker are removed), and any inline markers the
model wrote into the text are stripped so the only markers are the checked ones.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

import anyio
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session, sessionmaker

from townsquare.backends.base import EmbeddingBackend, GenerationOptions, Message
from townsquare.features import prompts, structured
from townsquare.features.search.schemas import ListingFilters, Source
from townsquare.features.search.service import retrieve_sources
from townsquare.safety.pipeline import Context, GuardedText
from townsquare.settings import SearchSettings
from townsquare.storage.tables import User
from townsquare.storage.vectors import VectorIndex

FEATURE = "search_summary"
INLINE_MARKER = re.compile(r"\s*\[\d+\]")


class SummaryRequest(BaseModel):
    query: str = Field(min_length=1, description="What the member searched for.")
    filters: ListingFilters | None = Field(
        None,
        description="The member's marketplace filters: only listings inside them are "
        "summarised and cited (posts and reels are not listings and stay).",
    )


class Sentence(BaseModel):
    text: str
    citations: list[int]


class Summary(BaseModel):
    generation_id: int | None = Field(description="None when there was nothing to summarise.")
    query: str
    answer: str = Field(description="The sentences with their [n] markers.")
    sentences: list[Sentence]
    sources: list[Source]
    removed_sentences: int = 0
    withheld: list[str] = Field(
        default_factory=list,
        description="Sources left out of the summary: they carry instructions to the "
        "assistant or a hazard (listed in sources all the same, as search results).",
    )


def schema(count: int) -> dict[str, Any]:
    """The JSON schema of a summary citing ``count`` numbered sources."""
    return {
        "type": "object",
        "properties": {
            "sentences": {
                "type": "array",
                "minItems": 1,
                "maxItems": 4,
                "items": {
                    "type": "object",
                    "properties": {
                        "text": structured.text_field(220, 3, brackets=False),
                        "sources": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": 3,
                            "items": {"type": "integer", "enum": list(range(1, count + 1))},
                        },
                    },
                    "required": ["text", "sources"],
                },
            }
        },
        "required": ["sentences"],
    }


def cited(raw: Any, count: int) -> tuple[list[Sentence], int]:
    """Keep sentences with at least one valid citation; (kept, removed). Raises on a bad shape."""
    kept, removed = [], 0
    for item in raw["sentences"]:
        text = INLINE_MARKER.sub("", str(item["text"])).strip()
        numbers = sorted({n for n in item["sources"] if isinstance(n, int) and 1 <= n <= count})
        if text and numbers:
            kept.append(Sentence(text=text, citations=numbers))
        else:
            removed += 1
    if not kept:
        raise ValueError("no sentence cites a supplied source")
    return kept, removed


CORE_SENTENCES = 4
CONDITION_WORDS = {"like_new": "like new", "for_parts": "for parts"}


def core_sentence(source: Source) -> str:
    """One sentence of the source's own words: a listing's title, price, condition and place;
    a post's first sentence, quoted; a reel's caption."""
    if source.kind == "listing":
        price, _, rest = source.snippet.partition(", ")
        condition, _, place = rest.partition(", ")
        place = place.split(". ", 1)[0].rstrip(".")
        bits = [price.removesuffix(".00").replace(".00 ", " ")]
        bits += [b for b in (CONDITION_WORDS.get(condition, condition), place) if b]
        return f"{source.title}: {', '.join(bits)}."
    if source.kind == "post":
        first = re.split(r"(?<=[.!?])\s+", " ".join(source.snippet.split()), maxsplit=1)[0]
        if len(first) > 200:
            first = first[:200].rsplit(" ", 1)[0] + "…"
        return f"A member wrote: “{first}”"
    return f"A reel: “{source.title}”."


async def summarize(
    db: Session,
    sessions: sessionmaker[Session],
    user: User,
    query: str,
    *,
    text: GuardedText,
    embedder: EmbeddingBackend,
    vectors: VectorIndex,
    tuning: SearchSettings,
    limit: int = 6,
    filters: ListingFilters | None = None,
    writing: str = "model",
) -> Summary:
    """Answer ``query`` from the sources the member may see (listings only inside
    ``filters``), every sentence cited. ``writing="core"``: one sentence of each of the best
    sources' own words (``core_sentence``), citing it; ``"model"``: the text model writes the
    sentences under a schema that lets them cite only the sources given."""
    found = await anyio.to_thread.run_sync(
        partial(
            retrieve_sources,
            db,
            user,
            query,
            limit=limit,
            embedder=embedder,
            vectors=vectors,
            tuning=tuning,
            filters=filters,
        )
    )
    await anyio.to_thread.run_sync(db.commit)  # no connection held while the model writes
    # the query is the member's; the sources are other members' content, read as data
    context = Context(FEATURE, user.id, user.role, third_party=True, request=query)
    usable, withheld = await structured.screen_sources(
        text, found.sources, lambda s: f"{s.title}\n{s.snippet}", context
    )
    usable = [s.model_copy(update={"n": n}) for n, s in enumerate(usable, start=1)]
    if not usable:
        return Summary(
            generation_id=None,
            query=query,
            answer="",
            sentences=[],
            sources=[],
            withheld=[s.id for s in withheld],
        )
    if writing == "core":
        chosen = usable[:CORE_SENTENCES]
        made = [Sentence(text=core_sentence(source), citations=[source.n]) for source in chosen]
        allowed = set(await text.check_items([m.text for m in made], context))
        kept = [m for m in made if m.text in allowed]
        answer = " ".join(f"{m.text} [{m.citations[0]}]" for m in kept)
        generation_id = await structured.record_core(
            sessions,
            context,
            inputs={"query": query, "sources": [f"{s.kind}:{s.id}" for s in usable]},
            output={"answer": answer},
            contributors=sorted({user.id, *(s.owner_id for s in chosen if s.owner_id is not None)}),
        )
        return Summary(
            generation_id=generation_id,
            query=query,
            answer=answer,
            sentences=kept,
            sources=usable,
            removed_sentences=len(made) - len(kept),
            withheld=[s.id for s in withheld],
        )
    count = len(usable)
    messages = [
        Message("system", prompts.render(__file__, "summary.j2", sources=usable)),
        Message("user", query),
    ]

    async def finish(
        cited_sentences: tuple[list[Sentence], int],
    ) -> tuple[tuple[list[Sentence], int, str], dict[str, Any]]:
        sentences, removed = cited_sentences
        allowed = set(await text.check_items([s.text for s in sentences], context))
        safe = [s for s in sentences if s.text in allowed]
        removed += len(sentences) - len(safe)
        answer = " ".join(f"{s.text} " + "".join(f"[{n}]" for n in s.citations) for s in safe)
        return (safe, removed, answer), {"answer": answer}

    (safe, removed, answer), generation_id = await structured.generate_recorded(
        text,
        sessions,
        messages,
        schema(count),
        lambda raw: cited(raw, count),
        options=GenerationOptions(max_tokens=64, temperature=0.3),  # raised to the schema's need
        context=context,
        inputs={"query": query, "sources": [f"{s.kind}:{s.id}" for s in usable]},
        finish=finish,
        items_checked_by_caller=True,
        contributors=[s.owner_id for s in usable if s.owner_id is not None],
    )
    return Summary(
        generation_id=generation_id,
        query=query,
        answer=answer,
        sentences=safe,
        sources=usable,
        removed_sentences=removed,
        withheld=[s.id for s in withheld],
    )
