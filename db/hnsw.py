"""The HNSW graph of a store (hnswlib), and how it is saved next to the database.

The graph is a derived index: SQLite holds the truth, and the graph can always be rebuilt from it.
Labels are the store's slot numbers (see nachbar.db.store); a deleted entry's label is marked
deleted and may later be reused, which hnswlib turns into an in-place update of that node.

On disk a graph is two files in `<data_dir>/indexes/`:
- `store-<store_id>.<seq>-<nonce>.hnsw`: the graph's links without its vectors (a new name for
  every save; see "Links without vectors" below);
- `store-<store_id>.json`: the sidecar, written last: which graph file is current, which store
  and settings it was built for, the store's change sequence it reflects, and the CRC-32 and size
  of the graph file. A graph whose sidecar is missing, unreadable or does not match is not
  loaded (and is rebuilt by the caller).
A save writes and fsyncs the new graph file, then atomically replaces the sidecar, then deletes
the previous graph file: a crash at any point leaves a sidecar that names a complete graph that
matches it, so a kill during a checkpoint costs at most the checkpoint, never a rebuild.
(Sidecars of format 1 without a `graph_file` name the graph `store-<store_id>.hnsw`.)

Links without vectors (sidecar format 2): hnswlib's own file holds every vector again, which
SQLite already holds durably, so the graph file would double the vectors on disk (a 384-d node
is 1,536 bytes of vector and 132 of links). A format-2 file holds hnswlib's header, each node's
level-0 links (with the deletion mark), its label, its level, a fingerprint of its vector (its
projections on two fixed random directions) and its upper-level links; loading puts the
store's vectors back (`VectorSource`, normalized as hnswlib does for cosine) and hands hnswlib
the assembled state (`__setstate__`, hnswlib's pickle format). A node whose store vector does
not match its fingerprint (the entry got another vector after the save, or is gone) gets a zero
vector, so that the replay that follows (nachbar.db.recovery) sees it differ and re-inserts it,
as it does with a graph that still holds the old vector; entries rewritten with the same vector
need no replay. Graphs saved in format 1 (hnswlib's file) are still loaded.

Saving without stopping the server: hnswlib's `save_index` holds Python's GIL while it writes
(over a second for 200k x 384), stalling every request of every store. So a save takes a
snapshot instead, hnswlib's in-memory copy of the index (`__getstate__`, a memcpy; the store's
read lock keeps writers out meanwhile), and writes its links with Python file writes, which
release the GIL.

Per-query `ef`: hnswlib keeps `ef` on the index, and changing it while other threads search would
race. hnswlib searches with max(ef, k), so the index's `ef` is pinned to 1 and a query asks for
max(k, ef) neighbours instead, then keeps the best k. That gives every query its own beam width.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np

from nachbar.db.types import HnswConfig, Metric

log = logging.getLogger("nachbar.db")

GRAPH_FORMAT = 2  # links without vectors; 1 (hnswlib's own file) is still read
READABLE_FORMATS = (1, 2)
_SPACES = {Metric.COSINE: "cosine", Metric.L2: "l2", Metric.INNER_PRODUCT: "ip"}
_CRC_CHUNK = 1 << 22
_WRITE_CHUNK = 1 << 23  # each file write releases the GIL; smaller ones let other threads in
# hnswlib's file header: offsetLevel0, max_elements, cur_element_count, size_data_per_element,
# label_offset, offsetData (size_t), maxlevel (int), enterpoint_node (uint32), maxM, maxM0, M
# (size_t), mult (double), ef_construction (size_t); native byte order, as hnswlib writes it.
_HEADER = struct.Struct("=QQQQQQiIQQQdQ")
_NORMALIZE_ROWS = 4_096  # rows handled at a time while a graph saves or loads (small temporaries)

FINGERPRINT_SEED = 20261207
FINGERPRINT_TOLERANCE = 1e-5  # of the vector's L1 norm; rounding differs by ~1e-7 of it

# The store's current vectors of the given labels (slots), a zero row for a free slot.
VectorSource = Callable[[np.ndarray], np.ndarray]


def _fingerprint_directions(dimension: int) -> np.ndarray:
    directions: np.ndarray = np.random.default_rng(FINGERPRINT_SEED).uniform(
        -1.0, 1.0, (dimension, 2)
    )
    return directions


def _fingerprints(rows: np.ndarray, directions: np.ndarray) -> np.ndarray:
    # float32 products (BLAS): their rounding, ~1e-7 of the L1 norm, is far below the tolerance.
    out: np.ndarray = (rows @ directions.astype(np.float32)).astype(np.float64)
    return out


SEED = 100  # fixed, so a rebuild from the same rows builds the same graph


class GraphUnusableError(Exception):
    """A saved graph cannot be used; the message says why (for the log)."""


@dataclass(frozen=True)
class GraphFiles:
    directory: Path
    store_id: int

    @property
    def sidecar(self) -> Path:
        return self.directory / f"store-{self.store_id}.json"

    @property
    def legacy_graph(self) -> Path:
        return self.directory / f"store-{self.store_id}.hnsw"

    def read_sidecar(self) -> dict[str, Any]:
        """The sidecar's fields; GraphUnusableError if it is missing or unreadable."""
        if not self.sidecar.exists():
            raise GraphUnusableError("no saved graph")
        try:
            sidecar = json.loads(self.sidecar.read_text())
        except (OSError, ValueError) as error:
            raise GraphUnusableError(f"{self.sidecar} is unreadable ({error})") from None
        if not isinstance(sidecar, dict) or sidecar.get("format") not in READABLE_FORMATS:
            raise GraphUnusableError(f"{self.sidecar} has an unknown format")
        return sidecar

    def graph_of(self, sidecar: dict[str, Any]) -> Path:
        name = sidecar.get("graph_file", self.legacy_graph.name)
        if not isinstance(name, str) or not name.startswith(f"store-{self.store_id}."):
            raise GraphUnusableError(f"{self.sidecar} names no graph file of this store")
        return self.directory / Path(name).name

    def current_graph(self) -> Path | None:
        """The graph file the sidecar names, if the sidecar is readable."""
        try:
            return self.graph_of(self.read_sidecar())
        except GraphUnusableError:
            return None

    def graphs(self) -> Iterator[Path]:
        """Every graph file of this store in the directory, current or not."""
        if self.directory.is_dir():
            yield from self.directory.glob(f"store-{self.store_id}.*hnsw")

    def size(self) -> int:
        graph = self.current_graph()
        try:
            return graph.stat().st_size if graph is not None else 0
        except FileNotFoundError:
            return 0

    def remove(self) -> None:
        self.sidecar.unlink(missing_ok=True)
        for path in list(self.graphs()):
            path.unlink(missing_ok=True)

    def remove_stale(self, keep: Path | None) -> None:
        """Delete this store's graph files other than `keep` (left by earlier saves, or by a
        save that a crash interrupted)."""
        for path in list(self.graphs()):
            if path != keep:
                path.unlink(missing_ok=True)


class HnswGraph:
    def __init__(self, index: hnswlib.Index, capacity: int) -> None:
        self._index = index
        self._capacity = capacity
        index.set_ef(1)  # see the module docstring: the beam width comes from k per query

    @classmethod
    def create(cls, dimension: int, metric: Metric, config: HnswConfig, capacity: int) -> HnswGraph:
        index = hnswlib.Index(space=_SPACES[metric], dim=dimension)
        index.init_index(
            max_elements=max(capacity, 1),
            M=config.m,
            ef_construction=config.ef_construction,
            random_seed=SEED,
        )
        return cls(index, max(capacity, 1))

    @property
    def capacity(self) -> int:
        return self._capacity

    def reserve(self, size: int) -> None:
        """Make room for labels below `size` (grows geometrically)."""
        if size <= self._capacity:
            return
        new_capacity = max(size, self._capacity * 2)
        self._index.resize_index(new_capacity)
        self._capacity = new_capacity

    def add(self, vectors: np.ndarray, labels: np.ndarray, threads: int = -1) -> None:
        """Insert, or update in place, the given labels (also revives deleted ones), on
        `threads` threads (-1: one per CPU)."""
        if len(labels):
            self._index.add_items(vectors, labels, num_threads=threads)

    def holds(self, vectors: np.ndarray, labels: np.ndarray, known: np.ndarray) -> np.ndarray:
        """Which of `labels` the graph already holds, live, with these very vectors (`known`:
        sorted labels the graph may hold). Re-adding such a label is no insert but an hnswlib
        update that rewires the node's neighbourhood, ten times the work for nothing."""
        same = np.zeros(len(labels), dtype=bool)
        candidates = np.flatnonzero(np.isin(labels, known))
        if not len(candidates):
            return same
        try:
            stored = np.asarray(self._index.get_items(labels[candidates]), dtype=np.float32)
        except RuntimeError:  # a label marked deleted: look them up one by one
            found, rows = [], []
            for position in candidates.tolist():
                with contextlib.suppress(RuntimeError):
                    rows.append(self._index.get_items([labels[position]])[0])
                    found.append(position)
            candidates = np.asarray(found, dtype=np.int64)
            stored = np.asarray(rows, dtype=np.float32).reshape(len(found), -1)
        expected = vectors[candidates].astype(np.float32)
        if self._index.space == "cosine":  # hnswlib stores unit vectors for cosine
            norms = np.sqrt(np.einsum("ij,ij->i", expected, expected)) + np.float32(1e-30)
            expected = expected / norms[:, None]
        same[candidates] = np.all(np.abs(stored - expected) <= 1e-6, axis=1)
        return same

    def mark_deleted(self, labels: np.ndarray) -> None:
        for label in labels.tolist():
            # Raises if not in the graph or already deleted: either way the label is gone.
            with contextlib.suppress(RuntimeError):
                self._index.mark_deleted(label)

    def labels(self) -> np.ndarray:
        """Every label the graph holds, deleted ones included."""
        return np.asarray(self._index.get_ids_list(), dtype=np.int64)

    def search(
        self, query: np.ndarray, count: int, allowed: Callable[[int], object] | None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The `count` nearest allowed labels and their hnswlib distances, nearest first; None
        when the graph finds fewer than `count` (the caller falls back to an exact scan)."""
        try:
            labels, distances = self._index.knn_query(query, k=count, num_threads=1, filter=allowed)
        except RuntimeError:
            return None
        return labels[0].astype(np.int64), distances[0]

    def snapshot(self) -> GraphSnapshot:
        """An in-memory copy of the graph, to be written while the graph changes again. Holds
        the GIL for a memcpy of the graph; the caller must keep writers out meanwhile."""
        (state,) = self._index.__getstate__()
        return GraphSnapshot(state, self._capacity)

    @classmethod
    def load(
        cls,
        files: GraphFiles,
        *,
        dimension: int,
        metric: Metric,
        settings: dict[str, object],
        capacity: int,
        vectors: VectorSource,
    ) -> tuple[HnswGraph, int]:
        """The saved graph and the change sequence it reflects; GraphUnusableError otherwise.
        `vectors` supplies the vectors a format-2 file leaves out."""
        sidecar = files.read_sidecar()
        if sidecar.get("store_id") != files.store_id:
            raise GraphUnusableError(f"{files.sidecar} belongs to another store")
        for key, value in settings.items():
            if sidecar.get(key) != value:
                raise GraphUnusableError(f"saved graph was built with {key}={sidecar.get(key)!r}")
        graph = files.graph_of(sidecar)
        try:
            size = graph.stat().st_size
        except OSError:
            raise GraphUnusableError(
                f"no saved graph: {graph}, named by {files.sidecar}, is missing"
            ) from None
        if size != sidecar.get("graph_bytes") or _file_crc(graph) != sidecar.get("graph_crc32"):
            raise GraphUnusableError(f"{graph} does not match its checksum")
        seq = sidecar.get("seq")
        saved_capacity = sidecar.get("capacity")
        if not isinstance(seq, int) or not isinstance(saved_capacity, int):
            raise GraphUnusableError(f"{files.sidecar} lacks seq or capacity")
        capacity = max(capacity, saved_capacity, 1)
        if sidecar.get("format") == 1:
            index = hnswlib.Index(space=_SPACES[metric], dim=dimension)
            try:
                index.load_index(str(graph), max_elements=capacity)
            except (RuntimeError, MemoryError, ValueError) as error:
                raise GraphUnusableError(f"hnswlib could not load {graph} ({error})") from None
            return cls(index, capacity), seq
        try:
            index = _assemble(graph, dimension, metric, capacity, vectors)
        except (RuntimeError, MemoryError, ValueError) as error:
            raise GraphUnusableError(f"hnswlib could not load {graph} ({error})") from None
        return cls(index, capacity), seq


class GraphSnapshot:
    """A copy of a graph taken by `HnswGraph.snapshot`, written in hnswlib's file format."""

    def __init__(self, state: dict[str, Any], capacity: int) -> None:
        self._state = state
        self.capacity = capacity

    def _parts(self) -> Iterator[memoryview]:
        """The file: hnswlib's header, then per node its level-0 links, its label, its level and
        its vector's fingerprint (four arrays), then the upper-level links of the nodes above
        level 0, in node order."""
        state = self._state
        count = int(state["cur_element_count"])
        yield memoryview(
            _HEADER.pack(
                state["offset_level0"],
                state["max_elements"],
                count,
                state["size_data_per_element"],
                state["label_offset"],
                state["offset_data"],
                state["max_level"],
                state["enterpoint_node"],
                state["max_M"],
                state["max_M0"],
                state["M"],
                state["mult"],
                state["ef_construction"],
            )
        )
        size = int(state["size_data_per_element"])
        links = int(state["offset_data"])
        label_offset = int(state["label_offset"])
        level0 = np.ascontiguousarray(state["data_level0"]).view(np.uint8)
        level0 = level0[: count * size].reshape(count, size)
        rows = max(1, _WRITE_CHUNK // max(links, 1))
        for start in range(0, count, rows):
            yield np.ascontiguousarray(level0[start : start + rows, :links]).reshape(-1).data
        yield np.ascontiguousarray(level0[:, label_offset : label_offset + 8]).reshape(-1).data
        yield np.ascontiguousarray(state["element_levels"][:count], dtype="=i4").view(np.uint8).data
        dimension = (label_offset - links) // 4
        directions = _fingerprint_directions(dimension)
        prints = np.empty((count, 2), dtype="=f8")
        for start in range(0, count, _NORMALIZE_ROWS):
            part = level0[start : start + _NORMALIZE_ROWS, links:label_offset]
            prints[start : start + len(part)] = _fingerprints(
                np.ascontiguousarray(part).view(np.float32), directions
            )
        yield prints.view(np.uint8).reshape(-1).data
        yield np.ascontiguousarray(state["link_lists"]).view(np.uint8).reshape(-1).data

    def write(
        self, files: GraphFiles, *, seq: int, fsync: bool, settings: dict[str, object]
    ) -> tuple[Path, int]:
        """Write the graph under a new name, then its sidecar, then drop the previous graph
        file; returns the new graph file and its size."""
        files.directory.mkdir(parents=True, exist_ok=True)
        graph = files.directory / f"store-{files.store_id}.{seq}-{uuid.uuid4().hex[:8]}.hnsw"
        tmp_graph = graph.with_name(graph.name + ".tmp")
        crc = size = 0
        with tmp_graph.open("wb", buffering=0) as handle:
            for part in self._parts():
                handle.write(part)
                crc = zlib.crc32(part, crc)
                size += len(part)
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp_graph, graph)
        if fsync:
            _fsync_dir(files.directory)  # the graph's name is durable before a sidecar names it
        sidecar = {
            "format": GRAPH_FORMAT,
            "store_id": files.store_id,
            "seq": seq,
            "graph_file": graph.name,
            "graph_bytes": size,
            "graph_crc32": crc,
            "capacity": self.capacity,
            **settings,
        }
        tmp_sidecar = files.sidecar.with_suffix(".json.tmp")
        with tmp_sidecar.open("w") as handle:
            handle.write(json.dumps(sidecar, sort_keys=True))
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        # The sidecar is replaced last: until then it names the previous, intact graph.
        os.replace(tmp_sidecar, files.sidecar)
        if fsync:
            _fsync_dir(files.directory)
        files.remove_stale(keep=graph)
        return graph, size


def _assemble(
    path: Path,
    dimension: int,
    metric: Metric,
    capacity: int,
    vectors: VectorSource,
) -> hnswlib.Index:
    """An hnswlib index from a format-2 file and the store's vectors (see the module docstring);
    ValueError if the file does not add up."""
    data = path.read_bytes()
    if len(data) < _HEADER.size:
        raise ValueError("file shorter than its header")
    (_, _, count, size, label_offset, links, max_level, entry, max_m, max_m0, m, _, efc) = (
        _HEADER.unpack_from(data, 0)
    )
    if label_offset != links + 4 * dimension or size != label_offset + 8:
        raise ValueError("node layout does not match the store's dimension")
    upper_size = 4 + 4 * int(max_m)
    position = _HEADER.size
    level0_bytes = count * links
    if position + level0_bytes + 28 * count > len(data):
        raise ValueError("file shorter than its nodes")
    level0_links = np.frombuffer(data, np.uint8, level0_bytes, position).reshape(count, links)
    position += level0_bytes
    labels = np.frombuffer(data, "=u8", count, position)
    position += 8 * count
    levels = np.frombuffer(data, "=i4", count, position)
    position += 4 * count
    prints = np.frombuffer(data, "=f8", 2 * count, position).reshape(count, 2)
    position += 16 * count
    upper = np.frombuffer(data, np.uint8, offset=position)
    if len(upper) != int(np.where(levels > 0, levels, 0).sum()) * upper_size:
        raise ValueError("upper-level links do not match the node levels")
    if count > capacity or (count and int(labels.max()) >= capacity):
        raise ValueError("more nodes or higher labels than the capacity")

    index = hnswlib.Index(space=_SPACES[metric], dim=dimension)
    index.init_index(max_elements=capacity, M=int(m), ef_construction=int(efc), random_seed=SEED)
    (state,) = index.__getstate__()  # a fresh index's settings, filled in below
    if (state["max_M"], state["max_M0"], state["offset_data"]) != (max_m, max_m0, links):
        raise ValueError("links layout does not match hnswlib's for these settings")
    level0 = np.empty((count, size), dtype=np.uint8)
    level0[:, :links] = level0_links
    level0[:, label_offset:] = labels.view(np.uint8).reshape(count, 8)
    directions = _fingerprint_directions(dimension)
    for start in range(0, count, _NORMALIZE_ROWS):
        part = labels[start : start + _NORMALIZE_ROWS].astype(np.int64)
        rows = np.ascontiguousarray(vectors(part), dtype=np.float32)
        if metric == Metric.COSINE:
            rows = _normalized(rows)
        # A vector other than the one the links were built for: zero, so the replay re-inserts.
        drift = np.abs(_fingerprints(rows, directions) - prints[start : start + len(part)])
        limit = FINGERPRINT_TOLERANCE * np.abs(rows).sum(axis=1, dtype=np.float64)
        rows[~np.all(drift <= limit[:, None], axis=1)] = 0
        level0[start : start + len(part), links:label_offset] = rows.view(np.uint8)
    del data, level0_links
    element_levels = np.zeros(capacity, dtype=np.int32)
    element_levels[:count] = levels
    state.update(
        cur_element_count=count,
        max_level=max_level,
        enterpoint_node=entry,
        ep_added=count > 0,
        has_deletions=True,  # hnswlib counts the deletion marks in the links
        label_lookup_external=np.array(labels, dtype=np.uint64),
        label_lookup_internal=np.arange(count, dtype=np.uint32),
        element_levels=element_levels,
        data_level0=level0.reshape(-1).view(np.int8),
        link_lists=np.array(upper, dtype=np.int8),
    )
    loaded: hnswlib.Index = hnswlib.Index.__new__(hnswlib.Index)
    loaded.__setstate__((state,))
    return loaded


def _normalized(rows: np.ndarray) -> np.ndarray:
    """Unit rows as hnswlib stores them for cosine (rows * 1 / (sqrt(sum of squares) + 1e-30)
    in float32; the sum may round differently from hnswlib's in the last bit)."""
    squares = np.einsum("ij,ij->i", rows, rows)
    scale = np.float32(1.0) / (np.sqrt(squares) + np.float32(1e-30))
    rows *= scale[:, None]
    return rows


def graph_settings(dimension: int, metric: Metric, config: HnswConfig) -> dict[str, object]:
    """What a saved graph must have been built with to be reused."""
    return {
        "dimension": dimension,
        "metric": metric.value,
        "m": config.m,
        "ef_construction": config.ef_construction,
    }


def _file_crc(path: Path) -> int:
    crc = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CRC_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
