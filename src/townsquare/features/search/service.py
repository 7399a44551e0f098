"""Marketplace search (hybrid: full text + meaning, fused by reciprocal rank) and the retrieval
behind search result summaries. No HTTP here.

Hard filters (visibility, category, price, condition, distance) select the candidate ids in SQL
first; both rankers see only those ids, so a filter can never be traded for relevance.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from townsquare.backends.base import EmbeddingBackend, GenerationOptions, Message
from townsquare.errors import InvalidField
from townsquare.features.search.schemas import (
    ListingFilters,
    ListingHit,
    ListingResults,
    Source,
    Sources,
)
from townsquare.safety.pipeline import Context, GuardedText
from townsquare.social import access
from townsquare.storage.social_tables import Listing, Post, Reel
from townsquare.storage.tables import User
from townsquare.storage.vectors import VectorIndex

RRF_K = 60  # the usual constant of reciprocal rank fusion (Cormack et al., 2009)
CANDIDATES = 200  # per ranker, before fusion
WORD = re.compile(r"[\w']+", re.UNICODE)


def _words(query: str) -> list[str]:
    return [w.lower() for w in WORD.findall(query) if len(w) > 1 or w.isdigit()]


def fts_query(query: str) -> str | None:
    """An FTS5 MATCH expression: every word quoted (no operator injection), OR-ed for recall."""
    words = _words(query)
    return " OR ".join('"' + w.replace('"', "") + '"' for w in words) if words else None


def fulltext(db: Session, collection: str, query: str, limit: int) -> list[int]:
    """Item ids ranked by BM25 (SQLite FTS5) or ts_rank (PostgreSQL), best first."""
    if db.get_bind().dialect.name == "sqlite":
        match = fts_query(query)
        if match is None:
            return []
        rows = db.execute(
            text(
                "SELECT item_id FROM search_fts WHERE search_fts MATCH :q AND collection = :c "
                "ORDER BY bm25(search_fts, 0, 0, 4.0, 1.0) LIMIT :n"
            ),
            {"q": match, "c": collection, "n": limit},
        )
    else:
        rows = db.execute(
            text(
                "SELECT item_id FROM search_fts, websearch_to_tsquery('english', :q) query "
                "WHERE collection = :c AND to_tsvector('english', title || ' ' || body) @@ query "
                "ORDER BY ts_rank(to_tsvector('english', title || ' ' || body), query) DESC "
                "LIMIT :n"
            ),
            {"q": " OR ".join(_words(query)), "c": collection, "n": limit},
        )
    return [int(r[0]) for r in rows]


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


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(a))


def places(db: Session) -> dict[str, tuple[float, float]]:
    """Known place names (listing locations) and their mean coordinates."""
    rows = db.execute(
        select(Listing.location, func.avg(Listing.lat), func.avg(Listing.lon))
        .where(Listing.lat.is_not(None), Listing.location != "")
        .group_by(Listing.location)
    )
    return {name.lower(): (float(lat), float(lon)) for name, lat, lon in rows}


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
    known = places(db)
    if near.strip().lower() in known:
        return known[near.strip().lower()]
    names = ", ".join(sorted(n.title() for n in known)) or "none yet"
    raise InvalidField(
        f"near='{near}' is neither 'lat,lon' nor a known place. Known places: {names}.", "near"
    )


def categories(db: Session) -> list[str]:
    return sorted(db.scalars(select(Listing.category).distinct()))


def candidate_listings(
    db: Session, user: User, filters: ListingFilters
) -> tuple[list[int], dict[int, float]]:
    """Ids passing every hard filter (and their distance when ``near`` is given)."""
    query = select(Listing.id, Listing.lat, Listing.lon).where(
        Listing.status == "active", access.visible_listings(user)
    )
    if filters.category is not None:
        known = categories(db)
        if filters.category not in known:
            raise InvalidField(
                f"category='{filters.category}' is unknown. Use one of: {', '.join(known)}.",
                "category",
            )
        query = query.where(Listing.category == filters.category)
    if filters.min_price is not None:
        query = query.where(Listing.price_cents >= round(filters.min_price * 100))
    if filters.max_price is not None:
        query = query.where(Listing.price_cents <= round(filters.max_price * 100))
    if (
        filters.min_price is not None
        and filters.max_price is not None
        and filters.min_price > filters.max_price
    ):
        raise InvalidField("min_price is above max_price. Swap them.", "min_price")
    if filters.condition is not None:
        query = query.where(Listing.condition == filters.condition)
    distances: dict[int, float] = {}
    if filters.near is None:
        return list(db.scalars(query.with_only_columns(Listing.id))), distances
    lat0, lon0 = parse_near(db, filters.near)
    # a bounding box in SQL, the exact great-circle distance here
    dlat = filters.radius_km / 111.0
    dlon = filters.radius_km / (111.0 * max(0.01, math.cos(math.radians(lat0))))
    query = query.where(
        Listing.lat.between(lat0 - dlat, lat0 + dlat), Listing.lon.between(lon0 - dlon, lon0 + dlon)
    )
    ids = []
    for item_id, lat, lon in db.execute(query):
        if lat is None or lon is None:
            continue
        distance = haversine_km(lat0, lon0, lat, lon)
        if distance <= filters.radius_km:
            ids.append(item_id)
            distances[item_id] = distance
    return ids, distances


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


UNDERSTAND_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "max_price": {"type": ["number", "null"]},
        "min_price": {"type": ["number", "null"]},
        "near": {"type": ["string", "null"]},
        "condition": {
            "type": ["string", "null"],
            "enum": ["new", "like_new", "good", "fair", "for_parts", None],
        },
    },
    "required": ["max_price", "min_price", "near", "condition"],
}


async def understand(
    query: str, *, text_model: GuardedText, user: User, known_places: Sequence[str]
) -> dict[str, Any]:
    """Read filters from the query's wording ('under 150', 'near Alfama') with constrained
    JSON output. Only values that validate are kept."""
    prompt = (
        "Extract shopping filters from the search below. Use null when a filter is not stated.\n"
        f"Known places: {', '.join(known_places)}.\nSearch: {query}"
    )
    completion = await text_model.complete(
        [Message("user", prompt)],
        GenerationOptions(max_tokens=80, temperature=0.0, schema=UNDERSTAND_SCHEMA),
        Context("search.understand", user.id, user.role),
    )
    import json

    try:
        raw = json.loads(completion.text)
    except ValueError:
        return {}
    out: dict[str, Any] = {}
    for key in ("max_price", "min_price"):
        if isinstance(raw.get(key), int | float) and raw[key] >= 0:
            out[key] = float(raw[key])
    if isinstance(raw.get("near"), str) and raw["near"].lower() in {
        p.lower() for p in known_places
    }:
        out["near"] = raw["near"]
    if raw.get("condition") in {"new", "like_new", "good", "fair", "for_parts"}:
        out["condition"] = raw["condition"]
    return out


async def search_listings(
    db: Session,
    user: User,
    query: str,
    filters: ListingFilters,
    *,
    page: int,
    page_size: int,
    embedder: EmbeddingBackend,
    vectors: VectorIndex,
    understood: dict[str, Any] | None = None,
    min_similarity: float = 0.2,
    fulltext_weight: float = 0.5,
) -> ListingResults:
    """Hybrid search over the listings ``user`` may see, hard filters first."""
    ids, distances = candidate_listings(db, user, filters)
    results = ListingResults(
        query=query,
        page=page,
        page_size=page_size,
        total=0,
        filters=filters,
        understood=understood or {},
        data=[],
    )
    if not ids:
        return results
    allowed = set(ids)
    text_rank = [i for i in fulltext(db, "listings", query, CANDIDATES * 4) if i in allowed]
    query_vector = (await embedder.embed([query]))[0]
    vector_rank = [
        i
        for i, similarity in vectors.search("listings", query_vector, CANDIDATES, allowed=ids)
        if similarity >= min_similarity
    ]
    fused = rrf([text_rank[:CANDIDATES], vector_rank], [fulltext_weight, 1.0])
    ordered = sorted(fused, key=lambda i: (-fused[i], i))
    results.total = len(ordered)
    start = (page - 1) * page_size
    chosen = ordered[start : start + page_size]
    if not chosen:
        return results
    rows = {row.id: row for row in db.scalars(select(Listing).where(Listing.id.in_(chosen)))}
    words = _words(query)
    for item_id in chosen:
        listing = rows[item_id]
        results.data.append(
            ListingHit(
                id=listing.external_id,
                title=listing.title,
                price=f"{listing.price_cents / 100:.2f}",
                currency=listing.currency,
                category=listing.category,
                condition=listing.condition,
                location=listing.location,
                attributes=listing.attributes,
                score=round(fused[item_id], 6),
                matched=_matched(listing, words),
                distance_km=round(distances[item_id], 2) if item_id in distances else None,
            )
        )
    return results


async def retrieve_sources(
    db: Session,
    user: User,
    query: str,
    *,
    limit: int,
    embedder: EmbeddingBackend,
    vectors: VectorIndex,
    min_similarity: float = 0.2,
    fulltext_weight: float = 0.5,
) -> Sources:
    """The best items for ``query`` across listings, public or visible posts and reels, as
    numbered sources for a summary (each ranked by fused full-text and vector rank)."""
    query_vector = (await embedder.embed([query]))[0]
    scored: list[tuple[float, str, Any]] = []
    for collection, kind, table, condition in (
        (
            "listings",
            "listing",
            Listing,
            (Listing.status == "active") & access.visible_listings(user),
        ),
        ("posts", "post", Post, access.visible_posts(user)),
        ("reels", "reel", Reel, access.visible_reels(user)),
    ):
        allowed = list(db.scalars(select(table.id).where(condition)))
        if not allowed:
            continue
        allowed_set = set(allowed)
        text_rank = [i for i in fulltext(db, collection, query, 200) if i in allowed_set][:50]
        vector_hits = [
            hit
            for hit in vectors.search(collection, query_vector, 50, allowed=allowed)
            if hit[1] >= min_similarity
        ]
        fused = rrf([text_rank, [i for i, _ in vector_hits]], [fulltext_weight, 1.0])
        similarity = dict(vector_hits)
        for item_id, score in fused.items():
            # RRF ranks within a collection; cosine similarity breaks ties across collections
            scored.append((score + 0.001 * similarity.get(item_id, 0.0), kind, item_id))
    scored.sort(key=lambda s: -s[0])
    sources = []
    for n, (score, kind, item_id) in enumerate(scored[:limit], start=1):
        sources.append(_source(db, n, kind, item_id, score))
    return Sources(query=query, sources=sources)


def _source(db: Session, n: int, kind: str, item_id: int, score: float) -> Source:
    if kind == "listing":
        listing = db.get(Listing, item_id)
        assert listing is not None
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
        )
    if kind == "post":
        post = db.get(Post, item_id)
        assert post is not None
        return Source(
            n=n,
            kind="post",
            id=post.external_id,
            title=post.text[:80],
            snippet=post.text[:300],
            url=f"/api/posts/{post.external_id}",
            score=score,
        )
    reel = db.get(Reel, item_id)
    assert reel is not None
    return Source(
        n=n,
        kind="reel",
        id=reel.external_id,
        title=reel.caption,
        snippet=reel.transcript[:300],
        url=f"/api/reels/{reel.external_id}",
        score=score,
    )
