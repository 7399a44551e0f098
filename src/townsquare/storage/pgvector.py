"""The scale-out vector index: PostgreSQL with pgvector (HNSW, cosine).

Filters stay hard and inside the index: the item's metadata is a JSONB column beside its
vector, a ``Filter`` becomes a condition in the same query, and pgvector's iterative index scan
(0.8+) keeps walking the HNSW graph until ``k`` rows pass it.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import numpy as np
from sqlalchemy import Engine, create_engine, text
from typing_extensions import override

from townsquare.storage.db import MIGRATION_LOCK
from townsquare.storage.filters import Everything, Filter, to_sql
from townsquare.storage.vectors import Attrs, VectorIndex, Vectors, attrs_hash


def _literal(vector: Any) -> str:
    # 9 significant digits: a float32 read back exactly (7 would move near-ties apart)
    return "[" + ",".join(f"{x:.9g}" for x in np.asarray(vector, dtype=np.float32)) + "]"


def _parse(value: str) -> Vectors:
    return np.asarray([float(x) for x in value.strip("[]").split(",")], dtype=np.float32)


class PgVectorIndex(VectorIndex):
    """Vectors and their metadata in a PostgreSQL table with an HNSW index."""

    def __init__(
        self,
        url: str,
        dimensions: int,
        *,
        table: str = "townsquare_vectors",
        ef_search: int = 100,
        pool_size: int = 20,
        engine: Engine | None = None,
        prepared_statements: bool = True,
    ) -> None:
        """``engine``: the app's own, when the vectors live in the app's database (one pool
        per process, not two: 2 x 20 x replicas exceeded PostgreSQL's 100 connections)."""
        if not table.isidentifier():
            raise ValueError("table must be a plain SQL identifier")
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        self.owns_engine = engine is None
        self.engine = engine or create_engine(
            url,
            pool_pre_ping=True,
            pool_size=pool_size,
            max_overflow=0,
            connect_args={} if prepared_statements else {"prepare_threshold": None},
        )
        self.table, self.dimensions, self.ef_search = table, dimensions, ef_search
        with self.engine.begin() as db:
            # replicas starting together create the table one at a time (the migrations' lock)
            db.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
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
                    f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS attrs jsonb NOT NULL "
                    "DEFAULT '{}'"
                )
            )
            db.execute(
                text(
                    f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS attrs_hash text NOT NULL "
                    "DEFAULT ''"
                )
            )
            db.execute(
                text(
                    f"CREATE INDEX IF NOT EXISTS {table}_hnsw ON {table} "
                    "USING hnsw (embedding vector_cosine_ops)"
                )
            )

    @override
    def upsert(
        self,
        collection: str,
        ids: Sequence[int],
        vectors: Vectors,
        hashes: Sequence[str],
        attrs: Sequence[Attrs] | None = None,
    ) -> None:
        metadata = list(attrs) if attrs is not None else [{} for _ in ids]
        rows = [
            {
                "c": collection,
                "i": int(i),
                "h": h,
                "v": _literal(v),
                "a": json.dumps(dict(m), default=str),
                "ah": attrs_hash(m),
            }
            for i, v, h, m in zip(ids, vectors, hashes, metadata, strict=True)
        ]
        if not rows:
            return
        with self.engine.begin() as db:
            db.execute(
                text(
                    f"INSERT INTO {self.table} (collection, item_id, content_hash, embedding, "
                    "attrs, attrs_hash) VALUES (:c, :i, :h, CAST(:v AS vector), CAST(:a AS jsonb), "
                    ":ah) ON CONFLICT (collection, item_id) DO UPDATE SET "
                    "content_hash = EXCLUDED.content_hash, embedding = EXCLUDED.embedding, "
                    "attrs = EXCLUDED.attrs, attrs_hash = EXCLUDED.attrs_hash"
                ),
                rows,
            )

    @override
    def set_attrs(self, collection: str, ids: Sequence[int], attrs: Sequence[Attrs]) -> None:
        rows = [
            {
                "c": collection,
                "i": int(i),
                "a": json.dumps(dict(m), default=str),
                "ah": attrs_hash(m),
            }
            for i, m in zip(ids, attrs, strict=True)
        ]
        if rows:
            with self.engine.begin() as db:
                db.execute(
                    text(
                        f"UPDATE {self.table} SET attrs = CAST(:a AS jsonb), attrs_hash = :ah "
                        "WHERE collection = :c AND item_id = :i"
                    ),
                    rows,
                )

    @override
    def delete(self, collection: str, ids: Iterable[int]) -> None:
        ids = [int(i) for i in ids]
        if ids:
            with self.engine.begin() as db:
                db.execute(
                    text(f"DELETE FROM {self.table} WHERE collection = :c AND item_id = ANY(:ids)"),
                    {"c": collection, "ids": ids},
                )

    @override
    def drop_collection(self, collection: str) -> None:
        with self.engine.begin() as db:
            db.execute(text(f"DELETE FROM {self.table} WHERE collection = :c"), {"c": collection})

    @override
    def search(
        self,
        collection: str,
        query: Vectors,
        k: int,
        where: Filter | None = None,
        exclude: Collection[int] = (),
    ) -> list[tuple[int, float]]:
        if k <= 0:
            return []
        params: dict[str, Any] = {"c": collection, "q": _literal(query), "k": k}
        condition = "collection = :c"
        if where is not None and not isinstance(where, Everything):
            condition += " AND " + to_sql(where, "attrs", params)
        if exclude:
            params["exclude"] = [int(i) for i in exclude]
            condition += " AND NOT (item_id = ANY(:exclude))"
        with self.engine.begin() as db:
            db.execute(text(f"SET LOCAL hnsw.ef_search = {int(self.ef_search)}"))
            db.execute(text("SET LOCAL hnsw.iterative_scan = relaxed_order"))
            rows = db.execute(
                text(
                    f"SELECT item_id, 1 - (embedding <=> CAST(:q AS vector)) AS score "
                    f"FROM {self.table} WHERE {condition} "
                    "ORDER BY embedding <=> CAST(:q AS vector) LIMIT :k"
                ),
                params,
            ).all()
        return sorted(((int(i), float(s)) for i, s in rows), key=lambda r: -r[1])

    @override
    def filter_ids(self, collection: str, ids: Sequence[int], where: Filter) -> list[int]:
        wanted = [int(i) for i in ids]
        if not wanted:
            return []
        params: dict[str, Any] = {"c": collection, "ids": wanted}
        condition = "collection = :c AND item_id = ANY(:ids)"
        if not isinstance(where, Everything):
            condition += " AND " + to_sql(where, "attrs", params)
        with self.engine.connect() as db:
            found = {
                int(i)
                for (i,) in db.execute(
                    text(f"SELECT item_id FROM {self.table} WHERE {condition}"), params
                )
            }
        return [i for i in wanted if i in found]

    def _of_items(self, columns: str, collection: str, ids: Iterable[int]) -> list[Any]:
        """``columns`` of the given items of ``collection`` (one query; none for no ids)."""
        wanted = [int(i) for i in ids]
        if not wanted:
            return []
        with self.engine.connect() as db:
            return list(
                db.execute(
                    text(
                        f"SELECT item_id, {columns} FROM {self.table} "
                        "WHERE collection = :c AND item_id = ANY(:ids)"
                    ),
                    {"c": collection, "ids": wanted},
                )
            )

    @override
    def state(self, collection: str, ids: Iterable[int]) -> dict[int, tuple[str, str]]:
        rows = self._of_items("content_hash, attrs_hash", collection, ids)
        return {int(i): (h, ah) for i, h, ah in rows}

    @override
    def hashes(self, collection: str) -> dict[int, str]:
        with self.engine.connect() as db:
            rows = db.execute(
                text(f"SELECT item_id, content_hash FROM {self.table} WHERE collection = :c"),
                {"c": collection},
            )
            return {int(i): h for i, h in rows}

    @override
    def vectors(self, collection: str, ids: Iterable[int]) -> dict[int, Vectors]:
        rows = self._of_items("embedding::text", collection, ids)
        return {int(i): _parse(v) for i, v in rows}

    @override
    def values(self, collection: str, field: str) -> list[str]:
        with self.engine.connect() as db:
            rows = db.execute(
                text(
                    f"SELECT DISTINCT attrs ->> :f FROM {self.table} "
                    "WHERE collection = :c AND attrs ? :f"
                ),
                {"c": collection, "f": field},
            )
            return sorted(str(v) for (v,) in rows if v is not None)

    @override
    def close(self) -> None:
        if self.owns_engine:
            self.engine.dispose()
