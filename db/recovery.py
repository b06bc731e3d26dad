"""Coming back from a crash quickly, and noticing when a crash lost committed writes.

Three pieces, all run by nachbar.db.engine:

- `restore_graph`: after the database opens, each HNSW store's graph is brought back in the
  background while the store already serves (searches scan exactly until the graph is in). The
  saved graph is loaded and the entries written after it are replayed, or the graph is rebuilt;
  hnswlib works on a graph no search sees yet, taking the store's read lock only to copy vectors,
  and the write lock once, briefly, to apply what changed meanwhile and install the graph.
- `save_graph`: a checkpoint of one store's graph (see nachbar.db.hnsw for the file format and
  why a kill during a save is harmless). Writers wait only while the graph is copied in memory.
- The committed mark (`committed.json` in the data directory): every store's change sequence that
  is known to be durable in SQLite, and the highest store id. It is written every
  MARK_INTERVAL_SECONDS while writes arrive, after an fsync of the WAL and database files, so it
  is a lower bound of what the database must hold. On open, a database behind its mark has lost
  committed transactions (SQLite drops every WAL frame after a damaged one without an error, and
  a deleted WAL takes every transaction not yet checkpointed into the database file with it):
  `check_mark` refuses to open it rather than serve it as if nothing happened.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nachbar.db.errors import DataCorruptionError
from nachbar.db.hnsw import GraphUnusableError, HnswGraph
from nachbar.db.storage import StoreRow
from nachbar.db.store import StoreState
from nachbar.db.types import IndexLoadReport

log = logging.getLogger("nachbar.db")

COMMITTED_FILE = "committed.json"
MARK_FORMAT = 1
MARK_INTERVAL_SECONDS = 1.0
# A saved graph more than this far behind SQLite is rebuilt instead of patched.
REPLAY_MIN = 1000
# Vectors handed to hnswlib at once while restoring (it spreads a batch over every core).
RESTORE_PIECE = 4096
# Once at most this many changes are left, they are applied under the store's write lock and
# the graph goes live (hnswlib inserts about a thousand 384-d vectors a second per core here).
FINAL_CATCH_UP = 256


def restore_graph(state: StoreState, stop: threading.Event) -> None:
    """Load or rebuild the store's HNSW graph and install it; returns early when `stop` is set
    or the store is dropped (the store then keeps scanning exactly)."""
    name = state.spec.name
    with state.lock.read():
        if state.dropped:
            return
        capacity = max(state.capacity, state.size)
        start_seq = state.seq
        count = state.count
    graph: HnswGraph
    reason = ""
    try:
        graph, saved_seq = state.load_saved_graph(capacity)
        if saved_seq > start_seq:
            raise GraphUnusableError(
                f"saved graph reflects change {saved_seq} but the database only reaches {start_seq}"
            )
        with state.lock.read():
            behind = len(state.changed_since(saved_seq))
        if behind > max(REPLAY_MIN, count // 2):
            raise GraphUnusableError(
                f"{behind} entries changed after the graph was saved; rebuilding is faster than "
                "replaying them"
            )
    except (GraphUnusableError, RuntimeError, MemoryError) as why:
        log.warning("store %r: rebuilding its HNSW graph: %s", name, why)
        reason = str(why)
        graph = state.new_graph(capacity)
        saved_seq = -1

    # Catch up off-lock until little is left: each round adds what changed up to the sequence
    # it started at; writes go on meanwhile and are picked up by the next round.
    with state.lock.read():
        live = state.live_slots()
    known = np.sort(graph.labels())
    marked = _mark_gone(graph, live, np.empty(0, dtype=np.int64))
    done_seq = saved_seq
    applied = 0
    while True:
        with state.lock.read():
            if state.dropped:
                return
            target_seq = state.seq
            todo = state.changed_since(done_seq)
            live = state.live_slots()
        if len(todo) <= FINAL_CATCH_UP:
            break
        for start in range(0, len(todo), RESTORE_PIECE):
            if stop.is_set():
                return
            piece = todo[start : start + RESTORE_PIECE]
            with state.lock.read():
                if state.dropped:
                    return
                size = state.size
                vectors = state.vectors_of(piece)
            applied += _add_changed(graph, vectors, piece, known, size)
        marked = _mark_gone(graph, live, marked)
        done_seq = target_seq
    with state.lock.write():
        if state.dropped:
            return
        todo = state.changed_since(done_seq)
        applied += _add_changed(graph, state.vectors_of(todo), todo, known, state.size)
        _mark_gone(graph, state.live_slots(), marked)
        if saved_seq < 0:
            report = IndexLoadReport(store=name, action="rebuilt", reason=reason)
            unsaved = state.count
        else:
            report = IndexLoadReport(store=name, action="loaded", replayed=applied)
            unsaved = len(state.changed_since(saved_seq))
        state.install_graph(graph, saved_seq=saved_seq, unsaved=unsaved, report=report)
    if saved_seq < 0:
        log.info("store %r: rebuilt its HNSW graph (%d entries)", name, count)
    else:
        log.info("store %r: loaded its HNSW graph and replayed %d later changes", name, applied)


def _add_changed(
    graph: HnswGraph, vectors: np.ndarray, slots: np.ndarray, known: np.ndarray, size: int
) -> int:
    """Add the slots whose vectors the graph lacks (entries re-written with the same vector,
    e.g. metadata updates, need nothing); returns how many were added."""
    changed = ~graph.holds(vectors, slots, known)
    graph.reserve(size)
    graph.add(vectors[changed], slots[changed])
    return int(changed.sum())


def _mark_gone(graph: HnswGraph, live: np.ndarray, marked: np.ndarray) -> np.ndarray:
    """Mark deleted the graph's labels that are not live (skipping those marked before);
    returns every label marked so far."""
    gone = np.setdiff1d(graph.labels(), live)
    graph.mark_deleted(np.setdiff1d(gone, marked, assume_unique=True))
    return gone


@dataclass(frozen=True)
class Checkpoint:
    """One graph save: what it covered and what it cost."""

    changes: int  # entries changed since the previous save
    graph_bytes: int
    held_seconds: float  # writers of the store waited this long (the in-memory copy)
    seconds: float


def save_graph(state: StoreState, *, fsync: bool) -> Checkpoint | None:
    """Checkpoint the store's graph if it changed since its last save (None if not)."""
    began = time.perf_counter()
    with state.lock.read():
        if state.dropped or not state.graph_needs_save():
            return None
        copying = time.perf_counter()
        snapshot, point = state.graph_snapshot()
        settings = state.settings()
        held = time.perf_counter() - copying
    _, size = snapshot.write(state.files, seq=point.seq, fsync=fsync, settings=settings)
    del snapshot  # as big as the graph: free it before taking the lock again
    with state.lock.read():
        if state.dropped:  # dropped while its graph was written: remove what was written
            state.files.remove()
            return None
        state.graph_saved(point, size)
    return Checkpoint(point.changes, size, held, time.perf_counter() - began)


@dataclass(frozen=True)
class CommittedMark:
    """Change sequences that are durable in SQLite, by store id, and the highest store id."""

    store_seqs: dict[int, int]
    max_store_id: int


def read_mark(path: Path) -> CommittedMark | None:
    """The mark on disk; None if there is none. DataCorruptionError if it is unreadable."""
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict) or raw.get("format") != MARK_FORMAT:
            raise ValueError("unknown format")
        seqs = {int(key): int(value) for key, value in raw["store_seqs"].items()}
        return CommittedMark(store_seqs=seqs, max_store_id=int(raw["max_store_id"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise DataCorruptionError(
            f"{path}, the record of committed changes, is unreadable ({error}); restore the data "
            f"directory from a backup, or delete {path} to start without checking the database "
            "against it"
        ) from None


def write_mark(path: Path, mark: CommittedMark, *, fsync: bool) -> None:
    """Replace the mark atomically (tmp + fsync + rename + directory fsync)."""
    body = {
        "format": MARK_FORMAT,
        "max_store_id": mark.max_store_id,
        "store_seqs": {str(key): value for key, value in sorted(mark.store_seqs.items())},
    }
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as handle:
        handle.write(json.dumps(body, sort_keys=True) + "\n")
        handle.flush()
        if fsync:
            os.fsync(handle.fileno())
    os.replace(tmp, path)
    if fsync:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def check_mark(
    mark: CommittedMark,
    stores: Sequence[StoreRow],
    max_store_id: int,
    *,
    db_path: Path,
    wal_path: Path,
    mark_path: Path,
) -> None:
    """DataCorruptionError if the database lacks a change the mark says was committed.

    WAL damage loses a suffix of the transactions, so anything committed before the mark was
    written and missing now shows as: a store behind its marked sequence, a marked store id above
    the highest the database knows (a lost CreateStore), or a store that the mark knew was gone
    (a lost DropStore). A marked store that is missing while its id is known was dropped after
    the mark: that is no loss.
    """
    by_id = {row.store_id: row for row in stores}
    problems: list[str] = []
    if max_store_id < mark.max_store_id:
        problems.append(
            f"stores up to id {mark.max_store_id} were created, the database knows only up to "
            f"{max_store_id}"
        )
    for store_id, seq in sorted(mark.store_seqs.items()):
        row = by_id.get(store_id)
        if row is not None and row.seq < seq:
            problems.append(
                f"store {row.spec.name!r} reaches change {row.seq}, but change {seq} was committed"
            )
    for row in stores:
        if row.store_id <= mark.max_store_id and row.store_id not in mark.store_seqs:
            problems.append(f"store {row.spec.name!r} was dropped, but it is back")
    if problems:
        raise DataCorruptionError(
            f"database file {db_path} lost committed writes: {'; '.join(problems[:3])} (as "
            f"recorded in {mark_path}). Its write-ahead log {wal_path} was probably damaged or "
            "deleted. Restore the data directory from a backup; to accept the loss and serve "
            f"what the database still holds, delete {mark_path}"
        )
