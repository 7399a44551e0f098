"""Full-text search behind one small interface, with two implementations:

- ``Fts5`` (SQLite): one FTS5 table per collection (``search_fts_<collection>``, migration
  0010), keyed by rowid = the item's id, ranked by BM25 with the title weighted 4x;
- ``TsVector`` (PostgreSQL): the ``search_fts`` table with a stored, GIN-indexed English
  ``tsvector`` (migration 0015): title words weighted A, body words B, ranked by ``ts_rank``
  with A = 4 x B and length normalisation, the same ordering rule as FTS5's weighted BM25.

Both answer ``search`` with item ids, best first, among the ``limit`` newest matches: ranking
every match would make a query of common words cost work in proportion to the catalogue, while
the vector ranker still sees every item (and newest first suits a marketplace).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session
from typing_extensions import override

WORD = re.compile(r"[\w']+", re.UNICODE)
_CHUNK = 500


@dataclass(frozen=True)
class Document:
    """What full text indexes of one item."""

    item_id: int
    title: str
    body: str


def words(query: str) -> list[str]:
    """The query's words, lower case (single letters dropped, single digits kept)."""
    return [w.lower() for w in WORD.findall(query) if len(w) > 1 or w.isdigit()]


class FullText(ABC):
    """A full-text index over named collections. Callers own the session and commit."""

    def __init__(self, collections: Sequence[str]) -> None:
        self.collections = tuple(collections)

    def _check(self, collection: str) -> str:
        if collection not in self.collections:
            raise ValueError(f"unknown collection {collection!r}")
        return collection

    @abstractmethod
    def search(self, db: Session, collection: str, query: str, limit: int) -> list[int]:
        """Item ids matching any word of ``query``, best first, among the newest ``limit``."""

    @abstractmethod
    def delete(self, db: Session, collection: str, ids: Sequence[int]) -> None:
        """Remove items from the index (absent ones are ignored)."""

    @abstractmethod
    def insert(self, db: Session, collection: str, docs: Sequence[Document]) -> None:
        """Add documents (delete them first to replace)."""


class Fts5(FullText):
    """SQLite FTS5, one table per collection."""

    def table(self, collection: str) -> str:
        """The collection's FTS5 table (one each: a query reads only its own)."""
        return f"search_fts_{self._check(collection)}"

    @staticmethod
    def match(query: str) -> str | None:
        """An FTS5 MATCH expression: every word quoted (no operator injection), OR-ed."""
        found = words(query)
        return " OR ".join('"' + w.replace('"', "") + '"' for w in found) if found else None

    @override
    def search(self, db: Session, collection: str, query: str, limit: int) -> list[int]:
        expression = self.match(query)
        if expression is None:
            return []
        table = self.table(collection)
        rows = db.execute(
            text(
                f"SELECT item_id FROM (SELECT rowid AS item_id, bm25({table}, 4.0, 1.0) AS score "
                f"FROM {table} WHERE {table} MATCH :q "
                "ORDER BY rowid DESC LIMIT :n) ORDER BY score, item_id DESC"
            ),
            {"q": expression, "n": limit},
        )
        return [int(r[0]) for r in rows]

    @override
    def delete(self, db: Session, collection: str, ids: Sequence[int]) -> None:
        table = self.table(collection)
        for start in range(0, len(ids), _CHUNK):
            marks = ",".join(str(int(i)) for i in ids[start : start + _CHUNK])
            db.execute(text(f"DELETE FROM {table} WHERE rowid IN ({marks})"))  # by rowid: indexed

    @override
    def insert(self, db: Session, collection: str, docs: Sequence[Document]) -> None:
        if docs:
            db.execute(
                text(
                    f"INSERT INTO {self.table(collection)} (rowid, title, body) VALUES (:i, :t, :b)"
                ),
                [{"i": d.item_id, "t": d.title, "b": d.body} for d in docs],
            )


class TsVector(FullText):
    """PostgreSQL ``tsvector`` search over one table for all collections."""

    @override
    def search(self, db: Session, collection: str, query: str, limit: int) -> list[int]:
        found = words(query)
        if not found:
            return []
        rows = db.execute(
            text(
                "SELECT item_id FROM (SELECT item_id, ts_rank('{0.1, 0.2, 0.25, 1.0}', "
                "document, query, 1) AS score FROM search_fts, "
                "websearch_to_tsquery('english', :q) query WHERE collection = :c AND "
                "document @@ query ORDER BY item_id DESC LIMIT :n) newest "
                "ORDER BY score DESC, item_id DESC"
            ),
            {"q": " OR ".join(found), "c": self._check(collection), "n": limit},
        )
        return [int(r[0]) for r in rows]

    @override
    def delete(self, db: Session, collection: str, ids: Sequence[int]) -> None:
        for start in range(0, len(ids), _CHUNK):
            marks = ",".join(str(int(i)) for i in ids[start : start + _CHUNK])
            db.execute(
                text(f"DELETE FROM search_fts WHERE collection = :c AND item_id IN ({marks})"),
                {"c": self._check(collection)},
            )

    @override
    def insert(self, db: Session, collection: str, docs: Sequence[Document]) -> None:
        if docs:
            db.execute(
                text(
                    "INSERT INTO search_fts (collection, item_id, title, body) "
                    "VALUES (:c, :i, :t, :b)"
                ),
                [
                    {"c": self._check(collection), "i": d.item_id, "t": d.title, "b": d.body}
                    for d in docs
                ],
            )


def for_dialect(dialect: str, collections: Sequence[str]) -> FullText:
    """The implementation for a SQLAlchemy dialect name (``sqlite`` or ``postgresql``)."""
    return Fts5(collections) if dialect == "sqlite" else TsVector(collections)
