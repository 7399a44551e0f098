"""The vector indexes: exact and IVF paths, filters, deletes, several processes, pgvector."""

from pathlib import Path

import numpy as np
import pytest

from townsquare.storage.db import make_engine, make_sessions, migrate
from townsquare.storage.vectors import EmbeddedVectorIndex, VectorIndex


def unit(rng: np.random.Generator, n: int, d: int = 32) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def check_contract(index: VectorIndex) -> None:
    rng = np.random.default_rng(1)
    vectors = unit(rng, 300)
    index.upsert("items", list(range(300)), vectors, [f"h{i}" for i in range(300)])
    top = index.search("items", vectors[7], 5)
    assert top[0][0] == 7 and top[0][1] == pytest.approx(1.0, abs=1e-4)
    assert [s for _, s in top] == sorted((s for _, s in top), reverse=True)
    allowed = [1, 2, 3, 250]
    assert {i for i, _ in index.search("items", vectors[7], 10, allowed=allowed)} <= set(allowed)
    assert index.search("items", vectors[7], 10, allowed=[]) == []
    index.delete("items", [7])
    assert 7 not in {i for i, _ in index.search("items", vectors[7], 50)}
    index.upsert("items", [8], vectors[9:10], ["changed"])
    assert index.hashes("items")[8] == "changed"
    assert index.search("items", vectors[9], 2)[0][0] in {8, 9}
    assert index.search("other", vectors[0], 3) == []


def test_embedded_in_memory() -> None:
    check_contract(EmbeddedVectorIndex())


def test_embedded_ivf_path_agrees_with_exact() -> None:
    rng = np.random.default_rng(2)
    centers = unit(rng, 20)
    data = centers[rng.integers(0, 20, 3000)] + 0.05 * unit(rng, 3000)
    data = (data / np.linalg.norm(data, axis=1, keepdims=True)).astype(np.float32)
    ivf = EmbeddedVectorIndex(ivf_min_items=1000, nprobe=8, exact_allowed_max=10)
    exact = EmbeddedVectorIndex(ivf_min_items=10**9)
    for index in (ivf, exact):
        index.upsert("c", list(range(3000)), data, [""] * 3000)
    ivf.build_ivf("c")
    queries = data[:50]
    recall = np.mean(
        [
            len({i for i, _ in ivf.search("c", q, 10)} & {i for i, _ in exact.search("c", q, 10)})
            / 10
            for q in queries
        ]
    )
    assert recall >= 0.9
    allowed = list(range(0, 3000, 7))
    assert {i for i, _ in ivf.search("c", data[5], 10, allowed=allowed)} <= set(allowed)
    ivf.delete("c", [0])
    assert 0 not in {i for i, _ in ivf.search("c", data[0], 10)}


def test_embedded_processes_stay_in_step(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'v.db'}")
    migrate(engine)
    writer, reader = (EmbeddedVectorIndex(make_sessions(engine)) for _ in range(2))
    check_contract(writer)
    vectors = unit(np.random.default_rng(1), 300)
    assert reader.search("items", vectors[9], 1)[0][0] in {8, 9}  # sees the writer's changes
    assert 7 not in {i for i, _ in reader.search("items", vectors[7], 50)}
    fresh = EmbeddedVectorIndex(make_sessions(engine))  # a restart loads the table
    assert fresh.hashes("items") == writer.hashes("items")
    engine.dispose()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_pgvector(postgres: str) -> None:
    from townsquare.storage.pgvector import PgVectorIndex

    index = PgVectorIndex(postgres, 32, table="test_vectors")
    try:
        check_contract(index)
        assert index.vector("items", 8) is not None
    finally:
        index.close()
