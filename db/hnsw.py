"""The HNSW graph of a store (hnswlib), and how it is saved next to the database.

The graph is a derived index: SQLite holds the truth, and the graph can always be rebuilt from it.
Labels are the store's slot numbers (see nachbar.db.store); a deleted entry's label is marked
deleted and may later be reused, which hnswlib turns into an in-place update of that node.

On disk a graph is two files in `<data_dir>/indexes/`:
- `store-<store_id>.hnsw`: hnswlib's own format;
- `store-<store_id>.json`: which store and settings it was built for, the store's change
  sequence it reflects, and the CRC-32 and size of the graph file. A graph whose sidecar is
  missing, unreadable or does not match is not loaded (and is rebuilt by the caller).

Per-query `ef`: hnswlib keeps `ef` on the index, and changing it while other threads search would
race. hnswlib searches with max(ef, k), so the index's `ef` is pinned to 1 and a query asks for
max(k, ef) neighbours instead, then keeps the best k. That gives every query its own beam width.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import hnswlib
import numpy as np

from nachbar.db.types import HnswConfig, Metric

log = logging.getLogger("nachbar.db")

GRAPH_FORMAT = 1
_SPACES = {Metric.COSINE: "cosine", Metric.L2: "l2", Metric.INNER_PRODUCT: "ip"}
_CRC_CHUNK = 1 << 22
SEED = 100  # fixed, so a rebuild from the same rows builds the same graph


class GraphUnusableError(Exception):
    """A saved graph cannot be used; the message says why (for the log)."""


@dataclass(frozen=True)
class GraphFiles:
    directory: Path
    store_id: int

    @property
    def graph(self) -> Path:
        return self.directory / f"store-{self.store_id}.hnsw"

    @property
    def sidecar(self) -> Path:
        return self.directory / f"store-{self.store_id}.json"

    def size(self) -> int:
        try:
            return self.graph.stat().st_size
        except FileNotFoundError:
            return 0

    def remove(self) -> None:
        for path in (self.sidecar, self.graph):
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

    def save(self, files: GraphFiles, *, seq: int, fsync: bool, settings: dict[str, object]) -> int:
        """Write the graph and its sidecar atomically; returns the graph file's size."""
        files.directory.mkdir(parents=True, exist_ok=True)
        tmp_graph = files.graph.with_suffix(".hnsw.tmp")
        tmp_sidecar = files.sidecar.with_suffix(".json.tmp")
        self._index.save_index(str(tmp_graph))
        size = tmp_graph.stat().st_size
        sidecar = {
            "format": GRAPH_FORMAT,
            "store_id": files.store_id,
            "seq": seq,
            "graph_bytes": size,
            "graph_crc32": _file_crc(tmp_graph),
            "capacity": self._capacity,
            **settings,
        }
        tmp_sidecar.write_text(json.dumps(sidecar, sort_keys=True))
        if fsync:
            _fsync_file(tmp_graph)
            _fsync_file(tmp_sidecar)
        # Graph first: a crash between the renames leaves an old sidecar whose CRC does not
        # match the new graph, which is detected and rebuilt.
        os.replace(tmp_graph, files.graph)
        os.replace(tmp_sidecar, files.sidecar)
        if fsync:
            _fsync_dir(files.directory)
        return size

    @classmethod
    def load(
        cls,
        files: GraphFiles,
        *,
        dimension: int,
        metric: Metric,
        settings: dict[str, object],
        capacity: int,
    ) -> tuple[HnswGraph, int]:
        """The saved graph and the change sequence it reflects; GraphUnusableError otherwise."""
        if not files.sidecar.exists() or not files.graph.exists():
            raise GraphUnusableError("no saved graph")
        try:
            sidecar = json.loads(files.sidecar.read_text())
        except (OSError, ValueError) as error:
            raise GraphUnusableError(f"{files.sidecar} is unreadable ({error})") from None
        if not isinstance(sidecar, dict) or sidecar.get("format") != GRAPH_FORMAT:
            raise GraphUnusableError(f"{files.sidecar} has an unknown format")
        if sidecar.get("store_id") != files.store_id:
            raise GraphUnusableError(f"{files.sidecar} belongs to another store")
        for key, value in settings.items():
            if sidecar.get(key) != value:
                raise GraphUnusableError(f"saved graph was built with {key}={sidecar.get(key)!r}")
        size = files.size()
        if size != sidecar.get("graph_bytes") or _file_crc(files.graph) != sidecar.get(
            "graph_crc32"
        ):
            raise GraphUnusableError(f"{files.graph} does not match its checksum")
        seq = sidecar.get("seq")
        saved_capacity = sidecar.get("capacity")
        if not isinstance(seq, int) or not isinstance(saved_capacity, int):
            raise GraphUnusableError(f"{files.sidecar} lacks seq or capacity")
        capacity = max(capacity, saved_capacity, 1)
        index = hnswlib.Index(space=_SPACES[metric], dim=dimension)
        try:
            index.load_index(str(files.graph), max_elements=capacity)
        except (RuntimeError, MemoryError, ValueError) as error:
            raise GraphUnusableError(f"hnswlib could not load {files.graph} ({error})") from None
        return cls(index, capacity), seq


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


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
