"""Predicate indexes and the filter evaluator that uses them.

A predicate index is an in-memory inverted index over one metadata field, built from the store's
metadata cache on first use after the database opens. SQLite only records *which* fields are
indexed. Why in memory rather than an SQLite side table: every entry's metadata is cached in
memory anyway (searches return it), so building the index costs one pass over that cache, reads
never touch disk, and upserts do not pay for extra rows per indexed field.

Each index is a snapshot plus a set of "dirty" slots written since the snapshot was taken. A
lookup answers from the snapshot with numpy and then re-checks the dirty slots with the compiled
condition (`filters.CompiledCondition`), so the answer is always exactly what `filters.matches`
says; once the dirty set grows past a fraction of the store the next reader rebuilds the
snapshot.

The snapshot holds, for the field:
- `by_key`: typed value -> slots holding it (a string list contributes each element, for
  "contains", and the whole list, for list equality); used by EQ/NE/IN/NOT_IN.
- numbers, strings and bytes each sorted with their slots; LT/LTE/GT/GTE bisect them.
- `present`: every slot that has the field; used by EXISTS.

Fields without a predicate index are not tested entry by entry in Python either once a request
tests a sizeable share of the store on them: the store keeps a few such fields as cached columns
(`ColumnCache`, the same snapshot + dirty slots, least recently used dropped first), built on
first broad use and kept in sync with writes like predicate indexes. A filter on 25% of a store
then costs a few numpy operations instead of one Python test per entry.
"""

from __future__ import annotations

import threading
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nachbar.db.filters import (
    CompiledAllOf,
    CompiledAnyOf,
    CompiledCondition,
    CompiledFilter,
    Condition,
    Key,
    Op,
    operand_key,
    value_keys,
)
from nachbar.db.types import Metadata

# Rebuild a snapshot once this many slots changed since it was taken (or 1/32 of the store).
MIN_DIRTY_BEFORE_REBUILD = 512
# Building a field's snapshot costs about as much as this many tests per slot of the store. A
# request that has spent that much testing one unindexed field one candidate at a time builds a
# snapshot of it for the rest of the request, so many conditions on one field cost at most about
# twice the cheaper of the two ways.
TRANSIENT_INDEX_TESTS_PER_SLOT = 16
# A request that tests at least this share of the store's slots on an unindexed field builds
# (or reuses) the store's cached column of that field: one pass over the store, paid back
# within a few such requests, which then cost numpy operations only.
COLUMN_BUILD_SHARE = 0.25
# Cached columns per store (least recently used dropped first); each costs about what a
# predicate index of the field costs.
MAX_CACHED_COLUMNS = 8


_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass
class _Sorted:
    """Values of one kind in ascending order, with the slot of each."""

    values: list[Any]
    slots: np.ndarray

    @classmethod
    def of(cls, pairs: list[tuple[Any, int]]) -> _Sorted:
        pairs.sort(key=lambda pair: pair[0])
        return cls([v for v, _ in pairs], np.fromiter((s for _, s in pairs), np.int64, len(pairs)))

    def select(self, op: str, operand: Any) -> np.ndarray:
        if op == Op.LT:
            return self.slots[: bisect_left(self.values, operand)]
        if op == Op.LTE:
            return self.slots[: bisect_right(self.values, operand)]
        if op == Op.GT:
            return self.slots[bisect_right(self.values, operand) :]
        return self.slots[bisect_left(self.values, operand) :]


@dataclass
class _Snapshot:
    size: int
    by_key: dict[Key, np.ndarray]
    present: np.ndarray
    numbers: _Sorted
    strings: _Sorted
    blobs: _Sorted
    dirty: set[int] = field(default_factory=set)

    def slots_for(self, cond: Condition) -> np.ndarray:
        """Slots matching the condition's positive form (NE read as EQ, NOT_IN as IN)."""
        op = cond.op
        if op == Op.EXISTS:
            return self.present
        if op in (Op.EQ, Op.NE):
            assert cond.value is not None
            return self.by_key.get(operand_key(cond.value), _EMPTY)
        if op in (Op.IN, Op.NOT_IN):
            found = [self.by_key.get(operand_key(v), _EMPTY) for v in cond.values]
            return np.concatenate(found) if len(found) > 1 else found[0]
        operand = cond.value
        if isinstance(operand, bool):
            return _EMPTY
        if isinstance(operand, int | float):
            return self.numbers.select(op, operand)
        if isinstance(operand, str):
            return self.strings.select(op, operand)
        if isinstance(operand, bytes):
            return self.blobs.select(op, operand)
        return _EMPTY


def _build(field_name: str, metas: Sequence[Metadata | None], size: int) -> _Snapshot:
    by_key: dict[Key, list[int]] = {}
    present: list[int] = []
    numbers: list[tuple[Any, int]] = []
    strings: list[tuple[Any, int]] = []
    blobs: list[tuple[Any, int]] = []
    for slot in range(size):
        meta = metas[slot]
        if meta is None or field_name not in meta:
            continue
        value = meta[field_name]
        present.append(slot)
        for key in value_keys(value):
            by_key.setdefault(key, []).append(slot)
        if isinstance(value, bool | list):
            continue
        if isinstance(value, int | float):
            numbers.append((value, slot))
        elif isinstance(value, str):
            strings.append((value, slot))
        else:
            blobs.append((value, slot))
    return _Snapshot(
        size=size,
        by_key={k: np.asarray(v, dtype=np.int64) for k, v in by_key.items()},
        present=np.asarray(present, dtype=np.int64),
        numbers=_Sorted.of(numbers),
        strings=_Sorted.of(strings),
        blobs=_Sorted.of(blobs),
    )


class FieldIndex:
    """The predicate index of one field of one store.

    `touch` is called by writers (holding the store's write lock); `positive_mask` by readers
    (holding its read lock), several at a time.
    """

    def __init__(self, field_name: str) -> None:
        self.field = field_name
        self._snapshot: _Snapshot | None = None
        self._rebuild_lock = threading.Lock()
        self.rebuilds = 0  # how many snapshots were built; tests and logs read it

    def touch(self, slots: Iterable[int]) -> None:
        snapshot = self._snapshot
        if snapshot is not None:
            snapshot.dirty.update(slots)

    def positive_mask(
        self, test: CompiledCondition, metas: Sequence[Metadata | None], size: int
    ) -> np.ndarray:
        """Boolean mask over slots [0, size) of live entries matching the positive form."""
        snapshot = self._current(metas, size)
        mask = np.zeros(size, dtype=bool)
        mask[snapshot.slots_for(test.positive)] = True
        for slot in snapshot.dirty:
            meta = metas[slot]
            mask[slot] = meta is not None and test.positive_matches(meta)
        return mask

    def warm(self, metas: Sequence[Metadata | None], size: int) -> None:
        self._current(metas, size)

    def _current(self, metas: Sequence[Metadata | None], size: int) -> _Snapshot:
        snapshot = self._snapshot
        if snapshot is None or len(snapshot.dirty) > max(MIN_DIRTY_BEFORE_REBUILD, size // 32):
            with self._rebuild_lock:
                if self._snapshot is snapshot:
                    self._snapshot = _build(self.field, metas, size)
                    self.rebuilds += 1
                snapshot = self._snapshot
        assert snapshot is not None
        return snapshot


class ColumnCache:
    """A store's cached columns of unindexed fields (see the module docstring).

    Readers (holding the store's read lock, several at a time) get and add columns; writers
    (holding its write lock) `touch` them, as they touch predicate indexes."""

    def __init__(self, limit: int = MAX_CACHED_COLUMNS) -> None:
        self._limit = limit
        self._columns: OrderedDict[str, FieldIndex] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._columns)

    def fields(self) -> list[str]:
        with self._lock:
            return list(self._columns)

    def get(self, field_name: str) -> FieldIndex | None:
        with self._lock:
            column = self._columns.get(field_name)
            if column is not None:
                self._columns.move_to_end(field_name)
            return column

    def column(self, field_name: str, metas: Sequence[Metadata | None], size: int) -> FieldIndex:
        """The field's column, built now if it is not cached."""
        with self._lock:
            column = self._columns.get(field_name)
            if column is None:
                column = FieldIndex(field_name)
                self._columns[field_name] = column
                while len(self._columns) > self._limit:
                    self._columns.popitem(last=False)
            self._columns.move_to_end(field_name)
        column.warm(metas, size)  # builds outside the cache's lock (its own lock serializes)
        return column

    def touch(self, slots: Iterable[int]) -> None:
        slot_list = list(slots)
        with self._lock:
            columns = list(self._columns.values())
        for column in columns:
            column.touch(slot_list)

    def discard(self, field_name: str) -> None:
        with self._lock:
            self._columns.pop(field_name, None)

    def clear(self) -> None:
        with self._lock:
            self._columns.clear()


class FilterEvaluator:
    """Evaluates a filter over a store's slots, using predicate indexes where they exist.

    One evaluator serves one request: it also keeps the snapshots it builds for unindexed
    fields that the request tests often (see TRANSIENT_INDEX_TESTS_PER_SLOT)."""

    def __init__(
        self,
        metas: Sequence[Metadata | None],
        size: int,
        indexes: Mapping[str, FieldIndex],
        columns: ColumnCache | None = None,
    ) -> None:
        self._metas = metas
        self._size = size
        self._indexes = dict(indexes)
        self._columns = columns
        self._tested: dict[str, int] = {}  # unindexed field -> candidates tested one by one

    def evaluate(self, flt: CompiledFilter, candidates: np.ndarray) -> np.ndarray:
        """The candidates (a boolean mask over live slots) that match `flt`."""
        if isinstance(flt, CompiledCondition):
            return self._test(flt, candidates)
        if isinstance(flt, CompiledAllOf):
            result = candidates
            # Cheap indexed tests first, so that Python-level tests see fewer candidates.
            for child in sorted(flt.children, key=self._cost):
                if not result.any():
                    break
                result = self.evaluate(child, result)
            return result
        if isinstance(flt, CompiledAnyOf):
            result = np.zeros_like(candidates)
            remaining = candidates
            for child in sorted(flt.children, key=self._cost):
                if not remaining.any():
                    break
                hit = self.evaluate(child, remaining)
                result = result | hit
                remaining = remaining & ~hit
            return result
        excluded = self.evaluate(flt.child, candidates)
        kept: np.ndarray = np.logical_and(candidates, np.logical_not(excluded))
        return kept

    def _cost(self, flt: CompiledFilter) -> int:
        if isinstance(flt, CompiledCondition):
            indexed = flt.field in self._indexes or (
                self._columns is not None and self._columns.get(flt.field) is not None
            )
            return 0 if indexed else 2
        return 1

    def _test(self, test: CompiledCondition, candidates: np.ndarray) -> np.ndarray:
        index = (
            self._indexes.get(test.field)
            or self._cached_column(test.field, candidates)
            or self._transient_index(test.field, candidates)
        )
        if index is not None:
            positive = index.positive_mask(test, self._metas, self._size)
        else:
            # No index: one compiled test per candidate.
            metas = self._metas
            field_name = test.field
            check = test.check
            missing = _MISSING
            hits = [
                slot
                for slot in np.flatnonzero(candidates).tolist()
                if (value := metas[slot].get(field_name, missing)) is not missing  # type: ignore[union-attr]
                and check(value)
            ]
            positive = np.zeros_like(candidates)
            positive[hits] = True
        if test.negated:
            kept: np.ndarray = np.logical_and(candidates, np.logical_not(positive))
            return kept
        matched: np.ndarray = np.logical_and(candidates, positive)
        return matched

    def _cached_column(self, field_name: str, candidates: np.ndarray) -> FieldIndex | None:
        columns = self._columns
        if columns is None:
            return None
        column = columns.get(field_name)
        if column is None and np.count_nonzero(candidates) >= COLUMN_BUILD_SHARE * self._size:
            column = columns.column(field_name, self._metas, self._size)
        if column is not None:
            self._indexes[field_name] = column
        return column

    def _transient_index(self, field_name: str, candidates: np.ndarray) -> FieldIndex | None:
        tested = self._tested.get(field_name, 0) + int(np.count_nonzero(candidates))
        self._tested[field_name] = tested
        if tested < TRANSIENT_INDEX_TESTS_PER_SLOT * self._size:
            return None
        index = FieldIndex(field_name)
        index.warm(self._metas, self._size)
        self._indexes[field_name] = index
        return index


_MISSING: Any = object()
