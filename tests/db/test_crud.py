"""Stores and entries: create, list, upsert, get, page, delete, predicate indexes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from nachbar.db.engine import Database
from nachbar.db.errors import InvalidArgumentError, StoreNotFoundError
from nachbar.db.filters import AnyOf, Condition, Op
from nachbar.db.interface import Engine
from nachbar.db.types import (
    ALL_METADATA,
    Entry,
    ExactConfig,
    HnswConfig,
    Metadata,
    MetadataSelection,
    Metric,
    StoreSpec,
)

DIM = 3


def vec(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def test_create_get_list_drop(db: Engine) -> None:
    spec = StoreSpec(
        "photos",
        DIM,
        metric=Metric.L2,
        index=HnswConfig(m=8, ef_construction=50, ef_search=20),
        predicate_indexes=("kind", "year", "kind"),
        store_metadata={"model": "clip"},
    )
    info, created = db.create_store(spec)
    assert created
    assert info.name == "photos" and info.dimension == DIM and info.metric == Metric.L2
    assert info.index == HnswConfig(m=8, ef_construction=50, ef_search=20)
    assert info.predicate_indexes == ("kind", "year")
    assert info.store_metadata == {"model": "clip"}
    assert info.count == 0 and info.bytes_used == 0

    again, created = db.create_store(StoreSpec("photos", DIM, metric=Metric.L2), if_not_exists=True)
    assert not created and again == info  # the existing store, settings unchanged

    db.create_store(StoreSpec("notes", 5, index=ExactConfig()))
    assert [s.name for s in db.list_stores()] == ["notes", "photos"]
    assert db.get_store("notes").index == ExactConfig()

    assert db.drop_store("photos") is True
    assert [s.name for s in db.list_stores()] == ["notes"]
    with pytest.raises(StoreNotFoundError):
        db.get_store("photos")
    # The name is free again, and the new store starts empty.
    db.create_store(StoreSpec("photos", DIM))
    assert db.get_store("photos").count == 0


def test_upsert_counts_and_replaces(db: Engine) -> None:
    db.create_store(StoreSpec("s", DIM))
    first = db.upsert(
        "s",
        [
            Entry("a", vec(1, 0, 0), {"colour": "red", "n": 1}),
            Entry("b", vec(0, 1, 0), {"colour": "blue"}),
        ],
    )
    assert (first.inserted, first.updated) == (2, 0)
    second = db.upsert("s", [Entry("a", vec(0, 0, 1), {"size": 3}), Entry("c", vec(1, 1, 0), {})])
    assert (second.inserted, second.updated) == (1, 1)
    assert db.get_store("s").count == 3
    found, _ = db.get_keys("s", ["a"], include_vectors=True)
    # Replace, not merge: the old metadata is gone and the vector is the new one.
    assert found[0].metadata == {"size": 3}
    np.testing.assert_array_equal(found[0].vector, vec(0, 0, 1))
    top = db.get_sim_n("s", vec(0, 0, 1), 1, mode="hnsw")  # type: ignore[arg-type]
    assert top.matches[0].id == "a"
    top = db.get_sim_n("s", vec(0, 0, 1), 1, mode="exact")  # type: ignore[arg-type]
    assert top.matches[0].id == "a"


def test_metadata_round_trips_with_types(db: Engine) -> None:
    db.create_store(StoreSpec("s", DIM))
    meta = {
        "s": "text ü ✓",
        "i": -42,
        "f": 0.1,
        "whole": 3.0,
        "t": True,
        "no": False,
        "y": b"\x00\xff",
        "l": ["x", "y"],
    }
    db.upsert("s", [Entry("a", vec(1, 0, 0), meta)])  # type: ignore[arg-type]
    got = db.get_keys("s", ["a"])[0][0].metadata
    assert got == meta
    assert type(got["t"]) is bool and type(got["i"]) is int and type(got["whole"]) is float
    # Results are copies: changing them does not change the store.
    got["l"].append("z")  # type: ignore[union-attr]
    assert db.get_keys("s", ["a"])[0][0].metadata["l"] == ["x", "y"]


def test_get_keys_order_duplicates_and_missing(db: Engine) -> None:
    db.create_store(StoreSpec("s", DIM))
    db.upsert("s", [Entry(i, vec(1, n, 0)) for n, i in enumerate("abcd")])
    found, missing = db.get_keys("s", ["c", "x", "a", "c", "y"])
    assert [e.id for e in found] == ["c", "a"]
    assert missing == ["x", "y"]
    assert found[0].vector is None
    found, _ = db.get_keys("s", ["b"], include_vectors=True)
    assert found[0].vector is not None and found[0].vector.dtype == np.float32
    np.testing.assert_array_equal(found[0].vector, vec(1, 1, 0))
    assert db.get_keys("s", []) == ([], [])


def test_delete_keys_and_by_predicate(db: Engine) -> None:
    db.create_store(StoreSpec("s", DIM, predicate_indexes=("n",)))
    db.upsert("s", [Entry(f"e{n}", vec(1, n, 0), {"n": n}) for n in range(10)])
    assert db.delete_keys("s", ["e1", "e2", "e2", "nope"]) == 2
    assert db.delete_keys("s", ["e1"]) == 0
    assert db.delete_by_predicate("s", Condition("n", Op.GTE, 7)) == 3
    assert db.delete_by_predicate("s", Condition("n", Op.GTE, 7)) == 0
    remaining = [e.id for e in db.get_by_predicate("s", None).entries]
    assert remaining == ["e0", "e3", "e4", "e5", "e6"]
    assert db.get_store("s").count == 5
    # Deleted entries are gone from both search plans.
    for mode in ("exact", "hnsw"):
        result = db.get_sim_n("s", vec(1, 8, 0), 10, mode=mode)  # type: ignore[arg-type]
        assert sorted(m.id for m in result.matches) == remaining
    # A deleted id can come back; its slot is reused.
    assert db.upsert("s", [Entry("e1", vec(1, 1, 0), {"n": 1})]).inserted == 1
    assert db.get_sim_n("s", vec(1, 1, 0), 1, mode="hnsw").matches[0].id == "e1"  # type: ignore[arg-type]


def test_paging_in_id_order(db: Engine) -> None:
    db.create_store(StoreSpec("s", DIM))
    ids = [f"id{n:03d}" for n in range(250)]
    rng = np.random.default_rng(0)
    shuffled = list(rng.permutation(ids))
    db.upsert("s", [Entry(i, vec(1, n, 0), {"n": n % 7}) for n, i in enumerate(shuffled)])
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = db.get_by_predicate("s", None, limit=40, page_token=token)
        seen += [e.id for e in page.entries]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == ids and pages == 7
    # With a filter: only matches, still in id order, and the last page has no token.
    flt = Condition("n", Op.EQ, 3)
    expected = sorted(i for n, i in enumerate(shuffled) if n % 7 == 3)
    first = db.get_by_predicate("s", flt, limit=len(expected) - 1)
    rest = db.get_by_predicate("s", flt, limit=100, page_token=first.next_page_token)
    assert [e.id for e in first.entries + rest.entries] == expected
    assert first.next_page_token and not rest.next_page_token
    # Exactly one full page leaves no token behind.
    exact = db.get_by_predicate("s", flt, limit=len(expected))
    assert len(exact.entries) == len(expected) and exact.next_page_token == ""


def test_paging_survives_writes_between_pages(db: Engine) -> None:
    db.create_store(StoreSpec("s", DIM))
    db.upsert("s", [Entry(f"k{n}", vec(1, n, 0)) for n in range(6)])
    page = db.get_by_predicate("s", None, limit=3)
    assert [e.id for e in page.entries] == ["k0", "k1", "k2"]
    db.delete_keys("s", ["k2", "k3"])
    db.upsert("s", [Entry("k25", vec(1, 9, 0)), Entry("k0a", vec(1, 8, 0))])
    rest = db.get_by_predicate("s", None, limit=10, page_token=page.next_page_token)
    assert [e.id for e in rest.entries] == ["k25", "k4", "k5"]


def test_get_by_predicate_includes_vectors(db: Engine) -> None:
    db.create_store(StoreSpec("s", DIM))
    db.upsert("s", [Entry("a", vec(1, 2, 3), {"x": 1})])
    entry = db.get_by_predicate("s", Condition("x", Op.EXISTS), include_vectors=True).entries[0]
    np.testing.assert_array_equal(entry.vector, vec(1, 2, 3))
    assert db.get_by_predicate("s", Condition("x", Op.EXISTS)).entries[0].vector is None


def test_predicate_indexes_create_and_drop(db: Engine) -> None:
    db.create_store(StoreSpec("s", DIM, predicate_indexes=("a",)))
    db.upsert("s", [Entry(f"e{n}", vec(1, n, 0), {"a": n, "b": n % 2}) for n in range(20)])
    flt = AnyOf((Condition("a", Op.LT, 3), Condition("b", Op.EQ, 1)))
    before = [e.id for e in db.get_by_predicate("s", flt).entries]
    assert db.create_pred_index("s", ["b", "a", "c"]) == 2
    assert db.create_pred_index("s", ["b"]) == 0
    assert db.get_store("s").predicate_indexes == ("a", "b", "c")
    assert [e.id for e in db.get_by_predicate("s", flt).entries] == before
    assert db.drop_pred_index("s", ["a", "zzz"], missing_ok=True) == 1
    assert db.get_store("s").predicate_indexes == ("b", "c")
    assert [e.id for e in db.get_by_predicate("s", flt).entries] == before


def test_bytes_used_follows_the_data(database: Database) -> None:
    db = database
    db.create_store(StoreSpec("s", 64))
    rng = np.random.default_rng(1)
    db.upsert("s", [Entry(f"e{n}", rng.standard_normal(64), {"t": "x" * 100}) for n in range(50)])
    used = db.get_store("s").bytes_used
    assert used >= 50 * (64 * 4 + 100)
    db.flush()  # the saved graph counts too
    with_graph = db.get_store("s").bytes_used
    assert with_graph > used
    db.delete_keys("s", [f"e{n}" for n in range(25)])
    assert db.get_store("s").bytes_used < with_graph


def test_search_scores_follow_the_metric(db: Engine) -> None:
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((40, 8)).astype(np.float32)
    query = rng.standard_normal(8).astype(np.float32)
    v64, q64 = vectors.astype(np.float64), query.astype(np.float64)
    expected = {
        Metric.COSINE: v64 @ q64 / (np.linalg.norm(v64, axis=1) * np.linalg.norm(q64)),
        Metric.L2: -np.sum((v64 - q64) ** 2, axis=1),
        Metric.INNER_PRODUCT: v64 @ q64,
    }
    for metric, truth in expected.items():
        name = f"m-{metric.value}"
        db.create_store(StoreSpec(name, 8, metric=metric))
        db.upsert(name, [Entry(f"e{n}", v) for n, v in enumerate(vectors)])
        best = np.argsort(-truth)[:5]
        for mode in ("exact", "hnsw"):
            result = db.get_sim_n(name, query, 5, mode=mode)  # type: ignore[arg-type]
            assert result.plan == mode
            assert [m.id for m in result.matches] == [f"e{n}" for n in best]
            np.testing.assert_allclose([m.score for m in result.matches], truth[best], rtol=1e-5)


def test_search_returns_metadata_and_optional_vectors(db: Engine) -> None:
    db.create_store(StoreSpec("s", DIM))
    db.upsert("s", [Entry("a", vec(1, 0, 0), {"t": "x"}), Entry("b", vec(0, 1, 0), {"t": "y"})])
    result = db.get_sim_n("s", vec(1, 0.1, 0), 5, include_vectors=True)
    assert [m.id for m in result.matches] == ["a", "b"]  # k larger than the store: all of it
    assert result.matches[0].metadata == {"t": "x"}
    np.testing.assert_array_equal(result.matches[0].vector, vec(1, 0, 0))
    assert db.get_sim_n("s", vec(1, 0, 0), 1).matches[0].vector is None


def test_empty_store_and_empty_filter_result(db: Engine) -> None:
    db.create_store(StoreSpec("s", DIM))
    assert db.get_sim_n("s", vec(1, 0, 0), 3).matches == []
    db.upsert("s", [Entry("a", vec(1, 0, 0), {"n": 1})])
    assert db.get_sim_n("s", vec(1, 0, 0), 3, filter=Condition("n", Op.EQ, 2)).matches == []
    assert db.get_by_predicate("s", Condition("n", Op.EQ, 2)).entries == []


def test_exact_store(db: Engine) -> None:
    db.create_store(StoreSpec("s", DIM, index=ExactConfig()))
    db.upsert("s", [Entry(f"e{n}", vec(1, n, 0)) for n in range(10)])
    result = db.get_sim_n("s", vec(1, 4, 0), 3)
    assert result.plan == "exact"
    assert [m.id for m in result.matches] == ["e4", "e5", "e3"]


def test_slots_of_deleted_entries_are_reused(database: Database) -> None:
    db = database
    rng = np.random.default_rng(3)
    db.create_store(StoreSpec("s", 8))
    first = rng.standard_normal((100, 8)).astype(np.float32)
    db.upsert("s", [Entry(f"old{n}", v) for n, v in enumerate(first)])
    db.delete_keys("s", [f"old{n}" for n in range(0, 100, 2)])
    fresh = rng.standard_normal((50, 8)).astype(np.float32)
    db.upsert("s", [Entry(f"new{n}", v) for n, v in enumerate(fresh)])
    assert db._stores["s"].size == 100  # no new rows: the 50 freed slots took the new entries
    for n, v in enumerate(fresh):
        assert db.get_sim_n("s", v, 1, mode="hnsw").matches[0].id == f"new{n}"  # type: ignore[arg-type]
    for n in range(1, 100, 2):
        assert db.get_sim_n("s", first[n], 1, mode="hnsw").matches[0].id == f"old{n}"  # type: ignore[arg-type]
    assert db.get_store("s").count == 100


def test_churn_reuses_slots_and_replaces_vectors_without_growing(database: Database) -> None:
    """Rounds of deletes + inserts and vector replacements: freed slots are all taken again,
    the graph keeps one node per slot, and every entry is found with its latest vector."""
    db = database
    rng = np.random.default_rng(11)
    db.create_store(StoreSpec("churn", 8))
    current = {f"e{n}": rng.standard_normal(8).astype(np.float32) for n in range(120)}
    db.upsert("churn", [Entry(i, v) for i, v in current.items()])
    state = db._stores["churn"]
    following = 120
    for _ in range(5):
        gone = sorted(rng.choice(sorted(current), 30, replace=False).tolist())
        db.delete_keys("churn", gone)
        for entry_id in gone:
            del current[entry_id]
        added = {f"e{following + n}": rng.standard_normal(8).astype(np.float32) for n in range(30)}
        following += 30
        moved = {i: rng.standard_normal(8).astype(np.float32) for i in sorted(current)[:20]}
        db.upsert("churn", [Entry(i, v) for i, v in {**added, **moved}.items()])
        current.update(added)
        current.update(moved)
        assert state.size == 120 and not state._free  # every freed slot taken again
        assert state.graph is not None and len(state.graph.labels()) == 120
    for entry_id, vector in current.items():
        top = db.get_sim_n("churn", vector, 1, mode="hnsw")  # type: ignore[arg-type]
        assert top.matches[0].id == entry_id
        (entry,) = db.get_keys("churn", [entry_id], include_vectors=True)[0]
        assert entry.vector is not None and np.array_equal(entry.vector, vector)


def test_reads_return_the_metadata_they_select(db: Database) -> None:
    db.create_store(StoreSpec("sel", DIM))
    text = "Ö" * 60  # 60 characters, 120 UTF-8 bytes
    meta: Metadata = {"t": text, "b": b"x" * 100, "l": ["ab", "cd"], "n": 7, "flag": True}
    db.upsert("sel", [Entry("a", vec(1, 0, 0), meta)])

    def read(selection: MetadataSelection) -> list[tuple[Metadata, tuple[str, ...]]]:
        got = [db.get_keys("sel", ["a"], metadata=selection)[0][0]]
        got.append(db.get_by_predicate("sel", None, metadata=selection).entries[0])
        found = db.get_sim_n("sel", vec(1, 0, 0), 1, metadata=selection).matches[0]
        return [(dict(e.metadata), e.omitted_keys) for e in got] + [
            (dict(found.metadata), found.omitted_keys)
        ]

    assert read(ALL_METADATA) == [(meta, ())] * 3
    assert read(MetadataSelection(include=False)) == [({}, ())] * 3
    excluded = MetadataSelection(exclude_keys=frozenset({"b", "absent"}))
    assert read(excluded) == [({k: v for k, v in meta.items() if k != "b"}, ("b",))] * 3
    # Text is measured in UTF-8 bytes: 120 > 110, while the bytes value (100) stays.
    by_size = MetadataSelection(max_value_bytes=110)
    assert read(by_size) == [({k: v for k, v in meta.items() if k != "t"}, ("t",))] * 3
    assert (
        read(MetadataSelection(max_value_bytes=3))
        == [({"n": 7, "flag": True}, ("t", "b", "l"))] * 3
    )
    # The stored entry is untouched.
    assert db.get_keys("sel", ["a"])[0][0].metadata == meta


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        (MetadataSelection(max_value_bytes=-1), "max_metadata_value_bytes is -1"),
        (MetadataSelection(exclude_keys=frozenset(map(str, range(1025)))), "more than 1024"),
    ],
)
def test_bad_metadata_selections_are_refused(
    db: Database, selection: MetadataSelection, message: str
) -> None:
    db.create_store(StoreSpec("sel", DIM))
    with pytest.raises(InvalidArgumentError, match=message):
        db.get_keys("sel", ["a"], metadata=selection)


def test_expected_store_id_guards_every_request_against_a_recreated_store(db: Database) -> None:
    from nachbar.db.errors import StoreChangedError

    first, _ = db.create_store(StoreSpec("s", DIM, index=ExactConfig()))
    db.upsert("s", [Entry("a", vec(1, 0, 0))], expected_store_id=first.store_id)
    db.drop_store("s")
    second, _ = db.create_store(StoreSpec("s", DIM, index=ExactConfig()))
    assert second.store_id > first.store_id > 0  # ids are never reused
    assert db.get_store("s").store_id == second.store_id
    stale = first.store_id
    calls: list[Callable[[], object]] = [
        lambda: db.upsert("s", [Entry("b", vec(0, 1, 0))], expected_store_id=stale),
        lambda: db.get_keys("s", ["a"], expected_store_id=stale),
        lambda: db.get_by_predicate("s", None, expected_store_id=stale),
        lambda: db.get_sim_n("s", vec(1, 0, 0), 1, expected_store_id=stale),
        lambda: db.delete_keys("s", ["a"], expected_store_id=stale),
        lambda: db.delete_by_predicate("s", Condition("n", Op.EXISTS), expected_store_id=stale),
        lambda: db.drop_store("s", expected_store_id=stale),
    ]
    for call in calls:
        with pytest.raises(StoreChangedError, match=f"id {stale} .*now id {second.store_id}"):
            call()
    assert db.get_store("s").count == 0  # nothing reached the new store
    db.upsert("s", [Entry("b", vec(0, 1, 0))], expected_store_id=second.store_id)
    assert db.get_sim_n("s", vec(0, 1, 0), 1, expected_store_id=0).matches[0].id == "b"
    assert db.drop_store("s", expected_store_id=second.store_id) is True
    assert db.drop_store("s", missing_ok=True, expected_store_id=second.store_id) is False
