"""The vector indexes: exact and IVF paths, metadata filters inside the index, deletes,
several processes, the change-log follower, pgvector."""

import threading
from pathlib import Path

import numpy as np
import pytest

from townsquare.storage.db import make_engine, make_sessions, migrate
from townsquare.storage.filters import (
    And,
    Eq,
    Everything,
    Filter,
    In,
    IsNull,
    Near,
    Not,
    Or,
    Range,
    haversine_km,
    matches,
)
from townsquare.storage.vectors import EmbeddedVectorIndex, VectorIndex, attrs_hash


def unit(rng: np.random.Generator, n: int, d: int = 32) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def metadata(rng: np.random.Generator, n: int) -> list[dict]:
    """Random item metadata in the shapes the app uses (strings, ints, floats, nulls)."""
    out = []
    for i in range(n):
        out.append(
            {
                "status": ["active", "sold", "draft"][int(rng.integers(0, 3))],
                "group_id": None if i % 3 == 0 else int(rng.integers(1, 6)),
                "price_cents": int(rng.integers(0, 50_000)),
                "lat": 38.7 + float(rng.uniform(-0.05, 0.05)),
                "lon": -9.14 + float(rng.uniform(-0.05, 0.05)),
                "seller_id": int(rng.integers(1, 20)),
            }
        )
    return out


FILTERS: list[Filter] = [
    Everything(),
    Eq("status", "active"),
    Eq("status", "never-seen"),
    In("group_id", (1, 3)),
    IsNull("group_id"),
    Range("price_cents", 1000, 9000),
    Range("price_cents", None, 500),
    Near(38.71, -9.13, 2.0),
    Or((Eq("status", "active"), Eq("seller_id", 4))),
    And((Eq("status", "active"), Or((IsNull("group_id"), In("group_id", (2,)))))),
    Not(Eq("status", "sold")),
]


def brute_force(vectors, attrs, query, k, where, exclude=()):
    scores = vectors @ query
    keep = [i for i in range(len(vectors)) if matches(where, attrs[i]) and i not in exclude]
    return sorted(keep, key=lambda i: -scores[i])[:k]


def check_contract(index: VectorIndex, *, approximate: bool = False) -> None:
    rng = np.random.default_rng(1)
    vectors = unit(rng, 300)
    attrs = metadata(rng, 300)
    index.upsert("items", list(range(300)), vectors, [f"h{i}" for i in range(300)], attrs)
    top = index.search("items", vectors[7], 5)
    assert top[0][0] == 7 and top[0][1] == pytest.approx(1.0, abs=1e-4)
    assert [s for _, s in top] == sorted((s for _, s in top), reverse=True)
    # every filter is hard: only matching items come back, and (exact paths) the best of them
    for n, where in enumerate(FILTERS):
        query = vectors[(n * 37) % 300]
        found = [i for i, _ in index.search("items", query, 10, where)]
        expected = brute_force(vectors, attrs, query, 10, where)
        assert all(matches(where, attrs[i]) for i in found), where
        if approximate:
            assert len(set(found) & set(expected)) >= 0.8 * len(expected), where
        else:
            assert found == expected, where
    # exclusions (items already seen) are hard too
    seen = {i for i, _ in index.search("items", vectors[3], 5)}
    assert not seen & {i for i, _ in index.search("items", vectors[3], 20, exclude=seen)}
    # filter_ids keeps order and drops what does not match or is not indexed
    assert index.filter_ids("items", [5, 999, 4, 3], Everything()) == [5, 4, 3]
    active = [i for i in (10, 11, 12, 13, 14) if attrs[i]["status"] == "active"]
    assert index.filter_ids("items", [10, 11, 12, 13, 14], Eq("status", "active")) == active
    # state, vectors and values
    assert index.state("items", [8, 999]) == {8: ("h8", attrs_hash(attrs[8]))}
    assert set(index.vectors("items", [1, 2, 999])) == {1, 2}
    assert index.values("items", "status") == ["active", "draft", "sold"]
    # metadata can change without the vector: the filter follows at once
    index.set_attrs("items", [20], [{**attrs[20], "status": "gone"}])
    assert index.filter_ids("items", [20], Eq("status", "gone")) == [20]
    np.testing.assert_allclose(index.vectors("items", [20])[20], vectors[20], atol=1e-6)
    # deletes and replacements
    index.delete("items", [7])
    assert 7 not in {i for i, _ in index.search("items", vectors[7], 50)}
    index.upsert("items", [8], vectors[9:10], ["changed"], [attrs[8]])
    assert index.hashes("items")[8] == "changed"
    assert index.search("items", vectors[9], 2)[0][0] in {8, 9}
    assert index.search("other", vectors[0], 3) == []


def test_filters_match_the_haversine_distance() -> None:
    assert haversine_km(38.7223, -9.1393, 41.1579, -8.6291) == pytest.approx(274, abs=3)
    assert matches(Near(38.7223, -9.1393, 1.0), {"lat": 38.7223, "lon": -9.1393})
    assert not matches(Near(38.7223, -9.1393, 1.0), {"lat": None, "lon": None})


def test_embedded_in_memory() -> None:
    check_contract(EmbeddedVectorIndex())


def test_embedded_with_large_subsets_uses_the_masked_product() -> None:
    # exact_subset_max=1 forces the "most items pass" path (a product over all rows + mask)
    check_contract(EmbeddedVectorIndex(exact_subset_max=1))


def test_embedded_ivf_path_agrees_with_exact() -> None:
    rng = np.random.default_rng(2)
    centers = unit(rng, 20)
    data = centers[rng.integers(0, 20, 3000)] + 0.05 * unit(rng, 3000)
    data = (data / np.linalg.norm(data, axis=1, keepdims=True)).astype(np.float32)
    attrs = metadata(rng, 3000)
    ivf = EmbeddedVectorIndex(ivf_min_items=1000, nprobe=8, exact_subset_max=10)
    exact = EmbeddedVectorIndex(ivf_min_items=10**9)
    for index in (ivf, exact):
        index.upsert("c", list(range(3000)), data, [""] * 3000, attrs)
    ivf.build_ivf("c")
    queries = data[:50]
    for where in (None, Eq("status", "active"), Or((IsNull("group_id"), In("group_id", (2,))))):
        recall = np.mean(
            [
                len(
                    {i for i, _ in ivf.search("c", q, 10, where)}
                    & {i for i, _ in exact.search("c", q, 10, where)}
                )
                / 10
                for q in queries
            ]
        )
        assert recall >= 0.9, where
        if where is not None:  # hard: the bitmap inside the IVF scan lets nothing else through
            found = ivf.search("c", data[5], 50, where)
            assert found and all(matches(where, attrs[i]) for i, _ in found)
    ivf.delete("c", [0])
    assert 0 not in {i for i, _ in ivf.search("c", data[0], 10)}


def test_embedded_processes_stay_in_step(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'v.db'}")
    migrate(engine)
    writer = EmbeddedVectorIndex(make_sessions(engine))
    reader = EmbeddedVectorIndex(make_sessions(engine), poll_s=0.05)
    check_contract(writer)
    vectors = unit(np.random.default_rng(1), 300)
    assert reader.search("items", vectors[9], 1)[0][0] in {8, 9}  # sees the writer's changes
    assert 7 not in {i for i, _ in reader.search("items", vectors[7], 50)}
    assert reader.filter_ids("items", [20], Eq("status", "gone")) == [20]  # metadata too
    writer.delete("items", [9])
    deadline = threading.Event()
    for _ in range(100):  # the follower thread picks up later writes by itself
        if 9 not in reader.hashes("items"):
            break
        deadline.wait(0.05)
    assert 9 not in reader.hashes("items")
    fresh = EmbeddedVectorIndex(make_sessions(engine))  # a restart loads the table
    assert fresh.hashes("items") == writer.hashes("items")
    for index in (writer, reader, fresh):
        index.close()
    engine.dispose()


def test_a_slow_refresh_never_reapplies_a_stale_vector(tmp_path: Path) -> None:
    """Refresh A reads the change log, then stalls; meanwhile the item is rewritten and
    refresh B runs. When A resumes it must not put the older vector back over the newer."""
    engine = make_engine(f"sqlite:///{tmp_path / 'v.db'}")
    migrate(engine)
    sessions = make_sessions(engine)
    writer = EmbeddedVectorIndex(sessions)
    reader = EmbeddedVectorIndex(sessions, poll_s=3600)
    versions = unit(np.random.default_rng(3), 2)
    writer.upsert("c", [1], versions[0:1], ["old"])
    reader.refresh()
    writer.upsert("c", [1], versions[0:1], ["old-again"])  # a row for A to read
    inside, resume = threading.Event(), threading.Event()

    class Stalling:
        """A session whose first read in thread A waits until the test lets it go."""

        def __init__(self) -> None:
            self.inner = sessions()

        def __enter__(self) -> "Stalling":
            return self

        def __exit__(self, *exc: object) -> None:
            self.inner.close()

        def execute(self, *args: object, **kwargs: object):
            result = self.inner.execute(*args, **kwargs).all()
            if threading.current_thread().name == "A":
                inside.set()
                resume.wait(10)
            return type("Rows", (), {"all": lambda _self: result})()

    reader.sessions = Stalling  # type: ignore[assignment]
    a = threading.Thread(target=reader.refresh, name="A")
    a.start()
    assert inside.wait(10)
    writer.upsert("c", [1], versions[1:2], ["new"])  # newer than what A holds
    b = threading.Thread(target=reader.refresh, name="B")
    b.start()
    b.join(0.5)  # B may finish first (it must not be undone) or wait for A (serialised)
    resume.set()
    a.join(10)
    b.join(10)
    assert reader.hashes("c") == {1: "new"}  # with no further refresh to mend it
    np.testing.assert_allclose(reader.vectors("c", [1])[1], versions[1], atol=1e-6)
    for index in (writer, reader):
        index.close()
    engine.dispose()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_pgvector(postgres: str) -> None:
    from townsquare.storage.pgvector import PgVectorIndex

    index = PgVectorIndex(postgres, 32, table="test_vectors")
    try:
        # HNSW is approximate: filtered results must match, and mostly be the exact best
        check_contract(index, approximate=True)
        assert index.vector("items", 8) is not None
    finally:
        index.close()


def test_the_change_log_is_followed_in_commit_order(tmp_path: Path) -> None:
    """On the suite's database (PostgreSQL in its leg): a writer that took its number first
    commits first, so a follower that read past a later row has not skipped an earlier one."""
    from tests.conftest import _close, make_settings
    from townsquare.services import Services
    from townsquare.storage.social_tables import VectorItem

    services = Services.build(make_settings(tmp_path))
    writer = EmbeddedVectorIndex(services.sessions)
    reader = EmbeddedVectorIndex(services.sessions, poll_s=3600)
    vectors = unit(np.random.default_rng(5), 2)
    reader.refresh()
    slow = services.sessions()
    slow.add(
        VectorItem(
            collection="c",
            item_id=1,
            content_hash="first",
            vector=vectors[0].astype("<f4").tobytes(),
        )
    )
    slow.flush()  # it has its number, not yet committed
    later = threading.Thread(target=writer.upsert, args=("c", [2], vectors[1:2], ["second"]))
    later.start()
    later.join(0.5)
    assert later.is_alive()  # the second writer waits for the first one's commit
    reader.refresh()
    assert reader.hashes("c") == {}
    slow.commit()
    slow.close()
    later.join(30)
    reader.refresh()
    assert reader.hashes("c") == {1: "first", 2: "second"}
    for index in (writer, reader):
        index.close()
    _close(services)
