"""Vector indexes: one small interface, an embedded implementation and a pgvector one.

Every item carries, beside its vector, the metadata that filters need (status, price, group,
seller ...). ``search`` takes a ``Filter`` (``storage/filters.py``) over that metadata and an
optional short list of ids to leave out; filters are applied inside the index, before ranking:
a filtered-out item cannot be returned however similar it is, and no request ever builds the
list of every id it may see.

The embedded index keeps each collection in memory: a float32 matrix, the metadata as numpy
columns, and, once a collection is large, a FAISS inverted-file index (IVF, inner product)
whose candidates are re-scored exactly. Its durable state is the ``vector_items`` table, a
change log (ids only grow; a row with no vector is a deletion, a row with the same vector and
new metadata an update of the metadata), which a background thread follows, so several
processes sharing one database stay in step without any request touching the table.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker
from typing_extensions import override

from townsquare.storage.filters import Columns, Everything, Filter, mask
from townsquare.storage.social_tables import VectorItem

Vectors = npt.NDArray[np.float32]
Attrs = Mapping[str, Any]
log = logging.getLogger("townsquare.vectors")


def attrs_hash(attrs: Attrs | None) -> str:
    """A short, stable fingerprint of an item's metadata."""
    blob = json.dumps(attrs or {}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class VectorIndex(ABC):
    """Upsert, delete, and search top-k by cosine similarity (vectors are unit length)."""

    @abstractmethod
    def upsert(
        self,
        collection: str,
        ids: Sequence[int],
        vectors: Vectors,
        hashes: Sequence[str],
        attrs: Sequence[Attrs] | None = None,
    ) -> None:
        """Insert or replace vectors (shape (n, d)); ``hashes`` identify the embedded content,
        ``attrs`` are the items' filterable metadata."""

    @abstractmethod
    def set_attrs(self, collection: str, ids: Sequence[int], attrs: Sequence[Attrs]) -> None:
        """Replace the metadata of items already indexed (their vectors stay)."""

    @abstractmethod
    def delete(self, collection: str, ids: Iterable[int]) -> None:
        """Remove items from a collection (absent ones are ignored)."""

    @abstractmethod
    def search(
        self,
        collection: str,
        query: Vectors,
        k: int,
        where: Filter | None = None,
        exclude: Collection[int] = (),
    ) -> list[tuple[int, float]]:
        """(item id, cosine similarity) best first, among items matching ``where`` and not in
        ``exclude``."""

    @abstractmethod
    def filter_ids(self, collection: str, ids: Sequence[int], where: Filter) -> list[int]:
        """The ``ids`` (in their order) that are indexed and match ``where``."""

    @abstractmethod
    def state(self, collection: str, ids: Iterable[int]) -> dict[int, tuple[str, str]]:
        """(content hash, metadata hash) of the given items that are indexed."""

    @abstractmethod
    def hashes(self, collection: str) -> dict[int, str]:
        """Content hash of every indexed item (full rebuilds only: grows with the collection)."""

    @abstractmethod
    def vectors(self, collection: str, ids: Iterable[int]) -> dict[int, Vectors]:
        """The stored vectors of the given items (those that are indexed)."""

    def vector(self, collection: str, item_id: int) -> Vectors | None:
        """The stored vector of one item, if any."""
        return self.vectors(collection, [item_id]).get(item_id)

    @abstractmethod
    def values(self, collection: str, field: str) -> list[str]:
        """The distinct string values of a metadata field (e.g. the listing categories)."""

    def drop_collection(self, collection: str) -> None:
        """Remove every item of a collection."""
        self.delete(collection, list(self.hashes(collection)))

    def close(self) -> None:
        """Release connections and threads."""


@dataclass
class _Collection:
    dimensions: int = 0
    ids: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    matrix: Vectors = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    rows: dict[int, int] = field(default_factory=dict)  # item id -> row
    hashes: dict[int, str] = field(default_factory=dict)
    attr_hashes: dict[int, str] = field(default_factory=dict)
    columns: Columns = field(default_factory=Columns)
    size: int = 0  # rows in use; the arrays grow by doubling
    ivf: Any = None
    ivf_trained_on: int = 0
    max_id: int = 0

    def put(self, item_id: int, vector: Vectors, content_hash: str, attrs: Attrs | None) -> None:
        if self.dimensions == 0:
            self.dimensions = vector.shape[0]
            self.matrix = np.zeros((64, self.dimensions), dtype=np.float32)
            self.ids = np.zeros(64, dtype=np.int64)
            self.columns.grow(64)
        row = self.rows.get(item_id)
        if row is None:
            if self.size == len(self.ids):
                self.matrix = np.concatenate([self.matrix, np.zeros_like(self.matrix)])
                self.ids = np.concatenate([self.ids, np.zeros_like(self.ids)])
                self.columns.grow(len(self.ids))
            row, self.size = self.size, self.size + 1
            self.rows[item_id] = row
            self.ids[row] = item_id
            self.max_id = max(self.max_id, item_id)
        self.matrix[row] = vector
        self.hashes[item_id] = content_hash
        self.columns.set(row, attrs or {})
        self.attr_hashes[item_id] = attrs_hash(attrs)

    def drop(self, item_id: int) -> None:
        row = self.rows.pop(item_id, None)
        self.hashes.pop(item_id, None)
        self.attr_hashes.pop(item_id, None)
        if row is None:
            return
        last = self.size - 1
        if row != last:  # move the last row into the hole
            moved = int(self.ids[last])
            self.matrix[row] = self.matrix[last]
            self.ids[row] = moved
            self.columns.move(last, row)
            self.rows[moved] = row
        self.size = last


class EmbeddedVectorIndex(VectorIndex):
    """In-process vector search over the ``vector_items`` table (or memory only, for tests and
    benchmarks, when ``sessions`` is None).

    Up to ``ivf_min_items`` items per collection, search is exact (one matrix product, the
    filter as a mask); above that a FAISS IVF index narrows the candidates (the filter as a
    bitmap of allowed ids inside the scan), which are then re-scored exactly. A filter that
    lets few items through (at most ``exact_subset_max``) is searched exactly over just those.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session] | None = None,
        *,
        ivf_min_items: int = 50_000,
        nprobe: int = 16,
        exact_subset_max: int = 4096,
        poll_s: float = 1.0,
    ) -> None:
        self.sessions = sessions
        self.ivf_min_items = ivf_min_items
        self.nprobe = nprobe
        self.exact_subset_max = exact_subset_max
        self.poll_s = poll_s
        self._collections: dict[str, _Collection] = {}
        self._seen = 0  # the last vector_items number (seq) applied
        self._lock = threading.RLock()
        self._refreshing = threading.Lock()
        self._building: set[str] = set()
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None
        self._started = False

    # --- keeping up with the table -------------------------------------------------------

    def _ensure_following(self) -> None:
        """Catch up once and start the thread that follows other processes' writes."""
        if self._started or self.sessions is None:
            return
        with self._lock:
            if self._started:
                return
            self._started = True
        self.refresh()
        self._follower = threading.Thread(target=self._follow, name="vectors-follow", daemon=True)
        self._follower.start()

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.refresh()
            except Exception:  # a database hiccup must not end the follower
                log.exception("could not read the vector change log; retrying")

    def refresh(self) -> None:
        """Apply the rows written since the last refresh (by this or another process).

        Safe to call from several threads: rows are applied under the lock and only when newer
        than the newest already applied, so a slow refresh never re-applies a stale vector.
        """
        if self.sessions is None:
            return
        with self._refreshing:  # one reader at a time; others find nothing new afterwards
            with self.sessions() as db:
                rows = db.execute(
                    select(
                        VectorItem.seq,
                        VectorItem.collection,
                        VectorItem.item_id,
                        VectorItem.content_hash,
                        VectorItem.vector,
                        VectorItem.attrs,
                    )
                    .where(VectorItem.seq > self._seen)
                    .order_by(VectorItem.seq)
                ).all()
            with self._lock:
                for seq, collection, item_id, content_hash, blob, attrs in rows:
                    if seq <= self._seen:
                        continue
                    self._apply(collection, item_id, content_hash, blob, attrs)
                    self._seen = seq

    def _apply(
        self,
        collection: str,
        item_id: int,
        content_hash: str,
        blob: bytes | None,
        attrs: Attrs | None,
    ) -> None:
        store = self._collections.setdefault(collection, _Collection())
        if blob is None:
            self._drop(store, item_id)
        else:
            self._put(store, item_id, np.frombuffer(blob, dtype="<f4"), content_hash, attrs)

    def _put(
        self,
        store: _Collection,
        item_id: int,
        vector: Vectors,
        content_hash: str,
        attrs: Attrs | None,
    ) -> None:
        if store.ivf is not None:
            if item_id in store.rows:
                store.ivf.remove_ids(np.array([item_id], dtype=np.int64))
            store.ivf.add_with_ids(vector.reshape(1, -1), np.array([item_id], dtype=np.int64))
        store.put(item_id, vector, content_hash, attrs)

    def _drop(self, store: _Collection, item_id: int) -> None:
        if store.ivf is not None and item_id in store.rows:
            store.ivf.remove_ids(np.array([item_id], dtype=np.int64))
        store.drop(item_id)

    # --- writes -----------------------------------------------------------------------------

    @override
    def upsert(
        self,
        collection: str,
        ids: Sequence[int],
        vectors: Vectors,
        hashes: Sequence[str],
        attrs: Sequence[Attrs] | None = None,
    ) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # (n, d)
        metadata = list(attrs) if attrs is not None else [{} for _ in ids]
        if self.sessions is None:
            with self._lock:
                store = self._collections.setdefault(collection, _Collection())
                for item_id, vector, content_hash, meta in zip(
                    ids, vectors, hashes, metadata, strict=True
                ):
                    self._put(store, int(item_id), vector, content_hash, meta)
            return
        self._ensure_following()
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
                    attrs=dict(m),
                )
                for i, v, h, m in zip(ids, vectors, hashes, metadata, strict=True)
            )
        self.refresh()

    @override
    def set_attrs(self, collection: str, ids: Sequence[int], attrs: Sequence[Attrs]) -> None:
        with self._lock:
            store = self._collections.get(collection)
            current = (
                {}
                if store is None
                else {
                    int(i): (store.matrix[store.rows[int(i)]].copy(), store.hashes[int(i)])
                    for i in ids
                    if int(i) in store.rows
                }
            )
        kept = [(i, m) for i, m in zip(ids, attrs, strict=True) if int(i) in current]
        if not kept:
            return
        self.upsert(
            collection,
            [int(i) for i, _ in kept],
            np.stack([current[int(i)][0] for i, _ in kept]),
            [current[int(i)][1] for i, _ in kept],
            [m for _, m in kept],
        )

    @override
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
        self._ensure_following()
        with self.sessions.begin() as db:
            db.execute(
                delete(VectorItem).where(
                    VectorItem.collection == collection, VectorItem.item_id.in_(ids)
                )
            )
            db.add_all(VectorItem(collection=collection, item_id=i, vector=None) for i in ids)
        self.refresh()

    @override
    def drop_collection(self, collection: str) -> None:
        self._ensure_following()
        with self._lock:
            store = self._collections.get(collection)
            ids = [] if store is None else list(store.rows)
        self.delete(collection, ids)

    # --- reads (never touch the database) ------------------------------------------------------

    @override
    def hashes(self, collection: str) -> dict[int, str]:
        self._ensure_following()
        with self._lock:
            return dict(self._collections.get(collection, _Collection()).hashes)

    @override
    def state(self, collection: str, ids: Iterable[int]) -> dict[int, tuple[str, str]]:
        self._ensure_following()
        with self._lock:
            store = self._collections.get(collection)
            if store is None:
                return {}
            return {
                int(i): (store.hashes[int(i)], store.attr_hashes[int(i)])
                for i in ids
                if int(i) in store.hashes
            }

    @override
    def filter_ids(self, collection: str, ids: Sequence[int], where: Filter) -> list[int]:
        self._ensure_following()
        with self._lock:
            store = self._collections.get(collection)
            if store is None:
                return []
            known = [int(i) for i in ids if int(i) in store.rows]
            if not known or isinstance(where, Everything):
                return known
            rows = np.fromiter((store.rows[i] for i in known), dtype=np.int64, count=len(known))
            keep = mask(where, store.columns, store.size, rows)
            return [i for i, ok in zip(known, keep, strict=True) if ok]

    @override
    def vectors(self, collection: str, ids: Iterable[int]) -> dict[int, Vectors]:
        self._ensure_following()
        with self._lock:
            store = self._collections.get(collection)
            if store is None:
                return {}
            return {
                int(i): store.matrix[store.rows[int(i)]].copy() for i in ids if int(i) in store.rows
            }

    @override
    def values(self, collection: str, field: str) -> list[str]:
        self._ensure_following()
        with self._lock:
            store = self._collections.get(collection)
            return [] if store is None else store.columns.values(field)

    @override
    def search(
        self,
        collection: str,
        query: Vectors,
        k: int,
        where: Filter | None = None,
        exclude: Collection[int] = (),
    ) -> list[tuple[int, float]]:
        self._ensure_following()
        with self._lock:
            store = self._collections.get(collection)
            if store is None or store.size == 0 or k <= 0:
                return []
            query = np.asarray(query, dtype=np.float32).reshape(-1)  # (d,)
            n = store.size
            passing: npt.NDArray[np.bool_] | None = None
            if (where is not None and not isinstance(where, Everything)) or exclude:
                passing = mask(where or Everything(), store.columns, n)
                for item_id in exclude:
                    row = store.rows.get(int(item_id))
                    if row is not None:
                        passing[row] = False
                count = int(passing.sum())
                if count == 0:
                    return []
                if count <= self.exact_subset_max:
                    return self._exact(store, query, k, np.flatnonzero(passing))
            if n < self.ivf_min_items or not self._ivf_ready(collection, store):
                return self._exact_masked(store, query, k, passing)
            return self._ivf(store, query, k, passing)

    @staticmethod
    def _top(scores: Vectors, ids: npt.NDArray[np.int64], k: int) -> list[tuple[int, float]]:
        k = min(k, len(scores))
        if k <= 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(ids[i]), float(scores[i])) for i in top if np.isfinite(scores[i])]

    def _exact(
        self, store: _Collection, query: Vectors, k: int, rows: npt.NDArray[np.int64]
    ) -> list[tuple[int, float]]:
        scores = store.matrix[rows] @ query  # (m,)
        return self._top(scores, store.ids[rows], k)

    def _exact_masked(
        self,
        store: _Collection,
        query: Vectors,
        k: int,
        passing: npt.NDArray[np.bool_] | None,
    ) -> list[tuple[int, float]]:
        n = store.size
        scores = store.matrix[:n] @ query  # (n,)
        if passing is not None:
            scores = np.where(passing, scores, -np.inf).astype(np.float32)
            k = min(k, int(passing.sum()))
        return self._top(scores, store.ids[:n], k)

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

        Trains on a snapshot outside the lock, then adds what the collection holds by then.
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
                ivf.add_with_ids(store.matrix[: store.size], store.ids[: store.size])
                store.ivf, store.ivf_trained_on = ivf, store.size
        finally:
            self._building.discard(collection)

    def _ivf(
        self,
        store: _Collection,
        query: Vectors,
        k: int,
        passing: npt.NDArray[np.bool_] | None,
    ) -> list[tuple[int, float]]:
        import faiss

        params = faiss.SearchParametersIVF()
        params.nprobe = self.nprobe
        bitmap = None
        if passing is not None:
            # allowed ids as a bitmap the IVF scan consults; probe more lists when few pass
            allowed = np.zeros(store.max_id + 1, dtype=bool)
            allowed[store.ids[: store.size][passing]] = True
            bitmap = np.packbits(allowed, bitorder="little")
            params.sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bitmap))
            share = max(float(passing.mean()), 1e-6)
            params.nprobe = int(min(store.ivf.nlist, np.ceil(self.nprobe / share)))
        candidates = max(4 * k, 64)
        _, found = store.ivf.search(query.reshape(1, -1), candidates, params=params)
        del bitmap  # the selector read it during the search
        ids = [int(i) for i in found[0] if i >= 0]
        if not ids:
            return []
        rows = np.array([store.rows[i] for i in ids], dtype=np.int64)
        return self._exact(store, query, k, rows)  # exact re-scoring of the candidates

    @override
    def close(self) -> None:
        self._stop.set()
        if self._follower is not None:
            self._follower.join(timeout=5)
