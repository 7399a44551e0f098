"""Keeps the search indexes (vectors and full text) in step with listings, posts and reels.

``sync`` compares each item's content hash with the one stored beside its vector and embeds
only what changed, so it is cheap to call after every ingestion, and a rebuild that stops half
way resumes where it stopped. Items that no longer exist are removed from both indexes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from townsquare.backends.base import EmbeddingBackend
from townsquare.storage.social_tables import Listing, Post, Reel
from townsquare.storage.vectors import VectorIndex

COLLECTIONS = ("listings", "posts", "reels")


@dataclass(frozen=True)
class Document:
    item_id: int
    title: str
    body: str

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(f"{self.title}\n{self.body}".encode()).hexdigest()[:32]

    @property
    def text(self) -> str:
        return f"{self.title}. {self.body}"


def listing_body(listing: Listing) -> str:
    attributes = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in listing.attributes.items())
    condition = listing.condition.replace("_", " ")
    return f"{listing.category}; {condition}; {attributes}; {listing.location}"


def documents(db: Session, collection: str, ids: Iterable[int] | None = None) -> list[Document]:
    """The searchable text of items (all of a collection, or the given ids)."""
    table: Any = {"listings": Listing, "posts": Post, "reels": Reel}[collection]
    query = select(table).order_by(table.id)
    if ids is not None:
        query = query.where(table.id.in_(list(ids)))
    docs = []
    for item in db.scalars(query):
        if isinstance(item, Listing):
            docs.append(Document(item.id, item.title, listing_body(item)))
        elif isinstance(item, Post):
            docs.append(Document(item.id, item.text[:120], item.text))
        else:
            tags = " ".join(f"#{t}" for t in item.tags)
            docs.append(Document(item.id, item.caption, f"{item.transcript} {tags}"))
    return docs


class Indexer:
    """Embeds and indexes items; removes what is gone."""

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
    ) -> dict[str, int]:
        """Index new and changed items, drop missing ones. Returns counts."""
        wanted = None if ids is None else set(ids)
        with self.sessions() as db:
            docs = documents(db, collection, wanted)
        stored = self.vectors.hashes(collection)
        changed = [d for d in docs if stored.get(d.item_id) != d.content_hash]
        present = {d.item_id for d in docs}
        scope = set(stored) if wanted is None else wanted
        gone = sorted(i for i in scope if i not in present and i in stored)
        if gone:
            self.vectors.delete(collection, gone)
            self._fulltext_delete(collection, gone)
        done = 0
        for start in range(0, len(changed), self.batch_size):
            batch = changed[start : start + self.batch_size]
            vectors = self.embedder.embed_sync([d.text for d in batch])  # (n, d)
            self.vectors.upsert(
                collection, [d.item_id for d in batch], vectors, [d.content_hash for d in batch]
            )
            self._fulltext_upsert(collection, batch)
            done += len(batch)
            if progress is not None:
                progress(done, len(changed))
        return {
            "indexed": len(changed),
            "removed": len(gone),
            "unchanged": len(docs) - len(changed),
        }

    def sync_all(self) -> dict[str, dict[str, int]]:
        return {collection: self.sync(collection) for collection in COLLECTIONS}

    def prune(self) -> int:
        """Remove indexed items that no longer exist (after deletes). Returns how many."""
        removed = 0
        for collection in COLLECTIONS:
            table: Any = {"listings": Listing, "posts": Post, "reels": Reel}[collection]
            stored = self.vectors.hashes(collection)
            with self.sessions() as db:
                present = set(db.scalars(select(table.id)))
            gone = sorted(set(stored) - present)
            if gone:
                self.vectors.delete(collection, gone)
                self._fulltext_delete(collection, gone)
                removed += len(gone)
        return removed

    def _fulltext_delete(self, collection: str, ids: list[int]) -> None:
        with self.sessions.begin() as db:
            sqlite = db.get_bind().dialect.name == "sqlite"
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                if sqlite:  # by rowid: indexed, where item_id (UNINDEXED) would scan the table
                    marks = ",".join(str(fts_rowid(collection, i)) for i in chunk)
                    db.execute(text(f"DELETE FROM search_fts WHERE rowid IN ({marks})"))
                else:
                    marks = ",".join(str(int(i)) for i in chunk)
                    db.execute(
                        text(
                            f"DELETE FROM search_fts WHERE collection = :c AND item_id IN ({marks})"
                        ),
                        {"c": collection},
                    )

    def _fulltext_upsert(self, collection: str, docs: list[Document]) -> None:
        self._fulltext_delete(collection, [d.item_id for d in docs])
        with self.sessions.begin() as db:
            rows = [
                {
                    "r": fts_rowid(collection, d.item_id),
                    "c": collection,
                    "i": d.item_id,
                    "t": d.title,
                    "b": d.body,
                }
                for d in docs
            ]
            if db.get_bind().dialect.name == "sqlite":
                db.execute(
                    text(
                        "INSERT INTO search_fts (rowid, collection, item_id, title, body) "
                        "VALUES (:r, :c, :i, :t, :b)"
                    ),
                    rows,
                )
            else:
                db.execute(
                    text(
                        "INSERT INTO search_fts (collection, item_id, title, body) "
                        "VALUES (:c, :i, :t, :b)"
                    ),
                    rows,
                )


def fts_rowid(collection: str, item_id: int) -> int:
    """The FTS5 rowid of an item: unique across collections, so deletes use the rowid index."""
    return int(item_id) * len(COLLECTIONS) + COLLECTIONS.index(collection)
