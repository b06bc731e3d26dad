"""One store in memory: vectors, metadata cache, id <-> slot map, HNSW graph, predicate indexes.

Every entry lives in a *slot*: its row in the store's contiguous float32 vector matrix, its place
in the metadata cache and its label in the HNSW graph. Slots of deleted entries are reused (lowest
first), so the matrix stays dense under churn. The slot is persisted with the entry so that a
saved graph's labels still mean the same entries after a restart.

Locking is the caller's job (nachbar.db.engine): methods that change state need the store's
write lock, the others its read lock. A write request also holds `writer` from start to end, so
that one write at a time prepares, commits and applies while searches go on.
"""

from __future__ import annotations

import heapq
import logging
import math
import threading
import time
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from nachbar.db import codec
from nachbar.db.errors import DataCorruptionError
from nachbar.db.filters import Filter, compile_filter
from nachbar.db.hnsw import (
    GraphFiles,
    GraphSnapshot,
    HnswGraph,
    graph_settings,
)
from nachbar.db.predicates import ColumnCache, FieldIndex, FilterEvaluator
from nachbar.db.rwlock import ReadWriteLock
from nachbar.db.storage import EntryColumns
from nachbar.db.types import (
    ALL_METADATA,
    Entry,
    HnswConfig,
    IndexLoadReport,
    Match,
    Metadata,
    MetadataSelection,
    Metric,
    SearchMode,
    SearchResult,
    StoreSpec,
)

log = logging.getLogger("nachbar.db")

INITIAL_CAPACITY = 1024
NORM_BLOCK_ROWS = 256
# The planner scans exactly when (matching entries x dimension) is at most this many floats:
# under a millisecond of numpy (gathering scattered rows is memory-bound), and exact results.
EXACT_SCAN_BUDGET = 1_000_000
# Above that budget a narrow filter is still scanned when the scan costs less than walking the
# graph with the filter. The walk visits ~beam / selectivity nodes, each a call back into Python
# plus distances to its links: 0.3-2.8 us measured, against 0.4-1.1 ns per float scanned
# (100k x 384 embedding-like vectors, filters of 0.2-4%). So a visit counts as this many floats.
WALK_VISIT_FLOATS = 1000
# Exact scans gather this many rows at a time: a scan's temporary memory stays bounded.
SCAN_BLOCK_ROWS = 16384
# Filtered HNSW widens its beam for selective filters: by sqrt(0.1 / selectivity) below 10%
# selectivity, at most 4x. With few allowed nodes near the query, more of the graph must be
# walked to collect k of them; at 10% and above the store's ef is enough.
FILTER_EF_SELECTIVITY = 0.1
MAX_FILTER_EF_FACTOR = 4.0
# Broad filters skip the filtered traversal: hnswlib calls back into Python for every node it
# visits (~0.5 us each), so for a filter matching >= ~5% of a store it is cheaper to take the
# OVERSAMPLE x k / selectivity nearest entries unfiltered and keep the matching ones. That is
# exact for the graph's candidates: any matching entry outside them is farther than all of them.
POSTFILTER_OVERSAMPLE = 2.0
POSTFILTER_MAX_CANDIDATES = 400
ROW_OVERHEAD_BYTES = 32  # slot, seq, checksum and store id of an entries row


def _dots(matrix: np.ndarray, query: np.ndarray) -> np.ndarray:
    # einsum instead of `@`: a multi-threaded BLAS matrix-vector product competing with the
    # server's own threads for a few cores is slower and far less predictable than one core.
    dots: np.ndarray = np.einsum("ij,j->i", matrix, query)
    return dots


def row_norms(vectors: np.ndarray) -> np.ndarray:
    """Euclidean norms of float32 rows, summed in float64 a block at a time."""
    out = np.empty(len(vectors), dtype=np.float64)
    # Small blocks: the float64 copy is temporary memory per call, however large the batch.
    for start in range(0, len(vectors), NORM_BLOCK_ROWS):
        block = vectors[start : start + NORM_BLOCK_ROWS].astype(np.float64)
        out[start : start + NORM_BLOCK_ROWS] = np.sqrt(np.einsum("ij,ij->i", block, block))
    return out


def _grown(array: np.ndarray, capacity: int) -> np.ndarray:
    """`array` in a zeroed array of `capacity` rows: one allocation and no zero-filled
    temporary (np.zeros leaves untouched pages unallocated)."""
    out = np.zeros((capacity, *array.shape[1:]), dtype=array.dtype)
    out[: len(array)] = array
    return out


def _postfilter_candidates(want: int, matching: int, count: int) -> int:
    """Unfiltered graph candidates that hold `want` matching entries with room to spare."""
    return math.ceil(want * POSTFILTER_OVERSAMPLE * count / max(matching, 1))


@dataclass(frozen=True)
class SavePoint:
    """What a graph snapshot covers: the change sequence it reflects, the unsaved changes it
    saves and when it was taken (time.monotonic())."""

    seq: int
    changes: int
    taken_at: float


def copy_metadata(meta: Metadata) -> Metadata:
    return {k: list(v) if isinstance(v, list) else v for k, v in meta.items()}


def select_metadata(
    meta: Metadata, selection: MetadataSelection
) -> tuple[Metadata, tuple[str, ...]]:
    """A private copy of the fields of `meta` that `selection` returns, and the names of the
    fields it leaves out (none when it leaves out all metadata)."""
    if selection.everything:
        return copy_metadata(meta), ()
    if not selection.include:
        return {}, ()
    excluded = selection.exclude_keys
    limit = selection.max_value_bytes
    out: Metadata = {}
    omitted: list[str] = []
    for key, value in meta.items():
        if key in excluded or (
            limit and isinstance(value, str | bytes | list) and codec.value_bytes(value) > limit
        ):
            omitted.append(key)
        else:
            out[key] = list(value) if isinstance(value, list) else value
    return out, tuple(omitted)


class StoreState:
    def __init__(self, store_id: int, spec: StoreSpec, seq: int, files: GraphFiles) -> None:
        self.store_id = store_id
        self.spec = spec
        self.seq = seq  # last committed change sequence
        self.files = files
        self.lock = ReadWriteLock()
        self.writer = threading.Lock()  # one write request at a time; readers never take it
        self.seconds_per_insert = 0.0005  # recent HNSW insert time per vector (for piece sizes)
        self.dropped = False

        dim = spec.dimension
        self._vectors = np.zeros((INITIAL_CAPACITY, dim), dtype=np.float32)
        self._norms = np.zeros(INITIAL_CAPACITY, dtype=np.float64)
        self._row_bytes = np.zeros(INITIAL_CAPACITY, dtype=np.int64)
        self._alive = np.zeros(INITIAL_CAPACITY, dtype=bool)
        # By slot: the change sequence that last wrote the entry (-1 for a free slot), which
        # tells a graph restored in the background what changed after it.
        self.slot_seqs = np.full(INITIAL_CAPACITY, -1, dtype=np.int64)
        self.ids: list[str | None] = []  # by slot; None for a free slot
        self.metas: list[Metadata | None] = []  # by slot; None for a free slot
        self.slot_of: dict[str, int] = {}
        self._free: list[int] = []  # min-heap of free slots below len(self.ids)
        self.payload_bytes = 0

        # None while the graph is restored in the background (searches scan exactly then).
        self.graph: HnswGraph | None = None
        self.graph_broken = False  # set if an update failed half-way; searches then scan
        self.saved_seq = -1  # change sequence of the graph on disk; -1 when none
        self.graph_file_bytes = 0
        # Entries written since the graph on disk was saved (what a restart would replay), and
        # since when (time.monotonic()); they drive background checkpoints.
        self.unsaved_changes = 0
        self.unsaved_since: float | None = None
        self.load_report = IndexLoadReport(store=spec.name, action="none")
        self.field_indexes: dict[str, FieldIndex] = {
            f: FieldIndex(f) for f in spec.predicate_indexes
        }
        # Fields of the keyword index (its rows live in SQLite only); None: no keyword index.
        self.keyword_fields: tuple[str, ...] | None = spec.keyword_fields
        # Unindexed fields that broad filters test, held as columns (nachbar.db.predicates).
        self.columns = ColumnCache()
        self._id_order: tuple[list[str], np.ndarray] | None = None

    # ---- sizes -------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """One past the highest slot ever used (free slots included)."""
        return len(self.ids)

    @property
    def count(self) -> int:
        return len(self.slot_of)

    @property
    def bytes_used(self) -> int:
        return self.payload_bytes + self.graph_file_bytes

    @property
    def hnsw_config(self) -> HnswConfig | None:
        index = self.spec.index
        return index if isinstance(index, HnswConfig) else None

    def has_room(self, size: int) -> bool:
        """Whether slots below `size` fit without `reserve`."""
        return size <= len(self._alive) and (self.graph is None or size <= self.graph.capacity)

    def reserve(self, size: int) -> None:
        """Grow the arrays (and graph) so that slots below `size` fit. Call before committing a
        write, so that a failure to allocate leaves nothing half-done."""
        capacity = len(self._alive)
        if size > capacity:
            new_capacity = max(size, capacity * 2)
            self._vectors = _grown(self._vectors, new_capacity)
            self._norms = _grown(self._norms, new_capacity)
            self._row_bytes = _grown(self._row_bytes, new_capacity)
            self._alive = _grown(self._alive, new_capacity)
            seqs = np.full(new_capacity, -1, dtype=np.int64)
            seqs[: len(self.slot_seqs)] = self.slot_seqs
            self.slot_seqs = seqs
        if self.graph is not None:
            self.graph.reserve(size)

    # ---- loading -----------------------------------------------------------------------------

    def load_rows(self, chunks: Iterable[EntryColumns], db_path: Path) -> None:
        """Fill the store from its SQLite rows (Storage.entries), checking every row's CRC."""
        for chunk in chunks:
            self._load_chunk(chunk, db_path)
        size = self.size
        alive = self._alive[:size]
        self._free = np.flatnonzero(~alive).tolist()
        heapq.heapify(self._free)
        self.payload_bytes = int(self._row_bytes[:size].sum())

    def _load_chunk(self, chunk: EntryColumns, db_path: Path) -> None:
        # Column-wise with numpy and one JSON parse per chunk: per-row Python work is what made
        # loading a big store slow, and the server answers nothing until it is done.
        count = len(chunk.ids)
        dim = self.spec.dimension
        slots = np.fromiter(chunk.slots, np.int64, count)
        ids = [i.encode("utf-8") for i in chunk.ids]
        metas = [m.encode("utf-8") for m in chunk.metadata]
        vector_bytes = np.fromiter(map(len, chunk.vectors), np.int64, count)
        checksums = np.fromiter(
            map(codec.row_checksum_bytes, ids, chunk.vectors, metas), np.int64, count
        )
        damaged = (
            (slots < 0)
            | (vector_bytes != dim * 4)
            | (checksums != np.fromiter(chunk.checksums, np.int64, count))
        )
        if not damaged.any():
            self.reserve(int(slots.max()) + 1 if count else 0)
            # A slot held twice (by an earlier chunk or within this one) is damage too.
            taken = self._alive[slots].copy()
            _, first = np.unique(slots, return_index=True)
            repeated = np.ones(count, dtype=bool)
            repeated[first] = False
            damaged = taken | repeated
        decoded: list[Metadata] = []
        if not damaged.any():
            try:
                decoded = codec.decode_metadata_many(chunk.metadata)
            except ValueError:
                damaged = np.array([not _decodes(text) for text in chunk.metadata], dtype=bool)
        if damaged.any():
            entry_id = chunk.ids[int(np.argmax(damaged))]
            raise DataCorruptionError(
                f"database file {db_path}: entry {entry_id!r} of store {self.spec.name!r} is "
                "damaged (checksum or format mismatch); restore the file from a backup"
            )
        size = self.size
        if int(slots.max()) + 1 > size:
            grow = int(slots.max()) + 1 - size
            self.ids.extend([None] * grow)
            self.metas.extend([None] * grow)
        for slot, entry_id, meta in zip(chunk.slots, chunk.ids, decoded, strict=True):
            self.ids[slot] = entry_id
            self.metas[slot] = meta
        self.slot_of.update(zip(chunk.ids, chunk.slots, strict=True))
        vectors = np.frombuffer(b"".join(chunk.vectors), dtype="<f4").reshape(count, dim)
        self._vectors[slots] = vectors
        self._norms[slots] = row_norms(vectors)
        self._alive[slots] = True
        self.slot_seqs[slots] = np.fromiter(chunk.seqs, np.int64, count)
        id_bytes = np.fromiter(map(len, ids), np.int64, count)
        meta_bytes = np.fromiter(map(len, metas), np.int64, count)
        self._row_bytes[slots] = id_bytes + vector_bytes + meta_bytes + ROW_OVERHEAD_BYTES

    # ---- the HNSW graph's life: created, restored in the background, checkpointed --------------

    def create_graph(self) -> None:
        """The empty graph of a new store."""
        config = self.hnsw_config
        if config is not None:
            self.graph = self.new_graph(self.capacity)

    def new_graph(self, capacity: int) -> HnswGraph:
        config = self.hnsw_config
        assert config is not None
        return HnswGraph.create(self.spec.dimension, self.spec.metric, config, capacity)

    def load_saved_graph(self, capacity: int) -> tuple[HnswGraph, int]:
        """The graph saved on disk and the change sequence it reflects (GraphUnusableError if
        there is none that fits). Call without the lock: it reads files, and takes the read lock
        only to copy the vectors the graph file leaves out."""
        config = self.hnsw_config
        assert config is not None
        return HnswGraph.load(
            self.files,
            dimension=self.spec.dimension,
            metric=self.spec.metric,
            settings=graph_settings(self.spec.dimension, self.spec.metric, config),
            capacity=capacity,
            vectors=self.current_vectors,
        )

    def current_vectors(self, slots: np.ndarray) -> np.ndarray:
        """A copy of these slots' vectors, with a zero row for a free slot."""
        with self.lock.read():
            inside = slots < len(self._alive)
            if inside.all():
                rows: np.ndarray = self._vectors[slots]
                rows[~self._alive[slots]] = 0
                return rows
            rows = np.zeros((len(slots), self.spec.dimension), dtype=np.float32)
            positions = np.flatnonzero(inside)
            positions = positions[self._alive[slots[positions]]]
            rows[positions] = self._vectors[slots[positions]]
        return rows

    @property
    def capacity(self) -> int:
        """Slots the arrays hold before they must grow."""
        return len(self._alive)

    def live_slots(self) -> np.ndarray:
        return np.flatnonzero(self._alive[: self.size])

    def changed_since(self, seq: int) -> np.ndarray:
        """Slots of live entries written after change `seq`."""
        live = self.live_slots()
        changed: np.ndarray = live[self.slot_seqs[live] > seq]
        return changed

    def vectors_of(self, slots: np.ndarray) -> np.ndarray:
        """A copy of these slots' vectors (safe to use after the lock is released)."""
        vectors: np.ndarray = self._vectors[slots]
        return vectors

    def install_graph(
        self, graph: HnswGraph, *, saved_seq: int, unsaved: int, report: IndexLoadReport
    ) -> None:
        """Start serving searches from a graph that holds every live entry. Write lock."""
        self.graph = graph
        self.saved_seq = saved_seq
        self.graph_file_bytes = self.files.size()
        self.unsaved_changes = unsaved
        self.unsaved_since = time.monotonic() if unsaved else None
        self.load_report = report

    def graph_needs_save(self) -> bool:
        return self.graph is not None and not self.graph_broken and self.unsaved_changes > 0

    def graph_snapshot(self) -> tuple[GraphSnapshot, SavePoint]:
        """A copy of the graph to save, and what it covers. Read lock (keeps writers out of the
        graph while it is copied)."""
        assert self.graph is not None
        point = SavePoint(self.seq, self.unsaved_changes, time.monotonic())
        return self.graph.snapshot(), point

    def graph_saved(self, point: SavePoint, size: int) -> None:
        """Record a finished save of a snapshot. Read lock: the fields it changes are changed
        otherwise only by writers, which the lock keeps out, and by saves, one at a time."""
        self.saved_seq = point.seq
        self.graph_file_bytes = size
        self.unsaved_changes = max(0, self.unsaved_changes - point.changes)
        # What is still unsaved was written after the snapshot was taken.
        self.unsaved_since = point.taken_at if self.unsaved_changes else None

    def settings(self) -> dict[str, object]:
        config = self.hnsw_config
        assert config is not None
        return graph_settings(self.spec.dimension, self.spec.metric, config)

    def _count_changes(self, entries: int) -> None:
        if self.unsaved_since is None:
            self.unsaved_since = time.monotonic()
        self.unsaved_changes += entries

    def release(self) -> None:
        """Drop the memory of a dropped store."""
        self.graph = None
        self._vectors = np.zeros((0, self.spec.dimension), dtype=np.float32)
        self.ids, self.metas, self.slot_of = [], [], {}
        self.field_indexes = {}
        self.columns.clear()

    # ---- writes ------------------------------------------------------------------------------

    def assign_slots(self, ids: Sequence[str]) -> tuple[list[int], list[bool]]:
        """Slots for a batch of ids (existing slot, else a free one, else a new one) and which
        ids are new. Changes nothing; `apply_upsert` takes the slots."""
        new_count = sum(1 for i in ids if i not in self.slot_of)
        reused = iter(heapq.nsmallest(new_count, self._free))
        next_new = self.size
        slots: list[int] = []
        is_new: list[bool] = []
        for entry_id in ids:
            slot = self.slot_of.get(entry_id)
            if slot is not None:
                slots.append(slot)
                is_new.append(False)
                continue
            slot = next(reused, None)
            if slot is None:
                slot = next_new
                next_new += 1
            slots.append(slot)
            is_new.append(True)
        return slots, is_new

    def apply_upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        metas: Sequence[Metadata],
        slots: Sequence[int],
        is_new: Sequence[bool],
        row_bytes: Sequence[int],
        seq: int,
    ) -> np.ndarray:
        """Make a committed upsert's entries visible, stamped with change `seq` (what a graph
        restored in the background replays). `reserve` must have made room already. Returns the
        slots whose vectors the graph still needs (`index_slots`); the caller calls
        `finish_upsert` once the graph has them all."""
        slot_array = np.asarray(slots, dtype=np.int64)
        old_size = self.size
        # assign_slots handed out the smallest free slots first: pop exactly those.
        reused = sum(1 for s, new in zip(slots, is_new, strict=True) if new and s < old_size)
        for _ in range(reused):
            heapq.heappop(self._free)
        size = max(old_size, int(slot_array.max()) + 1)
        if size > old_size:
            self.ids.extend([None] * (size - old_size))
            self.metas.extend([None] * (size - old_size))
        # The graph only needs the new entries and those whose vector changed; only replaced
        # entries are compared, so an insert-only batch is not copied for it.
        changed = np.array(is_new, dtype=bool)
        replaced = np.flatnonzero(~changed)
        if len(replaced):
            same = np.all(self._vectors[slot_array[replaced]] == vectors[replaced], axis=1)
            changed[replaced[~same]] = True
        for entry_id, slot, meta in zip(ids, slots, metas, strict=True):
            self.ids[slot] = entry_id
            self.metas[slot] = meta
            self.slot_of[entry_id] = slot
        self.payload_bytes += int(np.sum(row_bytes) - self._row_bytes[slot_array].sum())
        self._row_bytes[slot_array] = row_bytes
        self._vectors[slot_array] = vectors
        self._norms[slot_array] = row_norms(vectors)
        self._alive[slot_array] = True
        self.slot_seqs[slot_array] = seq
        for index in self.field_indexes.values():
            index.touch(slots)
        self.columns.touch(slots)
        if any(is_new):
            self._id_order = None
        pending: np.ndarray = slot_array[changed]
        return pending

    def index_slots(self, slots: np.ndarray) -> None:
        """Insert (or update) these slots' vectors in the HNSW graph, on one thread (the other
        cores stay free for searches), and keep `seconds_per_insert` up to date."""
        if not len(slots) or self.graph is None or self.graph_broken:
            return  # no graph yet (restored in the background): nothing to insert or to time
        began = time.perf_counter()
        self._update_graph(slots, np.empty(0, dtype=np.int64), threads=1)
        per_vector = (time.perf_counter() - began) / len(slots)
        self.seconds_per_insert = 0.8 * self.seconds_per_insert + 0.2 * per_vector

    def finish_upsert(self, seq: int, entries: int) -> None:
        """The graph holds a committed upsert of `entries` entries: move `seq` past it and
        count it for checkpoints (a graph saved before this reflects the previous `seq`, so a
        restart replays the whole write)."""
        self.seq = seq
        self._count_changes(entries)

    def apply_delete(self, slots: Sequence[int], seq: int) -> None:
        slot_array = np.asarray(slots, dtype=np.int64)
        for slot in slots:
            entry_id = self.ids[slot]
            assert entry_id is not None
            del self.slot_of[entry_id]
            self.ids[slot] = None
            self.metas[slot] = None
            heapq.heappush(self._free, slot)
        self.payload_bytes -= int(self._row_bytes[slot_array].sum())
        self._row_bytes[slot_array] = 0
        self._alive[slot_array] = False
        self.slot_seqs[slot_array] = -1
        for index in self.field_indexes.values():
            index.touch(slots)
        self.columns.touch(slots)
        self.seq = seq
        self._count_changes(len(slots))
        self._update_graph(np.empty(0, dtype=np.int64), slot_array)

    def _update_graph(self, added: np.ndarray, deleted: np.ndarray, threads: int = -1) -> None:
        if self.graph is None or self.graph_broken:
            return
        try:
            self.graph.add(self._vectors[added], added, threads=threads)
            self.graph.mark_deleted(deleted)
        except Exception:  # SQLite has the data; searches fall back to scans
            log.exception(
                "store %r: updating the HNSW graph failed; searches scan exactly until restart "
                "rebuilds it",
                self.spec.name,
            )
            self.graph_broken = True

    def add_field_indexes(self, fields: Sequence[str]) -> list[FieldIndex]:
        created = [FieldIndex(f) for f in fields]
        for field_name in fields:
            self.columns.discard(field_name)  # the predicate index takes over
        self.field_indexes.update((index.field, index) for index in created)
        self.spec = replace(self.spec, predicate_indexes=tuple(sorted(self.field_indexes)))
        return created

    def drop_field_indexes(self, fields: Sequence[str]) -> None:
        for field_name in fields:
            del self.field_indexes[field_name]
        self.spec = replace(self.spec, predicate_indexes=tuple(sorted(self.field_indexes)))

    def warm(self, indexes: Sequence[FieldIndex]) -> None:
        """Build predicate index snapshots now rather than on the first filtered request."""
        for index in indexes:
            index.warm(self.metas, self.size)

    # ---- reads -------------------------------------------------------------------------------

    def entry(
        self, slot: int, include_vectors: bool, selection: MetadataSelection = ALL_METADATA
    ) -> Entry:
        entry_id = self.ids[slot]
        meta = self.metas[slot]
        assert entry_id is not None and meta is not None
        vector = self._vectors[slot].copy() if include_vectors else None
        selected, omitted = select_metadata(meta, selection)
        return Entry(
            id=entry_id,
            vector=vector,
            metadata=selected,
            omitted_keys=omitted,
            stored_bytes=int(self._row_bytes[slot]),
        )

    def matching(self, flt: Filter | None) -> np.ndarray:
        """Boolean mask over slots [0, size) of live entries that match `flt`."""
        live = self._alive[: self.size].copy()
        if flt is None:
            return live
        evaluator = FilterEvaluator(self.metas, self.size, self.field_indexes, self.columns)
        return evaluator.evaluate(compile_filter(flt), live)

    def page(
        self,
        flt: Filter | None,
        limit: int,
        after: str | None,
        include_vectors: bool,
        selection: MetadataSelection = ALL_METADATA,
    ) -> tuple[list[Entry], bool]:
        """Up to `limit` matching entries with ids after `after`, in id order, and whether more
        follow."""
        ids, slots = self._ordered_ids()
        position = bisect_right(ids, after) if after is not None else 0
        evaluator = FilterEvaluator(self.metas, self.size, self.field_indexes, self.columns)
        compiled = compile_filter(flt) if flt is not None else None
        found: list[int] = []
        chunk = max(1024, 4 * (limit + 1))
        # Walk the id order in growing chunks, so an unindexed filter only tests the entries
        # near the page instead of the whole store.
        while position < len(ids) and len(found) <= limit:
            part = slots[position : position + chunk]
            part = part[self._alive[part]]
            if compiled is not None and len(part):
                candidates = np.zeros(self.size, dtype=bool)
                candidates[part] = True
                part = part[evaluator.evaluate(compiled, candidates)[part]]
            found.extend(part[: limit + 1 - len(found)].tolist())
            position += chunk
            chunk *= 2
        more = len(found) > limit
        return [self.entry(slot, include_vectors, selection) for slot in found[:limit]], more

    def _ordered_ids(self) -> tuple[list[str], np.ndarray]:
        # Inserts reset this cache; deletes leave it (dead slots are skipped via the live mask,
        # and a reused slot is an insert).
        order = self._id_order
        if order is None:
            pairs = sorted(self.slot_of.items())
            order = (
                [i for i, _ in pairs],
                np.fromiter((s for _, s in pairs), np.int64, len(pairs)),
            )
            self._id_order = order
        return order

    # ---- search ------------------------------------------------------------------------------

    def search(
        self,
        query: np.ndarray,
        k: int,
        flt: Filter | None,
        mode: SearchMode,
        ef: int,
        include_vectors: bool,
        selection: MetadataSelection = ALL_METADATA,
    ) -> SearchResult:
        mask: np.ndarray | None = None
        matching = self.count
        if flt is not None and matching:
            mask = self.matching(flt)
            matching = int(np.count_nonzero(mask))
        if matching == 0:
            return SearchResult(matches=[], plan="exact")
        want = min(k, matching)
        plan = self._plan(mode, matching, want, ef)
        found = None
        if plan == "hnsw":
            found = self._search_graph(query, want, mask, matching, ef)
        if found is None:
            plan = "exact"
            found = self._search_exact(query, want, mask)
        matches = []
        for slot, score in found:
            selected, omitted = select_metadata(self.metas[slot], selection)  # type: ignore[arg-type]
            matches.append(
                Match(
                    id=self.ids[slot],  # type: ignore[arg-type]
                    score=score,
                    metadata=selected,
                    vector=self._vectors[slot].copy() if include_vectors else None,
                    omitted_keys=omitted,
                    stored_bytes=int(self._row_bytes[slot]),
                )
            )
        return SearchResult(matches=matches, plan=plan)

    def match(
        self,
        slot: int,
        score: float,
        include_vectors: bool,
        selection: MetadataSelection,
        **side_scores: float | None,
    ) -> Match:
        """The entry in `slot` as a search result; side_scores: Match's vector_score,
        keyword_score and hybrid_score."""
        selected, omitted = select_metadata(self.metas[slot], selection)  # type: ignore[arg-type]
        return Match(
            id=self.ids[slot],  # type: ignore[arg-type]
            score=score,
            metadata=selected,
            vector=self._vectors[slot].copy() if include_vectors else None,
            omitted_keys=omitted,
            stored_bytes=int(self._row_bytes[slot]),
            **side_scores,
        )

    def _plan(self, mode: SearchMode, matching: int, want: int, ef: int) -> str:
        if self.graph is None or self.graph_broken or mode == SearchMode.EXACT:
            return "exact"
        if mode == SearchMode.HNSW:
            return "hnsw"
        floats = matching * self.spec.dimension
        if floats <= EXACT_SCAN_BUDGET:
            return "exact"
        filtered = matching < self.count
        if filtered and _postfilter_candidates(want, matching, self.count) > (
            POSTFILTER_MAX_CANDIDATES
        ):
            visits = self._filtered_beam(want, ef, matching) * self.count / matching
            if floats <= WALK_VISIT_FLOATS * visits:
                return "exact"
        return "hnsw"

    def _filtered_beam(self, want: int, ef: int, matching: int) -> int:
        """The beam of a graph walk with a filter that `matching` entries pass."""
        assert self.hnsw_config is not None
        beam = max(ef or self.hnsw_config.ef_search, want)
        factor = math.sqrt(FILTER_EF_SELECTIVITY * self.count / matching)
        return math.ceil(beam * min(MAX_FILTER_EF_FACTOR, max(1.0, factor)))

    def _search_graph(
        self, query: np.ndarray, want: int, mask: np.ndarray | None, matching: int, ef: int
    ) -> list[tuple[int, float]] | None:
        assert self.graph is not None and self.hnsw_config is not None
        beam = max(ef or self.hnsw_config.ef_search, want)
        allowed = None
        if mask is not None and matching < self.count:
            candidates = _postfilter_candidates(want, matching, self.count)
            if candidates <= POSTFILTER_MAX_CANDIDATES:
                found = self._search_graph_postfiltered(query, want, mask, max(beam, candidates))
                if found is not None:
                    return found
            beam = self._filtered_beam(want, ef, matching)
            # bytes indexing returns 0/1 and is the cheapest callable hnswlib can call back.
            allowed = mask.tobytes().__getitem__
        beam = min(beam, matching)
        result = self.graph.search(query, beam, allowed)
        if result is None or len(result[0]) < want:
            return None
        labels = result[0]
        if not self._alive[labels].all() or (mask is not None and not mask[labels].all()):
            log.error("store %r: HNSW returned entries outside the filter", self.spec.name)
            return None
        return self._ranked(labels, query, want)

    def _search_graph_postfiltered(
        self, query: np.ndarray, want: int, mask: np.ndarray, candidates: int
    ) -> list[tuple[int, float]] | None:
        """The best `want` matching entries among the graph's `candidates` nearest, or None
        when fewer than `want` of those match (the caller then walks the graph filtered)."""
        assert self.graph is not None
        result = self.graph.search(query, min(candidates, self.count), None)
        if result is None:
            return None
        labels = result[0]
        labels = labels[mask[labels] & self._alive[labels]]
        if len(labels) < want:
            return None
        return self._ranked(labels, query, want)

    def _search_exact(
        self, query: np.ndarray, want: int, mask: np.ndarray | None
    ) -> list[tuple[int, float]]:
        if mask is None and self.count == self.size:
            slots = np.arange(self.size)
            scores = self._approximate_scores(self._vectors[: self.size], slots, query)
        else:
            slots = np.flatnonzero(mask if mask is not None else self._alive[: self.size])
            scores = np.empty(len(slots), dtype=np.float64)
            for start in range(0, len(slots), SCAN_BLOCK_ROWS):
                block = slots[start : start + SCAN_BLOCK_ROWS]
                scores[start : start + len(block)] = self._approximate_scores(
                    self._vectors[block], block, query
                )
        if want < len(slots):
            slots = slots[np.argpartition(-scores, want - 1)[:want]]
        return self._ranked(slots, query, want)

    def _approximate_scores(
        self, vectors: np.ndarray, slots: np.ndarray, query: np.ndarray
    ) -> np.ndarray:
        """Scores good for ranking (float32 products, terms constant in the query dropped)."""
        scores = _dots(vectors, query)
        metric = self.spec.metric
        if metric == Metric.COSINE:
            scores = scores / self._norms[slots]
        elif metric == Metric.L2:
            scores = 2.0 * scores - self._norms[slots] ** 2
        return scores

    def _ranked(self, slots: np.ndarray, query: np.ndarray, want: int) -> list[tuple[int, float]]:
        """The best `want` of `slots` with exact float64 scores, best first (ties by id)."""
        vectors = self._vectors[slots].astype(np.float64)
        q = query.astype(np.float64)
        metric = self.spec.metric
        if metric == Metric.L2:
            diff = vectors - q
            scores = -np.einsum("ij,ij->i", diff, diff)
        else:
            scores = np.einsum("ij,j->i", vectors, q)
            if metric == Metric.COSINE:
                # The same float64 value np.linalg.norm computes for a vector, without its
                # Python-level overhead (this runs once per query).
                scores = scores / (self._norms[slots] * math.sqrt(q.dot(q)))
        # Array methods rather than np.* wrappers: this runs on a few dozen rows per query,
        # where the wrappers' Python overhead is a measurable share.
        order = (-scores).argsort(kind="stable")
        ordered = scores[order]
        if len(ordered) > 1 and (ordered[1:] == ordered[:-1]).any():
            # Equal scores rank by id, which numpy cannot sort by; ties need bit-identical
            # float64 scores, so this slower path is rare.
            ids = self.ids
            order = np.array(
                sorted(range(len(slots)), key=lambda i: (-scores[i], ids[slots[i]])), dtype=np.intp
            )
        best = order[:want]
        return list(zip(slots[best].tolist(), scores[best].tolist(), strict=True))


def _decodes(metadata_json: str) -> bool:
    try:
        codec.decode_metadata(metadata_json)
    except ValueError:
        return False
    return True


def row_bytes(entry_id: str, vector: bytes | memoryview, metadata_json: str) -> int:
    """Approximate bytes an entry's row takes in the database file."""
    id_bytes = codec.utf8_length(entry_id)
    return id_bytes + len(vector) + codec.utf8_length(metadata_json) + ROW_OVERHEAD_BYTES
