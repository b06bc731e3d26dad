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
"""

from __future__ import annotations

import threading
from bisect import bisect_left, bisect_right
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


class FilterEvaluator:
    """Evaluates a filter over a store's slots, using predicate indexes where they exist.

    One evaluator serves one request: it also keeps the snapshots it builds for unindexed
    fields that the request tests often (see TRANSIENT_INDEX_TESTS_PER_SLOT)."""

    def __init__(
        self,
        metas: Sequence[Metadata | None],
        size: int,
        indexes: Mapping[str, FieldIndex],
    ) -> None:
        self._metas = metas
        self._size = size
        self._indexes = dict(indexes)
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
            return 0 if flt.field in self._indexes else 2
        return 1

    def _test(self, test: CompiledCondition, candidates: np.ndarray) -> np.ndarray:
        index = self._indexes.get(test.field) or self._transient_index(test.field, candidates)
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
