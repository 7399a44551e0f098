"""The scale-out vector index: PostgreSQL with pgvector (HNSW, cosine).

Filters stay hard: ``allowed`` becomes ``item_id = ANY(...)`` in the same query, and pgvector's
iterative index scan (0.8+) keeps scanning the HNSW graph until ``k`` rows pass it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from sqlalchemy import create_engine, text

from townsquare.storage.vectors import VectorIndex, Vectors


def _literal(vector: Any) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in np.asarray(vector, dtype=np.float32)) + "]"


class PgVectorIndex(VectorIndex):
    """Vectors in a PostgreSQL table with an HNSW index."""

    def __init__(
        self, url: str, dimensions: int, *, table: str = "townsquare_vectors", ef_search: int = 100
    ) -> None:
        if not table.isidentifier():
            raise ValueError("table must be a plain SQL identifier")
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        self.engine = create_engine(url, pool_pre_ping=True)
        self.table, self.dimensions, self.ef_search = table, dimensions, ef_search
        with self.engine.begin() as db:
            db.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
            db.execute(
                text(
                    f"CREATE TABLE IF NOT EXISTS {table} (collection text NOT NULL, "
                    "item_id bigint NOT NULL, content_hash text NOT NULL DEFAULT '', "
                    f"embedding vector({dimensions}) NOT NULL, PRIMARY KEY (collection, item_id))"
                )
            )
            db.execute(
                text(
                    f"CREATE INDEX IF NOT EXISTS {table}_hnsw ON {table} "
                    "USING hnsw (embedding vector_cosine_ops)"
                )
            )

    def upsert(
        self, collection: str, ids: Sequence[int], vectors: Vectors, hashes: Sequence[str]
    ) -> None:
        rows = [
            {"c": collection, "i": int(i), "h": h, "v": _literal(v)}
            for i, v, h in zip(ids, vectors, hashes, strict=True)
        ]
        if not rows:
            return
        with self.engine.begin() as db:
            db.execute(
                text(
                    f"INSERT INTO {self.table} (collection, item_id, content_hash, embedding) "
                    "VALUES (:c, :i, :h, CAST(:v AS vector)) ON CONFLICT (collection, item_id) "
                    "DO UPDATE SET content_hash = EXCLUDED.content_hash, "
                    "embedding = EXCLUDED.embedding"
                ),
                rows,
            )

    def delete(self, collection: str, ids: Iterable[int]) -> None:
        ids = [int(i) for i in ids]
        if ids:
            with self.engine.begin() as db:
                db.execute(
                    text(f"DELETE FROM {self.table} WHERE collection = :c AND item_id = ANY(:ids)"),
                    {"c": collection, "ids": ids},
                )

    def search(
        self, collection: str, query: Vectors, k: int, allowed: Sequence[int] | None = None
    ) -> list[tuple[int, float]]:
        if k <= 0 or (allowed is not None and len(allowed) == 0):
            return []
        where = "collection = :c" + (" AND item_id = ANY(:allowed)" if allowed is not None else "")
        params: dict[str, Any] = {"c": collection, "q": _literal(query), "k": k}
        if allowed is not None:
            params["allowed"] = [int(i) for i in allowed]
        with self.engine.begin() as db:
            db.execute(text(f"SET LOCAL hnsw.ef_search = {int(self.ef_search)}"))
            db.execute(text("SET LOCAL hnsw.iterative_scan = relaxed_order"))
            rows = db.execute(
                text(
                    f"SELECT item_id, 1 - (embedding <=> CAST(:q AS vector)) AS score "
                    f"FROM {self.table} WHERE {where} "
                    "ORDER BY embedding <=> CAST(:q AS vector) LIMIT :k"
                ),
                params,
            ).all()
        return sorted(((int(i), float(s)) for i, s in rows), key=lambda r: -r[1])

    def hashes(self, collection: str) -> dict[int, str]:
        with self.engine.connect() as db:
            rows = db.execute(
                text(f"SELECT item_id, content_hash FROM {self.table} WHERE collection = :c"),
                {"c": collection},
            )
            return {int(i): h for i, h in rows}

    def vector(self, collection: str, item_id: int) -> Vectors | None:
        with self.engine.connect() as db:
            value = db.execute(
                text(
                    f"SELECT embedding::text FROM {self.table} "
                    "WHERE collection = :c AND item_id = :i"
                ),
                {"c": collection, "i": item_id},
            ).scalar()
        if value is None:
            return None
        return np.asarray([float(x) for x in value.strip("[]").split(",")], dtype=np.float32)

    def close(self) -> None:
        self.engine.dispose()
