"""Keeps the search indexes (vectors and full text) in step with listings, posts and reels.

``sync`` compares each item's content hash with the one stored beside its vector and embeds
only what changed, so it is cheap to call after every ingestion, and a rebuild that stops half
way resumes where it stopped. Items that no longer exist are removed from both indexes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from townsquare.backends.base import EmbeddingBackend
from townsquare.storage.fulltext import Document as TextDocument
from townsquare.storage.fulltext import FullText
from townsquare.storage.fulltext import for_dialect as fulltext_for
from townsquare.storage.social_tables import Listing, Post, Reel
from townsquare.storage.vectors import VectorIndex, attrs_hash

COLLECTIONS = ("listings", "posts", "reels")
TABLES: dict[str, Any] = {"listings": Listing, "posts": Post, "reels": Reel}


@dataclass(frozen=True)
class Document:
    item_id: int
    title: str
    body: str
    attrs: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def content_hash(self) -> str:
        """A hash of what is embedded and indexed: unchanged items are skipped on sync."""
        return hashlib.sha256(f"{self.title}\n{self.body}".encode()).hexdigest()[:32]

    @property
    def text(self) -> str:
        """The text that is embedded (title and body)."""
        return f"{self.title}. {self.body}"


def listing_body(listing: Listing) -> str:
    """A listing's searchable text beyond its title: category, condition, place and attributes."""
    attributes = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in listing.attributes.items())
    condition = listing.condition.replace("_", " ")
    return f"{listing.category}; {condition}; {attributes}; {listing.location}"


def listing_attrs(listing: Listing) -> dict[str, Any]:
    """What search filters and visibility rules read, kept beside the listing's vector."""
    return {
        "status": listing.status,
        "seller_id": listing.seller_id,
        "category": listing.category,
        "condition": listing.condition,
        "price_cents": listing.price_cents,
        "lat": listing.lat,
        "lon": listing.lon,
        "location": listing.location,
    }


def post_attrs(post: Post) -> dict[str, Any]:
    """The filter metadata stored beside a post's vector (visibility by group)."""
    return {"group_id": post.group_id, "author_id": post.author_id}


def reel_attrs(reel: Reel) -> dict[str, Any]:
    """The filter metadata stored beside a reel's vector (visibility, group, creator)."""
    return {"visibility": reel.visibility, "group_id": reel.group_id, "creator_id": reel.creator_id}


def documents(db: Session, collection: str, ids: Iterable[int] | None = None) -> list[Document]:
    """The searchable text and metadata of items (all of a collection, or the given ids)."""
    table: Any = TABLES[collection]
    query = select(table).order_by(table.id)
    if ids is not None:
        query = query.where(table.id.in_(list(ids)))
    docs = []
    for item in db.scalars(query):
        if isinstance(item, Listing):
            docs.append(Document(item.id, item.title, listing_body(item), listing_attrs(item)))
        elif isinstance(item, Post):
            docs.append(Document(item.id, item.text[:120], item.text, post_attrs(item)))
        else:
            tags = " ".join(f"#{t}" for t in item.tags)
            docs.append(
                Document(item.id, item.caption, f"{item.transcript} {tags}", reel_attrs(item))
            )
    return docs


class Indexer:
    """Embeds and indexes items, keeps their metadata current, removes what is gone."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        embedder: EmbeddingBackend,
        vectors: VectorIndex,
        *,
        batch_size: int = 256,
    ) -> None:
        self.sessions = sessions
        self.embedder = embedder
        self.vectors = vectors
        self.batch_size = batch_size

    def sync(
        self,
        collection: str,
        ids: Iterable[int] | None = None,
        progress: Callable[[int, int], None] | None = None,
        *,
        force: bool = False,
    ) -> dict[str, int]:
        """Index new and changed items (of ``ids``, or of the whole collection), update changed
        metadata, drop missing ones. Work is proportional to ``ids`` when given. ``force``
        embeds every item again (a new embedding model)."""
        wanted = None if ids is None else {int(i) for i in ids}
        with self.sessions() as db:
            docs = documents(db, collection, wanted)
        present = {d.item_id for d in docs}
        stored = self.vectors.state(collection, present)
        changed = [d for d in docs if force or stored.get(d.item_id, ("", ""))[0] != d.content_hash]
        moved = [
            d
            for d in docs
            if d.item_id in stored
            and not force
            and stored[d.item_id][0] == d.content_hash
            and stored[d.item_id][1] != attrs_hash(d.attrs)
        ]
        if wanted is None:
            gone = sorted(set(self.vectors.hashes(collection)) - present)
        else:
            gone = sorted(set(self.vectors.state(collection, wanted - present)))
        if gone:
            self.remove(collection, gone)
        if moved:
            self.vectors.set_attrs(collection, [d.item_id for d in moved], [d.attrs for d in moved])
        done = 0
        for start in range(0, len(changed), self.batch_size):
            batch = changed[start : start + self.batch_size]
            vectors = self.embedder.embed_sync([d.text for d in batch])  # (n, d)
            self.vectors.upsert(
                collection,
                [d.item_id for d in batch],
                vectors,
                [d.content_hash for d in batch],
                [d.attrs for d in batch],
            )
            self._fulltext_upsert(collection, batch)
            done += len(batch)
            if progress is not None:
                progress(done, len(changed))
        return {
            "indexed": len(changed),
            "updated": len(moved),
            "removed": len(gone),
            "unchanged": len(docs) - len(changed) - len(moved),
        }

    def sync_all(self) -> dict[str, dict[str, int]]:
        """Compare every item with the index and repair differences (start-up, rebuilds)."""
        return {collection: self.sync(collection) for collection in COLLECTIONS}

    def remove(self, collection: str, ids: Iterable[int]) -> None:
        """Drop items from both indexes (after they were deleted)."""
        ids = sorted({int(i) for i in ids})
        if ids:
            self.vectors.delete(collection, ids)
            self._fulltext_delete(collection, ids)

    def _fulltext(self, db: Session) -> FullText:
        return fulltext_for(db.get_bind().dialect.name, COLLECTIONS)

    def _fulltext_delete(self, collection: str, ids: list[int]) -> None:
        with self.sessions.begin() as db:
            self._fulltext(db).delete(db, collection, ids)

    def _fulltext_upsert(self, collection: str, docs: list[Document]) -> None:
        with self.sessions.begin() as db:
            engine = self._fulltext(db)
            engine.delete(db, collection, [d.item_id for d in docs])
            engine.insert(db, collection, [TextDocument(d.item_id, d.title, d.body) for d in docs])
