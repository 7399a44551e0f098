"""Marketplace search (hybrid: full text + meaning, fused by reciprocal rank) and the retrieval
behind search result summaries. No HTTP here; plain functions, run on worker threads.

Hard filters (visibility, category, price, condition, distance) are ``storage/filters.py``
expressions over the metadata the index keeps beside each vector, applied inside the index
before ranking, so a filter can never be traded for relevance and no request loads the ids of
every listing it may see. Full text returns at most ``search.fulltext_candidates`` best matches,
which the same filter then narrows.
"""

from __future__ import annotations

import json
import re
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar, cast

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from townsquare.backends.base import EmbeddingBackend, GenerationOptions, Message
from townsquare.errors import BackendError, InvalidField
from townsquare.features.search.indexer import COLLECTIONS
from townsquare.features.search.query import fold, infer_category, read_filters
from townsquare.features.search.schemas import (
    Alternative,
    ListingFilters,
    ListingHit,
    ListingResults,
    Source,
    Sources,
)
from townsquare.safety.pipeline import Context, GuardedText
from townsquare.settings import SearchSettings
from townsquare.social import access
from townsquare.social.schemas import CONDITIONS, MAX_PRICE
from townsquare.storage.filters import Eq, Filter, In, Near, Range, all_of, haversine_km
from townsquare.storage.fulltext import for_dialect as fulltext_for
from townsquare.storage.social_tables import Listing, Post, Reel
from townsquare.storage.tables import User
from townsquare.storage.vectors import VectorIndex

T = TypeVar("T")

RRF_K = 60  # the usual constant of reciprocal rank fusion (Cormack et al., 2009)
CANDIDATES = 200  # per ranker, before fusion
WORD = re.compile(r"[\w']+", re.UNICODE)


def _words(query: str) -> list[str]:
    return [w.lower() for w in WORD.findall(query) if len(w) > 1 or w.isdigit()]


def fulltext(db: Session, collection: str, query: str, limit: int) -> list[int]:
    """Item ids ranked by the database's full-text engine (``storage/fulltext.py``), best
    first, among the ``limit`` newest matches."""
    engine = fulltext_for(db.get_bind().dialect.name, COLLECTIONS)
    return engine.search(db, collection, query, limit)


def rrf(
    rankings: Sequence[Sequence[int]], weights: Sequence[float] | None = None
) -> dict[int, float]:
    """Weighted reciprocal rank fusion of several best-first rankings."""
    scores: dict[int, float] = {}
    for n, ranking in enumerate(rankings):
        weight = 1.0 if weights is None else weights[n]
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (RRF_K + rank)
    return scores


_cache: weakref.WeakKeyDictionary[Any, dict[str, tuple[float, Any]]] = weakref.WeakKeyDictionary()
_cache_lock = threading.Lock()
CACHE_S = 30.0  # place names and categories change rarely; recomputing them is O(listings)
MISS_S = 1.0  # a name the cache lacks may be new: recompute, at most this often


def _cached(owner: Any, name: str, compute: Callable[[], T], wanted: str | None = None) -> T:
    """``compute()`` at most every ``CACHE_S`` seconds per owner (amortised: flat per request),
    sooner when ``wanted`` is missing from the cached value (a category ingested a moment ago
    must not be refused for half a minute)."""
    now = time.monotonic()
    with _cache_lock:
        hit = _cache.setdefault(owner, {}).get(name)
    if hit is not None:
        age, value = now - hit[0], hit[1]
        if age < MISS_S or (age < CACHE_S and (wanted is None or wanted in value)):
            return cast(T, value)
    value = compute()
    with _cache_lock:
        _cache[owner][name] = (now, value)
    return value


class Place(NamedTuple):
    """A place listings name, as they spell it, and its mean coordinates."""

    name: str
    lat: float
    lon: float


def places(db: Session, wanted: str | None = None) -> dict[str, Place]:
    """Known places (listing locations) by lower-case name (cached; refreshed early when
    ``wanted`` is not among them)."""

    def compute() -> dict[str, Place]:
        rows = db.execute(
            select(Listing.location, func.avg(Listing.lat), func.avg(Listing.lon))
            .where(Listing.lat.is_not(None), Listing.location != "")
            .group_by(Listing.location)
        )
        return {name.lower(): Place(name, float(lat), float(lon)) for name, lat, lon in rows}

    return _cached(db.get_bind(), "places", compute, wanted)


def place_names(db: Session) -> list[str]:
    """Known place names as the listings spell them ('Alfama', 'Príncipe Real'), sorted."""
    return sorted(p.name for p in places(db).values())


def parse_near(db: Session, near: str) -> tuple[float, float]:
    """'38.71,-9.13' or a known place name -> (lat, lon); otherwise 422 listing the places."""
    parts = [p.strip() for p in near.split(",")]
    if len(parts) == 2:
        try:
            lat, lon = float(parts[0]), float(parts[1])
        except ValueError:
            pass
        else:
            if -90 <= lat <= 90 and -180 <= lon <= 180:
                return lat, lon
    name = near.strip().lower()
    known = places(db, name)
    if name in known:
        return known[name].lat, known[name].lon
    names = ", ".join(sorted(p.name for p in known.values())) or "none yet"
    raise InvalidField(
        f"near='{near}' is neither 'lat,lon' nor a known place. Known places: {names}.", "near"
    )


def categories(vectors: VectorIndex, wanted: str | None = None) -> list[str]:
    """The listing categories the index knows (cached like ``places``)."""
    return _cached(vectors, "categories", lambda: vectors.values("listings", "category"), wanted)


def category_of(
    embedder: EmbeddingBackend,
    vectors: VectorIndex,
    tuning: SearchSettings,
    core: str,
    *,
    min_similarity: float | None = None,
    use_named: bool = True,
) -> str | None:
    """The category a search's core words ask for (``query.infer_category`` with the
    settings' neighbours, share and margin), among the categories the index knows; the nearest
    listing must be ``min_similarity`` similar (default: ``search.category_floor``; the
    router's marketplace cue asks for ``search.category_similarity`` and the neighbours'
    agreement alone, ``use_named=False``)."""
    return infer_category(
        core,
        known=categories(vectors),
        embedder=embedder,
        vectors=vectors,
        neighbours=tuning.category_neighbours,
        share=tuning.category_share,
        min_similarity=tuning.category_floor if min_similarity is None else min_similarity,
        margin=tuning.category_margin,
        use_named=use_named,
    )


def listing_filter(
    user: User, filters: ListingFilters, vectors: VectorIndex, near: tuple[float, float] | None
) -> Filter:
    """Every hard filter of a listing search as one index filter (422 on a bad one); ``near``
    is ``filters.near`` parsed by ``parse_near``."""
    parts: list[Filter] = [Eq("status", "active"), access.listings_filter(user)]
    if filters.category is not None:
        known = categories(vectors, filters.category)
        if filters.category not in known:
            raise InvalidField(
                f"category='{filters.category}' is unknown. Use one of: {', '.join(known)}.",
                "category",
            )
        parts.append(Eq("category", filters.category))
    if (
        filters.min_price is not None
        and filters.max_price is not None
        and filters.min_price > filters.max_price
    ):
        raise InvalidField("min_price is above max_price. Swap them.", "min_price")
    if filters.min_price is not None or filters.max_price is not None:
        parts.append(
            Range(
                "price_cents",
                None if filters.min_price is None else round(filters.min_price * 100),
                None if filters.max_price is None else round(filters.max_price * 100),
            )
        )
    if filters.condition:
        parts.append(In("condition", tuple(filters.condition)))
    if near is not None:
        parts.append(Near(near[0], near[1], filters.radius_km))
    return all_of(*parts)


def _matched(listing: Listing, words: list[str]) -> list[str]:
    fields = {
        "title": listing.title,
        "category": listing.category,
        "condition": listing.condition,
        "location": listing.location,
        **{f"attributes.{k}": str(v) for k, v in listing.attributes.items()},
    }
    found = []
    for name, value in fields.items():
        tokens = set(_words(value))
        if any(
            w in tokens or (len(w) > 3 and any(t.startswith(w[:4]) for t in tokens)) for w in words
        ):
            found.append(name)
    return found or ["meaning"]


def understand_schema(known_places: Sequence[str]) -> dict[str, Any]:
    """The JSON the model may answer: every value it could give is a valid filter."""
    return {
        "type": "object",
        "properties": {
            "max_price": {"type": ["number", "null"], "minimum": 0, "maximum": MAX_PRICE},
            "min_price": {"type": ["number", "null"], "minimum": 0, "maximum": MAX_PRICE},
            "near": {"enum": [*known_places, None]},
            "condition": {"enum": [*CONDITIONS, None]},
        },
        "required": ["max_price", "min_price", "near", "condition"],
        "additionalProperties": False,
    }


async def understand(
    query: str, *, text_model: GuardedText, user: User, known_places: Sequence[str]
) -> dict[str, Any]:
    """Read filters from the query's wording ('under 150', 'near Alfama'): rules first
    (``read_filters``), then the model for what the rules left unread, with constrained JSON
    whose every allowed value is a valid filter. The rules win where both read something."""
    ruled = read_filters(query, known_places)
    if len(ruled) == 4 or not known_places:
        return ruled
    prompt = (
        "Extract shopping filters from the search below. Use null when a filter is not stated.\n"
        f"Known places: {', '.join(known_places)}.\nSearch: {query}"
    )
    try:
        completion = await text_model.complete(
            [Message("user", prompt)],
            GenerationOptions(
                max_tokens=120, temperature=0.0, schema=understand_schema(known_places)
            ),
            Context("search.understand", user.id, user.role, subject=(query,)),
        )
        raw = json.loads(completion.text)
    except (ValueError, BackendError):  # the rules' reading stands on its own
        return ruled
    out: dict[str, Any] = {}
    read = {ruled.get("max_price"), ruled.get("min_price")}
    for key in ("max_price", "min_price"):
        value = raw.get(key)
        # the model only adds a price the words contain and the rules did not already read
        # ('under 150' is not also 'at least 150'): a small model invents them otherwise
        if (
            isinstance(value, int | float)
            and 0 <= value <= MAX_PRICE
            and _said(value, query)
            and float(value) not in read
        ):
            out[key] = float(value)
    if raw.get("near") in known_places and fold(str(raw["near"])) in fold(query):
        out["near"] = raw["near"]
    return {**out, **ruled}


def _said(value: float, query: str) -> bool:
    return any(float(n.replace(",", ".")) == value for n in re.findall(r"\d+(?:[.,]\d+)?", query))


def search_listings(
    db: Session,
    user: User,
    query: str,
    filters: ListingFilters,
    *,
    page: int,
    page_size: int,
    embedder: EmbeddingBackend,
    vectors: VectorIndex,
    tuning: SearchSettings,
    understood: dict[str, Any] | None = None,
    words: str | None = None,
) -> ListingResults:
    """Hybrid search over the listings ``user`` may see, hard filters inside the index
    (``tuning``: the similarity floor, the full-text weight and candidates).

    ``words`` are what is searched when the filters were read from ``query`` (its core words);
    empty words mean the query was only filters: the filtered list, nearest first. When no
    result of the first page is what was searched for (no word of it in the title or
    attributes, and a similarity under ``tuning.match_similarity``), ``nothing_matches`` is
    set and the nearest matching items outside the filters come as ``alternatives``."""
    searched = query if words is None else words
    near = parse_near(db, filters.near) if filters.near is not None else None
    where = listing_filter(user, filters, vectors, near)
    results = ListingResults(
        query=query,
        searched=searched,
        page=page,
        page_size=page_size,
        total=0,
        filters=filters,
        understood=understood or {},
        data=[],
    )
    only_filters = not searched.strip()
    query_vector = embedder.embed_sync([searched or query])[0]
    ranked = _rank(db, vectors, searched, query_vector, where, tuning, only_filters)
    results.total = len(ranked.order)
    start = (page - 1) * page_size
    terms = _words(searched)
    found = _hits(db, ranked, ranked.order[start : start + page_size], terms, near)
    results.data = [hit for hit, _ in found]
    if only_filters or page != 1 or any(_is_match(h, sim, tuning) for h, sim in found):
        return results
    results.nothing_matches = True
    if tuning.alternatives:
        loose = listing_filter(user, ListingFilters(), vectors, None)
        around = _rank(db, vectors, searched, query_vector, loose, tuning, False)
        shown = {h.id for h in results.data}
        wide = around.order[: 4 * tuning.alternatives + 4]
        for hit, sim in _hits(db, around, wide, terms, near):
            outside = _outside(hit, filters, near)
            if hit.id in shown or not outside or not _is_match(hit, sim, tuning):
                continue
            results.alternatives.append(Alternative(**hit.model_dump(), outside=outside))
            if len(results.alternatives) == tuning.alternatives:
                break
    return results


class _Ranked(NamedTuple):
    order: list[int]  # listing ids, best first
    fused: dict[int, float]  # reciprocal-rank-fusion score
    similarity: dict[int, float]  # cosine similarity of the vector hits


def _rank(
    db: Session,
    vectors: VectorIndex,
    words: str,
    query_vector: Any,
    where: Filter,
    tuning: SearchSettings,
    only_filters: bool,
) -> _Ranked:
    """Listing ids inside ``where`` by fused full-text and vector rank (no full text and no
    similarity floor when the search is only filters)."""
    text_rank = []
    if not only_filters:
        matches = fulltext(db, "listings", words, tuning.fulltext_candidates)
        text_rank = vectors.filter_ids("listings", matches, where)[:CANDIDATES]
    vector_hits = vectors.search("listings", query_vector, CANDIDATES, where)
    floor = -1.0 if only_filters else tuning.min_similarity
    vector_rank = [i for i, similarity in vector_hits if similarity >= floor]
    fused = rrf([text_rank, vector_rank], [tuning.fulltext_weight, 1.0])
    order = sorted(fused, key=lambda i: (-fused[i], i))
    return _Ranked(order, fused, {i: float(sim) for i, sim in vector_hits})


def _hits(
    db: Session,
    ranked: _Ranked,
    chosen: list[int],
    terms: list[str],
    near: tuple[float, float] | None,
) -> list[tuple[ListingHit, float]]:
    """The hits of ``chosen`` (in order) with their vector similarity."""
    if not chosen:
        return []
    rows = {row.id: row for row in db.scalars(select(Listing).where(Listing.id.in_(chosen)))}
    out = []
    for item_id in chosen:
        listing = rows.get(item_id)
        if listing is None:  # deleted since it was indexed
            continue
        distance = None
        if near is not None and listing.lat is not None and listing.lon is not None:
            distance = round(float(haversine_km(listing.lat, listing.lon, *near)), 2)
        hit = ListingHit(
            id=listing.external_id,
            title=listing.title,
            price=f"{listing.price_cents / 100:.2f}",
            currency=listing.currency,
            category=listing.category,
            condition=listing.condition,
            location=listing.location,
            attributes=listing.attributes,
            score=round(ranked.fused[item_id], 6),
            matched=_matched(listing, terms),
            distance_km=distance,
        )
        out.append((hit, ranked.similarity.get(item_id, 0.0)))
    return out


def _is_match(hit: ListingHit, similarity: float, tuning: SearchSettings) -> bool:
    """The hit is what was searched for: a word of the search in its title or attributes, or
    close enough in meaning."""
    named = any(f == "title" or f.startswith("attributes.") for f in hit.matched)
    return named or similarity >= tuning.match_similarity


def _outside(
    hit: ListingHit, filters: ListingFilters, near: tuple[float, float] | None
) -> list[str]:
    """The filters ``hit`` does not meet, in words ('over €40')."""
    out = []
    price = float(hit.price)
    if filters.max_price is not None and price > filters.max_price:
        out.append(f"over €{filters.max_price:g}")
    if filters.min_price is not None and price < filters.min_price:
        out.append(f"under €{filters.min_price:g}")
    if filters.condition and hit.condition not in filters.condition:
        out.append(hit.condition.replace("_", " "))
    if filters.category is not None and hit.category != filters.category:
        out.append(f"in {hit.category}")
    if near is not None and (hit.distance_km is None or hit.distance_km > filters.radius_km):
        out.append(f"not near {filters.near}")
    return out


def retrieve_sources(
    db: Session,
    user: User,
    query: str,
    *,
    limit: int,
    embedder: EmbeddingBackend,
    vectors: VectorIndex,
    tuning: SearchSettings,
    filters: ListingFilters | None = None,
) -> Sources:
    """The best items for ``query`` across listings, public or visible posts and reels, as
    numbered sources for a summary (each ranked by fused full-text and vector rank); with
    ``filters`` (the member's marketplace filters), only listings inside them."""
    query_vector = embedder.embed_sync([query])[0]
    groups = access.member_group_ids(db, user)
    if filters is None:
        listings_where = all_of(Eq("status", "active"), access.listings_filter(user))
    else:
        near = parse_near(db, filters.near) if filters.near is not None else None
        listings_where = listing_filter(user, filters, vectors, near)
    scored: list[tuple[float, str, Any]] = []
    for collection, kind, where in (
        ("listings", "listing", listings_where),
        ("posts", "post", access.posts_filter(user, groups)),
        ("reels", "reel", access.reels_filter(user, groups)),
    ):
        matches = fulltext(db, collection, query, tuning.fulltext_candidates)
        text_rank = vectors.filter_ids(collection, matches, where)[:50]
        vector_hits = [
            hit
            for hit in vectors.search(collection, query_vector, 50, where)
            if hit[1] >= tuning.min_similarity
        ]
        fused = rrf([text_rank, [i for i, _ in vector_hits]], [tuning.fulltext_weight, 1.0])
        similarity = dict(vector_hits)
        for item_id, score in fused.items():
            # RRF ranks within a collection; cosine similarity breaks ties across collections
            scored.append((score + 0.001 * similarity.get(item_id, 0.0), kind, item_id))
    scored.sort(key=lambda s: -s[0])
    # the rows of the best few, one query per kind (a few spare for items deleted meanwhile)
    best = scored[: limit + 4]
    tables: dict[str, Any] = {"listing": Listing, "post": Post, "reel": Reel}
    rows: dict[tuple[str, int], Any] = {}
    for kind, table in tables.items():
        wanted = [item_id for _, k, item_id in best if k == kind]
        if wanted:
            rows.update(
                ((kind, r.id), r) for r in db.scalars(select(table).where(table.id.in_(wanted)))
            )
    sources: list[Source] = []
    for score, kind, item_id in best:
        row = rows.get((kind, item_id))
        if row is not None and len(sources) < limit:  # None: deleted since it was indexed
            sources.append(_source(len(sources) + 1, row, score))
    return Sources(query=query, sources=sources)


def _source(n: int, item: Listing | Post | Reel, score: float) -> Source:
    if isinstance(item, Listing):
        listing = item
        attributes = ", ".join(f"{k}: {v}" for k, v in listing.attributes.items())
        condition = listing.condition.replace("_", " ")
        price = f"{listing.price_cents / 100:.2f} {listing.currency}"
        snippet = f"{price}, {condition}, {listing.location}. {attributes}"
        return Source(
            n=n,
            kind="listing",
            id=listing.external_id,
            title=listing.title,
            snippet=snippet[:300],
            url=f"/api/listings/{listing.external_id}",
            score=score,
            owner_id=listing.seller_id,
        )
    if isinstance(item, Post):
        post = item
        return Source(
            n=n,
            kind="post",
            id=post.external_id,
            title=post.text[:80],
            snippet=post.text[:300],
            url=f"/api/posts/{post.external_id}",
            score=score,
            owner_id=post.author_id,
        )
    reel = item
    return Source(
        n=n,
        kind="reel",
        id=reel.external_id,
        title=reel.caption,
        snippet=reel.transcript[:300],
        url=f"/api/reels/{reel.external_id}",
        score=score,
        owner_id=reel.creator_id,
    )
