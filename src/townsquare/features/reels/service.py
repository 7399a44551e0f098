"""Reel recommendations: relevance to what is being talked about, blended with the member's
interest profile, diversified by maximal marginal relevance (MMR).

- Candidates are only reels the member may see (``access.visible_reels``), minus the ones they
  have already seen or hidden: that is a hard filter, applied before ranking.
- The profile is a weighted mean of the vectors of reels the member liked (+1), saved (+1.5) or
  watched most of (+0.5), minus those they hid (-1).
- MMR (Carbonell & Goldstein, 1998) picks, one at a time, the reel that best trades relevance
  against similarity to the reels already picked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from townsquare.backends.base import EmbeddingBackend
from townsquare.social import access
from townsquare.storage.social_tables import Interaction, Reel
from townsquare.storage.tables import User
from townsquare.storage.vectors import VectorIndex, Vectors

WEIGHTS = {"like": 1.0, "save": 1.5, "hide": -1.0}
LONG_VIEW = 0.6  # share of the reel watched that counts as interest
CONTEXT_WEIGHT = 0.7  # of the query vector, when there is context text
MMR_LAMBDA = 0.7
DUPLICATE = 0.98  # a candidate this similar to a pick is the same content (a repost): skipped
HISTORY = 200  # most recent interactions that make up the profile


class ReelCard(BaseModel):
    id: str
    caption: str
    creator: str
    url: str
    tags: list[str]
    duration_s: float
    score: float


class Recommendations(BaseModel):
    context: str
    data: list[ReelCard]


@dataclass(frozen=True)
class Profile:
    vector: Vectors | None
    seen: set[int]
    hidden: set[int]


def profile(db: Session, user: User, vectors: VectorIndex, *, history: int = HISTORY) -> Profile:
    """The member's taste from their ``history`` most recent reel interactions: one query for
    the interactions, one index read for the vectors."""
    rows = db.execute(
        select(Interaction.target_id, Interaction.action, Interaction.value, Reel.duration_s)
        .join(Reel, Reel.id == Interaction.target_id)
        .where(Interaction.user_id == user.id, Interaction.target_kind == "reel")
        .order_by(Interaction.id.desc())
        .limit(history)
    ).all()
    weights: dict[int, float] = {}
    seen, hidden = set(), set()
    for reel_id, action, value, duration in rows:
        seen.add(reel_id)
        if action == "hide":
            hidden.add(reel_id)
        weight = WEIGHTS.get(action, 0.0)
        if action == "view" and value is not None and duration and value / duration >= LONG_VIEW:
            weight = 0.5
        if weight:
            weights[reel_id] = weights.get(reel_id, 0.0) + weight
    stored = vectors.vectors("reels", weights)
    total = None
    for reel_id, weight in weights.items():
        vector = stored.get(reel_id)
        if vector is not None:
            total = weight * vector if total is None else total + weight * vector
    if total is not None:
        norm = float(np.linalg.norm(total))
        total = total / norm if norm > 0 else None
    return Profile(total, seen, hidden)


def mmr(query: Vectors, candidates: list[tuple[int, Vectors]], k: int) -> list[tuple[int, float]]:
    """Pick ``k`` of ``candidates`` by maximal marginal relevance; returns (id, relevance).

    Near-duplicates of a picked item are skipped outright.
    """
    picked: list[tuple[int, float]] = []
    chosen: list[Vectors] = []
    pool = [(i, v, float(v @ query)) for i, v in candidates]
    while pool and len(picked) < k:

        def gain(entry: tuple[int, Vectors, float]) -> float:
            redundancy = max((float(entry[1] @ c) for c in chosen), default=0.0)
            return MMR_LAMBDA * entry[2] - (1 - MMR_LAMBDA) * redundancy

        best = max(pool, key=gain)
        pool.remove(best)
        if any(float(best[1] @ c) >= DUPLICATE for c in chosen):
            continue
        picked.append((best[0], best[2]))
        chosen.append(best[1])
    return picked


def recommend_reels(
    db: Session,
    user: User,
    context: str,
    *,
    limit: int,
    embedder: EmbeddingBackend,
    vectors: VectorIndex,
) -> Recommendations:
    """Reels for ``user`` that fit ``context`` (may be empty) and their interests.

    A constant number of queries whatever the number of reels: interactions, memberships, the
    picked reels and their creators; visibility and exclusions are filters inside the index.
    """
    mine = profile(db, user, vectors)
    groups = access.member_group_ids(db, user)
    where = access.reels_filter(user, groups)
    exclude = mine.seen | mine.hidden
    query: Vectors | None = None
    if context.strip():
        query = embedder.embed_sync([context])[0]
        if mine.vector is not None:
            query = CONTEXT_WEIGHT * query + (1 - CONTEXT_WEIGHT) * mine.vector
    elif mine.vector is not None:
        query = mine.vector
    if query is None:  # nothing to go on: the newest reels
        newest = list(
            db.scalars(
                select(Reel)
                .where(access.visible_reels(user), Reel.id.not_in(exclude or {-1}))
                .order_by(Reel.created_at.desc(), Reel.id.desc())
                .limit(limit)
            )
        )
        return Recommendations(context=context, data=_cards(db, [(r, 0.0) for r in newest]))
    query = query / max(float(np.linalg.norm(query)), 1e-9)
    hits = vectors.search("reels", query, max(limit * 5, 20), where, exclude)
    stored = vectors.vectors("reels", [i for i, _ in hits])
    picked = mmr(query, [(i, stored[i]) for i, _ in hits if i in stored], limit)
    reels = {r.id: r for r in db.scalars(select(Reel).where(Reel.id.in_([i for i, _ in picked])))}
    return Recommendations(
        context=context,
        data=_cards(db, [(reels[i], score) for i, score in picked if i in reels]),
    )


def _cards(db: Session, picked: list[tuple[Reel, float]]) -> list[ReelCard]:
    creators = {
        u.id: u
        for u in db.scalars(select(User).where(User.id.in_({r.creator_id for r, _ in picked})))
    }
    cards = []
    for reel, score in picked:
        creator = creators.get(reel.creator_id)
        cards.append(
            ReelCard(
                id=reel.external_id,
                caption=reel.caption,
                creator=(creator.display_name or creator.name) if creator else "",
                url=reel.media_url,
                tags=reel.tags,
                duration_s=reel.duration_s,
                score=round(score, 4),
            )
        )
    return cards
