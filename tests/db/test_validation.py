"""Every request the engine refuses, with the error class and a message that helps."""

from __future__ import annotations

import numpy as np
import pytest

from nachbar.db.engine import Database
from nachbar.db.errors import (
    DBError,
    InvalidArgumentError,
    NotFoundError,
    StoreExistsError,
    StoreNotFoundError,
)
from nachbar.db.filters import Condition, Op
from nachbar.db.interface import Engine
from nachbar.db.types import Entry, ExactConfig, HnswConfig, Metric, StoreSpec

DIM = 4


def vec(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


@pytest.fixture
def store(db: Engine) -> str:
    db.create_store(StoreSpec("s", DIM))
    db.upsert("s", [Entry("a", vec(1, 0, 0, 0), {"n": 1})])
    return "s"


@pytest.mark.parametrize("name", ["", "has space", "a/b", "ü", "x" * 129, 7])
def test_store_names(db: Engine, name: object) -> None:
    with pytest.raises(InvalidArgumentError, match="store name .* is invalid"):
        db.create_store(StoreSpec(name, DIM))  # type: ignore[arg-type]


def test_valid_store_name_characters(db: Engine) -> None:
    info, created = db.create_store(StoreSpec("Ab_0.9-z" + "x" * 120, DIM))
    assert created and info.name == "Ab_0.9-z" + "x" * 120


@pytest.mark.parametrize("dimension", [0, -1, 65537, True, 2.0])
def test_dimension_range(db: Engine, dimension: object) -> None:
    with pytest.raises(InvalidArgumentError, match="dimension .* out of range; use 1 to 65536"):
        db.create_store(StoreSpec("s", dimension))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("index", "field"),
    [
        (HnswConfig(m=1), "m"),
        (HnswConfig(m=1000), "m"),
        (HnswConfig(ef_construction=0), "ef_construction"),
        (HnswConfig(ef_search=0), "ef_search"),
        (HnswConfig(ef_search=10_001), "ef_search"),
    ],
)
def test_hnsw_parameters(db: Engine, index: HnswConfig, field: str) -> None:
    with pytest.raises(InvalidArgumentError, match=f"HNSW {field} .* out of range"):
        db.create_store(StoreSpec("s", DIM, index=index))


def test_unknown_metric_and_bad_store_metadata(db: Engine) -> None:
    with pytest.raises(InvalidArgumentError, match="unknown metric 'hamming'"):
        db.create_store(StoreSpec("s", DIM, metric="hamming"))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="store_metadata"):
        db.create_store(StoreSpec("s", DIM, store_metadata={"k": 1}))  # type: ignore[dict-item]
    with pytest.raises(InvalidArgumentError, match="field names must be non-empty"):
        db.create_store(StoreSpec("s", DIM, predicate_indexes=("",)))


def test_create_existing_store(db: Engine, store: str) -> None:
    with pytest.raises(StoreExistsError, match="'s' already exists"):
        db.create_store(StoreSpec(store, DIM))
    with pytest.raises(StoreExistsError, match="dimension 4 and metric cosine, not 8 and l2"):
        db.create_store(StoreSpec(store, 8, metric=Metric.L2), if_not_exists=True)


def test_missing_store(db: Engine) -> None:
    with pytest.raises(StoreNotFoundError, match="store 'nope' does not exist"):
        db.get_store("nope")
    with pytest.raises(StoreNotFoundError):
        db.upsert("nope", [Entry("a", vec(1, 0, 0, 0))])
    with pytest.raises(StoreNotFoundError):
        db.get_sim_n("nope", vec(1, 0, 0, 0), 1)
    with pytest.raises(StoreNotFoundError):
        db.drop_store("nope")
    assert db.drop_store("nope", missing_ok=True) is False


def test_wrong_vector_dimension_names_store_and_dims(db: Engine, store: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        db.upsert(store, [Entry("b", vec(1, 2, 3))])
    assert "store 's' has dimension 4, but entry 'b' has 3 values" in caught.value.message
    with pytest.raises(InvalidArgumentError, match="dimension 4, but the query has 5 values"):
        db.get_sim_n(store, vec(1, 2, 3, 4, 5), 1)
    with pytest.raises(InvalidArgumentError, match=r"has shape \(2, 2\)"):
        db.upsert(store, [Entry("b", np.ones((2, 2), dtype=np.float32))])
    with pytest.raises(InvalidArgumentError, match="has no vector"):
        db.upsert(store, [Entry("b", None)])
    with pytest.raises(InvalidArgumentError, match="not a list of numbers"):
        db.upsert(store, [Entry("b", np.array(["a", "b", "c", "d"]))])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 1e39])
def test_non_finite_vectors_and_queries(db: Engine, store: str, bad: float) -> None:
    with pytest.raises(InvalidArgumentError, match="NaN or infinity"):
        db.upsert(store, [Entry("b", np.array([1, bad, 0, 0]))])
    with pytest.raises(InvalidArgumentError, match="NaN or infinity"):
        db.get_sim_n(store, np.array([1, bad, 0, 0]), 1)


def test_zero_vector_with_cosine(db: Engine, store: str) -> None:
    with pytest.raises(InvalidArgumentError, match="all zeros.*cosine"):
        db.upsert(store, [Entry("z", vec(0, 0, 0, 0))])
    with pytest.raises(InvalidArgumentError, match="all zeros.*cosine"):
        db.get_sim_n(store, vec(0, 0, 0, 0), 1)
    # Under L2 a zero vector is an ordinary point.
    db.create_store(StoreSpec("l2", DIM, metric=Metric.L2))
    db.upsert("l2", [Entry("z", vec(0, 0, 0, 0))])
    assert db.get_sim_n("l2", vec(0, 0, 0, 0), 1).matches[0].score == 0.0


def test_ids(db: Engine, store: str) -> None:
    with pytest.raises(InvalidArgumentError, match="non-empty strings"):
        db.upsert(store, [Entry("", vec(1, 0, 0, 0))])
    with pytest.raises(InvalidArgumentError, match="'b' appears twice"):
        db.upsert(store, [Entry("b", vec(1, 0, 0, 0)), Entry("b", vec(0, 1, 0, 0))])
    with pytest.raises(InvalidArgumentError, match="longer than 1024"):
        db.upsert(store, [Entry("x" * 1025, vec(1, 0, 0, 0))])
    with pytest.raises(InvalidArgumentError, match="non-empty strings"):
        db.get_keys(store, ["a", ""])
    with pytest.raises(InvalidArgumentError, match="non-empty strings"):
        db.delete_keys(store, [3])  # type: ignore[list-item]
    with pytest.raises(InvalidArgumentError, match="list of strings"):
        db.get_keys(store, "a")


def test_empty_batch(db: Engine, store: str) -> None:
    with pytest.raises(InvalidArgumentError, match="upsert batch is empty"):
        db.upsert(store, [])


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"x": {"nested": 1}}, "has type dict"),
        ({"x": [1, 2]}, "lists may hold only strings"),
        ({"x": None}, "has type NoneType"),
        ({"x": 2**63}, "outside the 64-bit integer range"),
        ({"x": float("nan")}, "finite number"),
        ({"x": float("inf")}, "finite number"),
        ({"": 1}, "non-empty strings"),
        ({3: 1}, "non-empty strings"),
        ({"x": "\ud800"}, "not valid Unicode"),
        ({"f" * 300: 1}, "longer than 256"),
    ],
)
def test_metadata_types(
    db: Engine, store: str, metadata: dict[object, object], message: str
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        db.upsert(store, [Entry("b", vec(1, 0, 0, 0), metadata)])  # type: ignore[arg-type]
    assert message in caught.value.message
    assert "'b'" in caught.value.message


def test_metadata_limits_that_are_accepted(db: Engine, store: str) -> None:
    meta = {"lo": -(2**63), "hi": 2**63 - 1, "empty": [], "blob": b"", "s": ""}
    db.upsert(store, [Entry("b", vec(1, 0, 0, 0), meta)])  # type: ignore[arg-type]
    assert db.get_keys(store, ["b"])[0][0].metadata == meta


def test_failed_batch_stores_nothing(db: Engine, store: str) -> None:
    good = [Entry(f"g{i}", vec(1, i, 0, 0), {"i": i}) for i in range(5)]
    bad = Entry("bad", vec(1, float("nan"), 0, 0))
    replaced = Entry("a", vec(0, 1, 0, 0), {"n": 999})
    with pytest.raises(InvalidArgumentError):
        db.upsert(store, [replaced, *good, bad])
    assert db.get_store(store).count == 1
    found, missing = db.get_keys(store, ["a", "g0", "g4"], include_vectors=True)
    assert [e.id for e in found] == ["a"] and missing == ["g0", "g4"]
    assert found[0].metadata == {"n": 1}
    np.testing.assert_array_equal(found[0].vector, vec(1, 0, 0, 0))


@pytest.mark.parametrize("k", [0, -1, 10_001, True])
def test_k(db: Engine, store: str, k: int) -> None:
    with pytest.raises(InvalidArgumentError, match="k"):
        db.get_sim_n(store, vec(1, 0, 0, 0), k)


def test_ef_and_mode(db: Engine, store: str) -> None:
    with pytest.raises(InvalidArgumentError, match="ef 10001 is more than 10000"):
        db.get_sim_n(store, vec(1, 0, 0, 0), 1, ef=10_001)
    with pytest.raises(InvalidArgumentError, match="ef is -1"):
        db.get_sim_n(store, vec(1, 0, 0, 0), 1, ef=-1)
    with pytest.raises(InvalidArgumentError, match="unknown search mode"):
        db.get_sim_n(store, vec(1, 0, 0, 0), 1, mode="fast")  # type: ignore[arg-type]


@pytest.mark.parametrize("limit", [0, -5, 10_001])
def test_page_limit(db: Engine, store: str, limit: int) -> None:
    with pytest.raises(InvalidArgumentError, match="page limit .* use 1 to 10000"):
        db.get_by_predicate(store, None, limit=limit)


@pytest.mark.parametrize("token", ["garbage", "1***", "1", "2YQ"])
def test_page_token(db: Engine, store: str, token: str) -> None:
    with pytest.raises(InvalidArgumentError, match="was not returned by GetByPredicate"):
        db.get_by_predicate(store, None, page_token=token)


def test_malformed_filters_are_refused_everywhere(db: Engine, store: str) -> None:
    bad = Condition("n", Op.IN)
    with pytest.raises(InvalidArgumentError, match="at least one value"):
        db.get_by_predicate(store, bad)
    with pytest.raises(InvalidArgumentError, match="at least one value"):
        db.get_sim_n(store, vec(1, 0, 0, 0), 1, filter=bad)
    with pytest.raises(InvalidArgumentError, match="at least one value"):
        db.delete_by_predicate(store, bad)
    with pytest.raises(InvalidArgumentError, match="needs a filter"):
        db.delete_by_predicate(store, None)  # type: ignore[arg-type]
    assert db.get_store(store).count == 1


def test_predicate_index_arguments(db: Engine, store: str) -> None:
    with pytest.raises(InvalidArgumentError, match="at least one field"):
        db.create_pred_index(store, [])
    with pytest.raises(InvalidArgumentError, match="non-empty strings"):
        db.create_pred_index(store, ["ok", ""])
    with pytest.raises(NotFoundError, match="no predicate index on 'n'"):
        db.drop_pred_index(store, ["n"])
    assert db.drop_pred_index(store, ["n"], missing_ok=True) == 0


def test_exact_index_store_accepts_every_mode(db: Engine) -> None:
    db.create_store(StoreSpec("e", DIM, index=ExactConfig()))
    db.upsert("e", [Entry("a", vec(1, 0, 0, 0))])
    assert db.get_sim_n("e", vec(1, 0, 0, 0), 1, mode="hnsw").plan == "exact"  # type: ignore[arg-type]


def test_closed_database(data_dir: object) -> None:
    db = Database.open(data_dir, checkpoint_seconds=0)  # type: ignore[arg-type]
    db.close()
    db.close()  # closing twice is harmless
    with pytest.raises(DBError, match="closed"):
        db.list_stores()


def test_unknown_fsync_policy(data_dir: object) -> None:
    with pytest.raises(InvalidArgumentError, match="fsync policy 'sometimes'"):
        Database.open(data_dir, fsync="sometimes")  # type: ignore[arg-type]
