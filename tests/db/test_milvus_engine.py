"""What only the Milvus engine has: statelessness, Milvus's limits, outages, name mapping.

The semantics it shares with the embedded engine are tested by the rest of tests/db, which runs
over both engines.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from nachbar.db import milvus_filters as mf
from nachbar.db.errors import (
    InvalidArgumentError,
    StoreChangedError,
    StoreNotFoundError,
    UnavailableError,
)
from nachbar.db.filters import Condition, Op, matches
from nachbar.db.milvus_engine import (
    MAX_COLLECTION_NAME,
    MAX_METADATA_BYTES,
    TYPED_FIELDS_PROPERTY,
    MilvusEngine,
    MilvusSettings,
    _store_from_properties,
    collection_name,
)
from nachbar.db.types import Entry, Metadata, MetadataValue, StoreSpec

DIM = 4


def vec(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


@pytest.fixture
def other(milvus_settings: MilvusSettings) -> Iterator[MilvusEngine]:
    """A second engine on the same Milvus, as a second nachbar-db process would be."""
    engine = MilvusEngine.open(milvus_settings)
    yield engine
    engine.close()


def test_two_engines_share_every_fact(milvus_db: MilvusEngine, other: MilvusEngine) -> None:
    milvus_db.create_store(StoreSpec("s", DIM, store_metadata={"ai.query_model": "m"}))
    assert other.get_store("s").store_metadata == {"ai.query_model": "m"}
    other.upsert("s", [Entry("a", vec(1, 0, 0, 0), {"n": 1})])
    assert milvus_db.get_keys("s", ["a"])[0][0].metadata == {"n": 1}
    assert milvus_db.create_pred_index("s", ["n"]) == 1
    assert other.get_store("s").predicate_indexes == ("n",)
    # One engine drops the store and makes a new one of another dimension under the same name:
    # the other engine's cached spec is stale and must not be used.
    other.get_sim_n("s", vec(1, 0, 0, 0), 1)
    milvus_db.drop_store("s")
    with pytest.raises(StoreNotFoundError):
        other.get_sim_n("s", vec(1, 0, 0, 0), 1)
    milvus_db.create_store(StoreSpec("s", 2))
    milvus_db.upsert("s", [Entry("b", vec(0, 1))])
    assert [m.id for m in other.get_sim_n("s", vec(0, 1), 1).matches] == ["b"]


def test_expected_store_id_sees_a_store_recreated_by_another_engine(
    milvus_db: MilvusEngine, other: MilvusEngine
) -> None:
    first, _ = milvus_db.create_store(StoreSpec("s", DIM))
    assert other.get_store("s").store_id == first.store_id
    # `other` caches the first store's spec; the store is then replaced behind its back, with
    # the same dimension, so nothing but the id tells them apart.
    other.upsert("s", [Entry("a", vec(1, 0, 0, 0))], expected_store_id=first.store_id)
    milvus_db.drop_store("s", expected_store_id=first.store_id)
    second, _ = milvus_db.create_store(StoreSpec("s", DIM))
    assert second.store_id > first.store_id
    with pytest.raises(StoreChangedError, match=f"now id {second.store_id}"):
        other.upsert("s", [Entry("b", vec(0, 1, 0, 0))], expected_store_id=first.store_id)
    with pytest.raises(StoreChangedError):
        other.get_sim_n("s", vec(1, 0, 0, 0), 1, expected_store_id=first.store_id)
    assert milvus_db.get_store("s").count == 0
    other.upsert("s", [Entry("b", vec(0, 1, 0, 0))], expected_store_id=second.store_id)
    assert milvus_db.get_keys("s", ["b"])[0][0].id == "b"


def test_metadata_over_milvus_limit_is_refused_clearly(milvus_db: MilvusEngine) -> None:
    milvus_db.create_store(StoreSpec("s", DIM))
    fits: Metadata = {"text": "x" * (MAX_METADATA_BYTES - 100)}
    milvus_db.upsert("s", [Entry("ok", vec(1, 0, 0, 0), fits)])
    assert milvus_db.get_keys("s", ["ok"])[0][0].metadata == fits
    too_big: Metadata = {"text": "x" * MAX_METADATA_BYTES}
    batch = [Entry("fine", vec(0, 1, 0, 0)), Entry("big", vec(1, 0, 0, 0), too_big)]
    with pytest.raises(InvalidArgumentError, match="'big' has .* over Milvus's limit of 65536"):
        milvus_db.upsert("s", batch)
    assert milvus_db.get_keys("s", ["fine", "big"])[1] == ["fine", "big"]  # nothing written


WEIRD = ['q"uote', "back\\slash", "Ärger", "😀" * 1024, "tab\tnl\n", "nul\x00", "'", "\u2028", " "]


def test_any_id_field_name_and_string_round_trips(milvus_db: MilvusEngine) -> None:
    milvus_db.create_store(StoreSpec("s", DIM))
    entries = [
        Entry(text, vec(1, n, 0, 0), {text[:200]: text, "list": [text, "x"]})
        for n, text in enumerate(WEIRD)
    ]
    milvus_db.upsert("s", entries)
    found, missing = milvus_db.get_keys("s", WEIRD, include_vectors=True)
    assert found == entries and missing == []
    for entry in entries:
        field, value = next(iter(entry.metadata.items()))
        for flt in (Condition(field, Op.EQ, value), Condition("list", Op.EQ, value)):
            assert [e.id for e in milvus_db.get_by_predicate("s", flt).entries] == [entry.id]
        after = milvus_db.get_by_predicate("s", None, limit=1, page_token=_token(entry.id))
        assert [e.id for e in after.entries] == sorted(i for i in WEIRD if i > entry.id)[:1]
    assert milvus_db.delete_keys("s", WEIRD[:3]) == 3


def _token(entry_id: str) -> str:
    from nachbar.db.validation import encode_page_token

    return encode_page_token(entry_id)


NUMBERS: tuple[MetadataValue, ...] = (
    0,
    -0.0,
    1,
    2.5,
    2**53,
    2**53 + 1,
    float(2**53),
    2**63 - 1,
    -(2**63),
    1e300,
    -1e-300,
    5e-324,
)
OPERANDS: tuple[int | float, ...] = (
    *[n for n in NUMBERS if isinstance(n, int | float)],
    2**63,
    -(2**63) - 1,
    10**30,
    -(10**30),
    float("inf"),
    float("-inf"),
    2.0**63,
    0.5,
    2**53 - 1,
)


@pytest.mark.parametrize("indexed", [(), ("x",)], ids=["json", "typed columns"])
def test_number_edges_match_the_reference(milvus_db: MilvusEngine, indexed: tuple[str]) -> None:
    # Ints and floats compared exactly across kinds, at the limits of int64 and of doubles.
    milvus_db.create_store(StoreSpec("s", DIM, predicate_indexes=indexed))
    assert set(milvus_db._stores["s"].columns) == set(indexed)
    model: dict[str, Metadata] = {f"n{i}": {"x": value} for i, value in enumerate(NUMBERS)}
    model["none"] = {}
    model["text"] = {"x": "1"}
    milvus_db.upsert("s", [Entry(i, vec(1, 0, 0, 0), meta) for i, meta in model.items()])
    for operand in OPERANDS:
        for op in (Op.EQ, Op.NE, Op.LT, Op.LTE, Op.GT, Op.GTE):
            flt = Condition("x", op, operand)
            expected = sorted(i for i, meta in model.items() if matches(flt, meta))
            got = [e.id for e in milvus_db.get_by_predicate("s", flt, limit=1000).entries]
            assert got == expected, (op, operand)


def test_folded_constants_are_never_sent() -> None:
    no_int = mf.translate(Condition("x", Op.EQ, 2.5))  # no int equals 2.5: only the float test
    assert isinstance(no_int, str) and '["i"]' not in no_int and '["f"]' in no_int
    assert mf.translate(Condition("x", Op.GT, float("inf"))) is False
    assert mf.translate(Condition("x", Op.NE, 10**30)) is True
    assert mf.to_query(False) is None and mf.to_query(True) == mf.EVERYTHING


def test_collection_names_are_valid_and_distinct() -> None:
    names = ["a", "a.b", "a_b", "a-b", "a_1b", "-" * 128, "-" * 127 + "."]
    collections = [collection_name(n) for n in names]
    assert len(set(collections)) == len(names)
    for collection in collections:
        assert len(collection) <= MAX_COLLECTION_NAME
        assert collection.replace("_", "").isalnum() and not collection[0].isdigit()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_unreachable_milvus_is_unavailable_and_recovers(tmp_path: Path) -> None:
    from milvus_lite.adapter.grpc.server import start_server_in_thread

    port = free_port()
    settings = MilvusSettings(uri=f"http://127.0.0.1:{port}", timeout_seconds=2)
    engine = MilvusEngine.open(settings)  # nothing listens yet: starts anyway
    started = time.monotonic()
    with pytest.raises(UnavailableError, match="unreachable"):
        engine.list_stores()
    assert time.monotonic() - started < 15
    server, lite, _ = start_server_in_thread(str(tmp_path / "lite"), port=port)
    try:
        engine.create_store(StoreSpec("s", DIM))
        engine.upsert("s", [Entry("a", vec(1, 0, 0, 0))])
        server.stop(grace=0).wait()
        with pytest.raises(UnavailableError):
            engine.get_sim_n("s", vec(1, 0, 0, 0), 1)
        server, _, _ = start_server_in_thread(str(tmp_path / "lite2"), port=port)
        engine.create_store(StoreSpec("t", DIM))  # back: requests work again
        assert [s.name for s in engine.list_stores()] == ["t"]
    finally:
        server.stop(grace=0)
        lite.close()
        engine.close()


def test_dimension_beyond_milvus_is_refused_clearly(milvus_db: MilvusEngine) -> None:
    with pytest.raises(InvalidArgumentError, match="more than Milvus holds .32768"):
        milvus_db.create_store(StoreSpec("wide", 40_000))
    assert milvus_db.list_stores() == []


def test_fields_indexed_at_creation_get_typed_columns(
    milvus_db: MilvusEngine, other: MilvusEngine
) -> None:
    milvus_db.create_store(StoreSpec("t", DIM, predicate_indexes=("s", "n")))
    collection = collection_name("t")
    fields = {f["name"] for f in milvus_db._describe_collection(collection)["fields"]}
    assert {"p0_t", "p0_i", "p0_f", "p0_s", "p1_t", "p1_s"} <= fields
    assert milvus_db._stores["t"].columns == {"n": "p0", "s": "p1"}
    assert other._store("t").columns == {"n": "p0", "s": "p1"}  # read back from Milvus
    model: dict[str, Metadata] = {
        "a": {"n": 3, "s": "x", "late": 1},
        "b": {"n": 3.0, "s": ["x", "y"], "late": 2},
        "c": {"n": True, "s": b"x"},
        "d": {},
    }
    milvus_db.upsert("t", [Entry(i, vec(1, 0, 0, 0), meta) for i, meta in model.items()])
    # A predicate index created later is recorded; its field is filtered through the JSON.
    assert milvus_db.create_pred_index("t", ["late"]) == 1
    assert other.get_store("t").predicate_indexes == ("late", "n", "s")
    assert other._store("t").columns == {"n": "p0", "s": "p1"}
    for flt in (
        Condition("n", Op.EQ, 3),
        Condition("n", Op.NE, 3),
        Condition("n", Op.EQ, True),
        Condition("s", Op.EQ, "x"),
        Condition("s", Op.EQ, b"x"),
        Condition("s", Op.EQ, ["x", "y"]),
        Condition("s", Op.EXISTS),
        Condition("late", Op.GT, 1),
    ):
        expected = sorted(i for i, meta in model.items() if matches(flt, meta))
        got = [e.id for e in other.get_by_predicate("t", flt, limit=100).entries]
        assert got == expected, flt
    # Collections made before typed columns have no such property, and no columns.
    properties = dict(milvus_db._describe_collection(collection)["properties"])
    del properties[TYPED_FIELDS_PROPERTY]
    old = _store_from_properties(collection, properties)
    assert old is not None and old.columns == {}


def test_a_stale_cached_count_never_changes_the_answer(
    milvus_db: MilvusEngine, other: MilvusEngine
) -> None:
    """A filter's count is reused for a few seconds to pick the plan; another nachbar-db's
    writes make it wrong, and searches still return exactly min(k, matches)."""
    milvus_db.create_store(StoreSpec("c", DIM, predicate_indexes=("kind",)))
    rng = np.random.default_rng(3)

    def entries(kind: str, count: int, first: int = 0) -> list[Entry]:
        return [
            Entry(f"{kind}{i:03d}", rng.standard_normal(DIM).astype(np.float32), {"kind": kind})
            for i in range(first, first + count)
        ]

    milvus_db.upsert("c", entries("a", 3) + entries("b", 40))
    query = vec(1, 1, 1, 1)
    is_a, is_c = Condition("kind", Op.EQ, "a"), Condition("kind", Op.EQ, "c")
    assert len(milvus_db.get_sim_n("c", query, 10, filter=is_a).matches) == 3
    assert milvus_db.get_sim_n("c", query, 10, filter=is_c).matches == []
    # Counted and cached by milvus_db: 3 and 0. The other engine adds matches.
    other.upsert("c", entries("a", 20, first=3) + entries("c", 1))
    assert len(milvus_db.get_sim_n("c", query, 10, filter=is_a).matches) == 10
    assert [m.id for m in milvus_db.get_sim_n("c", query, 10, filter=is_c).matches] == ["c000"]
    # A cached count above the exact scan's limit sends the search to HNSW; fewer matches now.
    with milvus_db._counts_lock:
        for key in milvus_db._counts:
            milvus_db._counts[key] = (5000, time.monotonic())
    other.delete_keys("c", [f"a{i:03d}" for i in range(2, 23)])
    found = milvus_db.get_sim_n("c", query, 10, filter=is_a)
    assert sorted(m.id for m in found.matches) == ["a000", "a001"]
