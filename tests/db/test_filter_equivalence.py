"""Filters give the same answer with predicate indexes, without them, by brute force, and on
Milvus.

Random metadata (every type, missing fields, mixed types in one field, numbers around 2**53)
and random nested filters are evaluated three ways: by a store that indexes every field, by a
store that indexes none, and by `filters.matches` over a plain Python copy of the data. The
indexed store is then changed a little (answers come from snapshot + changed slots) and a lot
(the snapshots are rebuilt), and the comparison is repeated. The Milvus engine answers the same
random filters through its translation to Milvus expressions (nachbar.db.milvus_filters), on
typed columns and on the JSON.
"""

from __future__ import annotations

import random

import numpy as np

from nachbar.db.engine import Database
from nachbar.db.filters import AllOf, AnyOf, Condition, Filter, Not, Op, matches, validate
from nachbar.db.interface import Engine
from nachbar.db.milvus_engine import MilvusEngine
from nachbar.db.types import Entry, Metadata, MetadataValue, StoreSpec

FIELDS = ("s", "n", "b", "y", "l", "mix", "big")
WORDS = ("red", "green", "blue", "", "Ärger", "blue ")
BYTES = (b"", b"\x00", b"\x00\x01", b"\xff", b"a")
NUMBERS: tuple[int | float, ...] = (-3, -1, 0, 1, 2, 3, -1.5, 0.0, 2.0, 2.5, 1e-9)
BIG: tuple[int | float, ...] = (2**53, 2**53 + 1, 2**53 - 1, float(2**53), -(2**63), 2**63 - 1)
DIM = 4


def random_value(rng: random.Random, field: str) -> MetadataValue:
    if field == "s":
        return rng.choice(WORDS)
    if field == "n":
        return rng.choice(NUMBERS)
    if field == "b":
        return rng.random() < 0.5
    if field == "y":
        return rng.choice(BYTES)
    if field == "l":
        return rng.sample(WORDS, rng.randint(0, 3))
    if field == "big":
        return rng.choice(BIG)
    return random_value(rng, rng.choice(("s", "n", "b", "y", "l")))


def random_metadata(rng: random.Random) -> Metadata:
    return {f: random_value(rng, f) for f in FIELDS if rng.random() < 0.8}


def random_operand(rng: random.Random, ordered: bool) -> MetadataValue:
    while True:
        value = random_value(rng, rng.choice(FIELDS))
        if not ordered or not isinstance(value, bool | list):
            return value


def random_condition(rng: random.Random) -> Condition:
    field = rng.choice((*FIELDS, "absent"))
    op = rng.choice(list(Op))
    if op == Op.EXISTS:
        return Condition(field, op)
    if op in (Op.IN, Op.NOT_IN):
        values = tuple(random_operand(rng, False) for _ in range(rng.randint(1, 3)))
        return Condition(field, op, values=values)
    return Condition(field, op, random_operand(rng, op in (Op.LT, Op.LTE, Op.GT, Op.GTE)))


def random_filter(rng: random.Random, depth: int = 0) -> Filter:
    roll = rng.random()
    if depth >= 3 or roll < 0.45:
        return random_condition(rng)
    if roll < 0.7:
        return AllOf(tuple(random_filter(rng, depth + 1) for _ in range(rng.randint(1, 3))))
    if roll < 0.9:
        return AnyOf(tuple(random_filter(rng, depth + 1) for _ in range(rng.randint(1, 3))))
    return Not(random_filter(rng, depth + 1))


def all_ids(db: Engine, store: str, flt: Filter, page_size: int = 97) -> list[str]:
    ids: list[str] = []
    token = ""
    while True:
        page = db.get_by_predicate(store, flt, limit=page_size, page_token=token)
        ids += [e.id for e in page.entries]
        token = page.next_page_token
        if not token:
            return ids


def compare(db: Engine, model: dict[str, Metadata], rng: random.Random, count: int) -> int:
    """Check `count` random filters; returns how many matched at least one entry."""
    nonempty = 0
    query = np.ones(DIM, dtype=np.float32)
    for _ in range(count):
        flt = random_filter(rng)
        validate(flt)
        expected = sorted(i for i, meta in model.items() if matches(flt, meta))
        indexed = all_ids(db, "indexed", flt)
        plain = all_ids(db, "plain", flt)
        assert indexed == expected, flt
        assert plain == expected, flt
        hits = db.get_sim_n("indexed", query, 1000, filter=flt, mode="exact")  # type: ignore[arg-type]
        assert sorted(m.id for m in hits.matches) == expected, flt
        hits = db.get_sim_n("plain", query, 1000, filter=flt, mode="exact")  # type: ignore[arg-type]
        assert sorted(m.id for m in hits.matches) == expected, flt
        nonempty += bool(expected)
    return nonempty


def upsert_both(db: Engine, entries: list[Entry], model: dict[str, Metadata]) -> None:
    db.upsert("indexed", entries)
    db.upsert("plain", entries)
    for entry in entries:
        model[entry.id] = entry.metadata


def test_indexed_unindexed_and_reference_agree(database: Database) -> None:
    db = database
    rng = random.Random(1234)
    nprng = np.random.default_rng(1234)
    db.create_store(StoreSpec("indexed", DIM, predicate_indexes=FIELDS))
    db.create_store(StoreSpec("plain", DIM))
    model: dict[str, Metadata] = {}

    def entry(entry_id: str) -> Entry:
        return Entry(entry_id, nprng.standard_normal(DIM) + 3, random_metadata(rng))

    upsert_both(db, [entry(f"e{n:04d}") for n in range(700)], model)
    assert compare(db, model, rng, 400) > 150  # most filters select something

    # A few changes: answered from the snapshots plus the changed slots, no rebuild.
    indexes = db._stores["indexed"].field_indexes
    rebuilds = {f: indexes[f].rebuilds for f in FIELDS}
    assert all(n == 1 for n in rebuilds.values())
    changed = rng.sample(sorted(model), 60)
    upsert_both(db, [entry(i) for i in changed] + [entry(f"new{n}") for n in range(40)], model)
    gone = rng.sample(sorted(model), 30)
    for store in ("indexed", "plain"):
        assert db.delete_keys(store, gone) == 30
    for entry_id in gone:
        del model[entry_id]
    compare(db, model, rng, 150)
    assert {f: indexes[f].rebuilds for f in FIELDS} == rebuilds

    # Many changes: the next lookups rebuild the snapshots.
    upsert_both(db, [entry(i) for i in sorted(model)], model)
    compare(db, model, rng, 150)
    assert all(indexes[f].rebuilds == 2 for f in FIELDS)
    # The unindexed store answered broad filters from cached columns, kept in sync the same way.
    assert db._stores["plain"].columns.fields()


def test_milvus_translation_agrees_with_the_reference(milvus_db: MilvusEngine) -> None:
    rng = random.Random(4321)
    nprng = np.random.default_rng(4321)
    db = milvus_db
    # Fields indexed at creation are filtered through typed columns, the others through the
    # JSON: "mix" holds every type, so each type meets both forms, also within one filter.
    db.create_store(StoreSpec("m", DIM, predicate_indexes=("big", "mix", "n", "s")))
    assert set(db._stores["m"].columns) == {"big", "mix", "n", "s"}
    model: dict[str, Metadata] = {}

    def entry(entry_id: str) -> Entry:
        return Entry(entry_id, nprng.standard_normal(DIM) + 3, random_metadata(rng))

    entries = [entry(f"e{n:04d}") for n in range(500)]
    db.upsert("m", entries)
    model.update((e.id, e.metadata) for e in entries)
    query = np.ones(DIM, dtype=np.float32)
    nonempty = 0
    for round_number in range(600):
        if round_number == 300:  # replace some entries, delete others, and go on
            changed = [entry(i) for i in rng.sample(sorted(model), 80)]
            db.upsert("m", changed)
            model.update((e.id, e.metadata) for e in changed)
            gone = rng.sample(sorted(model), 40)
            assert db.delete_keys("m", gone) == 40
            for entry_id in gone:
                del model[entry_id]
        flt = random_filter(rng)
        validate(flt)
        expected = sorted(i for i, meta in model.items() if matches(flt, meta))
        assert all_ids(db, "m", flt, page_size=10_000) == expected, flt
        if round_number % 10 == 0:  # pages and the search planner, less often (they cost more)
            assert all_ids(db, "m", flt, page_size=53) == expected, flt
            hits = db.get_sim_n("m", query, 1000, filter=flt)
            assert sorted(m.id for m in hits.matches) == expected, flt
        nonempty += bool(expected)
    assert nonempty > 200
