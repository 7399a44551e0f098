"""Vector indexes: one small interface, an embedded implementation and a pgvector one.

``search`` takes ``allowed``: the item ids that pass the caller's hard filters (computed in SQL
over the items' own tables, where the metadata lives). Filters are therefore applied before
ranking, never after: a filtered-out item cannot be returned, however similar it is.

The embedded index keeps each collection in memory as a float32 matrix (exact search by one
matrix product) and, once a collection is large, in a FAISS inverted-file index (IVF, inner
product) whose candidates are re-scored exactly. Its durable state is the ``vector_items`` table
(a change log: ids only grow, deletions leave tombstones), so several processes sharing one
database stay in step by reading the rows newer than the last one they saw.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from townsquare.storage.social_tables import VectorItem

Vectors = npt.NDArray[np.float32]


class VectorIndex(ABC):
    """Upsert, delete, and search top-k by cosine similarity (vectors are unit length)."""

    @abstractmethod
    def upsert(
        self, collection: str, ids: Sequence[int], vectors: Vectors, hashes: Sequence[str]
    ) -> None:
        """Insert or replace vectors (shape (n, d)); ``hashes`` identify the embedded content."""

    @abstractmethod
    def delete(self, collection: str, ids: Iterable[int]) -> None: ...

    @abstractmethod
    def search(
        self, collection: str, query: Vectors, k: int, allowed: Sequence[int] | None = None
    ) -> list[tuple[int, float]]:
        """(item id, cosine similarity) best first; only ids in ``allowed`` when given."""

    @abstractmethod
    def hashes(self, collection: str) -> dict[int, str]:
        """Content hash per indexed item (the indexer re-embeds what changed)."""

    def vector(self, collection: str, item_id: int) -> Vectors | None:
        """The stored vector of one item, if any."""
        return None

    def close(self) -> None:
        """Release connections."""


@dataclass
class _Collection:
    dimensions: int = 0
    ids: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    matrix: Vectors = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    rows: dict[int, int] = field(default_factory=dict)  # item id -> row
    hashes: dict[int, str] = field(default_factory=dict)
    size: int = 0  # rows in use; the matrix grows by doubling
    ivf: Any = None
    ivf_trained_on: int = 0

    def put(self, item_id: int, vector: Vectors, content_hash: str) -> None:
        if self.dimensions == 0:
            self.dimensions = vector.shape[0]
            self.matrix = np.zeros((64, self.dimensions), dtype=np.float32)
            self.ids = np.zeros(64, dtype=np.int64)
        row = self.rows.get(item_id)
        if row is None:
            if self.size == len(self.ids):
                self.matrix = np.concatenate([self.matrix, np.zeros_like(self.matrix)])
                self.ids = np.concatenate([self.ids, np.zeros_like(self.ids)])
            row, self.size = self.size, self.size + 1
            self.rows[item_id] = row
            self.ids[row] = item_id
        self.matrix[row] = vector
        self.hashes[item_id] = content_hash

    def drop(self, item_id: int) -> None:
        row = self.rows.pop(item_id, None)
        self.hashes.pop(item_id, None)
        if row is None:
            return
        last = self.size - 1
        if row != last:  # move the last row into the hole
            moved = int(self.ids[last])
            self.matrix[row] = self.matrix[last]
            self.ids[row] = moved
            self.rows[moved] = row
        self.size = last


class EmbeddedVectorIndex(VectorIndex):
    """In-process vector search over the ``vector_items`` table (or memory only, for tests and
    benchmarks, when ``sessions`` is None).

    Exact search (a matrix product over every row, or over the allowed rows) up to
    ``ivf_min_items`` items per collection; above that a FAISS IVF index narrows the candidates,
    which are then re-scored exactly.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session] | None = None,
        *,
        ivf_min_items: int = 50_000,
        nprobe: int = 16,
        exact_allowed_max: int = 50_000,
    ) -> None:
        self.sessions = sessions
        self.ivf_min_items = ivf_min_items
        self.nprobe = nprobe
        self.exact_allowed_max = exact_allowed_max
        self._collections: dict[str, _Collection] = {}
        self._seen = 0  # newest vector_items id applied
        self._lock = threading.RLock()
        self._building: set[str] = set()

    # --- keeping up with the table -------------------------------------------------------

    def refresh(self) -> None:
        """Apply the rows written since the last refresh (by this or another process)."""
        if self.sessions is None:
            return
        with self.sessions() as db:
            newest = db.scalar(select(func.max(VectorItem.id))) or 0
            if newest <= self._seen:
                return
            rows = db.execute(
                select(
                    VectorItem.id,
                    VectorItem.collection,
                    VectorItem.item_id,
                    VectorItem.content_hash,
                    VectorItem.vector,
                )
                .where(VectorItem.id > self._seen)
                .order_by(VectorItem.id)
            ).all()
        with self._lock:
            for row_id, collection, item_id, content_hash, blob in rows:
                self._apply(collection, item_id, content_hash, blob)
                self._seen = max(self._seen, row_id)

    def _apply(self, collection: str, item_id: int, content_hash: str, blob: bytes | None) -> None:
        store = self._collections.setdefault(collection, _Collection())
        if blob is None:
            self._drop(store, item_id)
        else:
            self._put(store, item_id, np.frombuffer(blob, dtype="<f4"), content_hash)

    def _put(self, store: _Collection, item_id: int, vector: Vectors, content_hash: str) -> None:
        if store.ivf is not None:
            if item_id in store.rows:
                store.ivf.remove_ids(np.array([item_id], dtype=np.int64))
            store.ivf.add_with_ids(vector.reshape(1, -1), np.array([item_id], dtype=np.int64))
        store.put(item_id, vector, content_hash)

    def _drop(self, store: _Collection, item_id: int) -> None:
        if store.ivf is not None and item_id in store.rows:
            store.ivf.remove_ids(np.array([item_id], dtype=np.int64))
        store.drop(item_id)

    # --- writes -----------------------------------------------------------------------------

    def upsert(
        self, collection: str, ids: Sequence[int], vectors: Vectors, hashes: Sequence[str]
    ) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # (n, d)
        if self.sessions is None:
            with self._lock:
                store = self._collections.setdefault(collection, _Collection())
                for item_id, vector, content_hash in zip(ids, vectors, hashes, strict=True):
                    self._put(store, int(item_id), vector, content_hash)
            return
        with self.sessions.begin() as db:
            db.execute(
                delete(VectorItem).where(
                    VectorItem.collection == collection, VectorItem.item_id.in_(list(ids))
                )
            )
            db.add_all(
                VectorItem(
                    collection=collection,
                    item_id=int(i),
                    content_hash=h,
                    vector=v.astype("<f4").tobytes(),
                )
                for i, v, h in zip(ids, vectors, hashes, strict=True)
            )
        self.refresh()

    def delete(self, collection: str, ids: Iterable[int]) -> None:
        ids = [int(i) for i in ids]
        if not ids:
            return
        if self.sessions is None:
            with self._lock:
                store = self._collections.setdefault(collection, _Collection())
                for item_id in ids:
                    self._drop(store, item_id)
            return
        with self.sessions.begin() as db:
            db.execute(
                delete(VectorItem).where(
                    VectorItem.collection == collection, VectorItem.item_id.in_(ids)
                )
            )
            db.add_all(VectorItem(collection=collection, item_id=i, vector=None) for i in ids)
        self.refresh()

    # --- reads ------------------------------------------------------------------------------

    def hashes(self, collection: str) -> dict[int, str]:
        self.refresh()
        with self._lock:
            return dict(self._collections.get(collection, _Collection()).hashes)

    def vector(self, collection: str, item_id: int) -> Vectors | None:
        self.refresh()
        with self._lock:
            store = self._collections.get(collection)
            if store is None or item_id not in store.rows:
                return None
            vector: Vectors = store.matrix[store.rows[item_id]].copy()
            return vector

    def search(
        self, collection: str, query: Vectors, k: int, allowed: Sequence[int] | None = None
    ) -> list[tuple[int, float]]:
        self.refresh()
        with self._lock:
            store = self._collections.get(collection)
            if store is None or store.size == 0 or k <= 0:
                return []
            query = np.asarray(query, dtype=np.float32).reshape(-1)  # (d,)
            subset: npt.NDArray[np.int64] | None = None
            if allowed is not None:
                if len(allowed) * 4 >= store.size and store.size < self.ivf_min_items:
                    # most rows pass: one product over all rows and a mask beats a gather
                    return self._exact_masked(store, query, k, allowed)
                subset = np.fromiter(
                    (store.rows[i] for i in allowed if i in store.rows), dtype=np.int64
                )
                if len(subset) <= self.exact_allowed_max or store.size < self.ivf_min_items:
                    return self._exact(store, query, k, subset)
            elif store.size < self.ivf_min_items:
                return self._exact(store, query, k, None)
            if not self._ivf_ready(collection, store):
                # the IVF index is being trained in the background: exact meanwhile
                return self._exact(store, query, k, subset)
            return self._ivf(store, query, k, allowed)

    @staticmethod
    def _exact(
        store: _Collection, query: Vectors, k: int, rows: npt.NDArray[np.int64] | None
    ) -> list[tuple[int, float]]:
        matrix = store.matrix[: store.size] if rows is None else store.matrix[rows]  # (m, d)
        if len(matrix) == 0:
            return []
        scores = matrix @ query  # (m,)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        ids = store.ids[: store.size] if rows is None else store.ids[rows]
        return [(int(ids[i]), float(scores[i])) for i in top]

    @staticmethod
    def _exact_masked(
        store: _Collection, query: Vectors, k: int, allowed: Sequence[int]
    ) -> list[tuple[int, float]]:
        ids = store.ids[: store.size]
        scores = store.matrix[: store.size] @ query  # (n,)
        keep = np.isin(ids, np.asarray(allowed, dtype=np.int64))
        scores = np.where(keep, scores, -np.inf)
        k = min(k, int(keep.sum()))
        if k == 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(ids[i]), float(scores[i])) for i in top]

    def _ivf_ready(self, collection: str, store: _Collection) -> bool:
        """Whether the IVF index can serve; starts (re)training it when needed."""
        stale = store.ivf is None or store.size > 2 * store.ivf_trained_on
        if stale and collection not in self._building:
            self._building.add(collection)
            threading.Thread(
                target=self.build_ivf, args=(collection,), name=f"ivf-{collection}", daemon=True
            ).start()
        return store.ivf is not None

    def build_ivf(self, collection: str) -> None:
        """Train (or retrain, once the collection doubled) the IVF index of ``collection``.

        Trains on a snapshot outside the lock, then replays what changed meanwhile.
        """
        import faiss

        try:
            with self._lock:
                store = self._collections[collection]
                n = store.size
                matrix = store.matrix[:n].copy()
            nlist = int(max(16, min(65536, 4 * np.sqrt(n))))
            quantizer = faiss.IndexFlatIP(store.dimensions)
            ivf = faiss.IndexIVFFlat(quantizer, store.dimensions, nlist, faiss.METRIC_INNER_PRODUCT)
            sample = matrix[np.random.default_rng(0).permutation(n)[: 40 * nlist]]
            ivf.train(sample)
            with self._lock:
                # add what the collection holds now (it may have changed while training)
                ivf.add_with_ids(store.matrix[: store.size], store.ids[: store.size])
                store.ivf, store.ivf_trained_on = ivf, store.size
        finally:
            self._building.discard(collection)

    def _ivf(
        self, store: _Collection, query: Vectors, k: int, allowed: Sequence[int] | None
    ) -> list[tuple[int, float]]:
        import faiss

        params = faiss.SearchParametersIVF()
        params.nprobe = self.nprobe
        if allowed is not None:
            params.sel = faiss.IDSelectorBatch(np.asarray(list(allowed), dtype=np.int64))
        candidates = max(4 * k, 64)
        _, found = store.ivf.search(query.reshape(1, -1), candidates, params=params)
        ids = [int(i) for i in found[0] if i >= 0]
        if not ids:
            return []
        rows = np.array([store.rows[i] for i in ids], dtype=np.int64)
        return self._exact(store, query, k, rows)  # exact re-scoring of the candidates
