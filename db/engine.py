"""The nachbar-db storage engine: named stores of vectors with metadata, durable on disk.

Storage layout of a data directory:

    nachbar.sqlite3 (+ -wal, -shm)   the source of truth: stores, entries, predicate index
                                     fields (nachbar.db.storage has the schema)
    nachbar-db.json                  marker written when the database is created
    LOCK                             held (flock) by the one process that has the directory open
    indexes/store-<id>.hnsw          a store's saved HNSW graph (hnswlib format)
    indexes/store-<id>.json          what that graph was built from: store, settings, the
                                     store's change sequence it reflects, CRC-32 of the graph

Writes: each request is validated completely, then applied in one SQLite transaction (WAL
journal; the fsync policy maps to `synchronous=FULL/NORMAL/OFF`, and with the default "full" an
acknowledged write survives kill -9 and power loss). Only after the commit does the write reach
the in-memory state: the store's contiguous float32 vector matrix, metadata cache, predicate
indexes and HNSW graph (nachbar.db.store). A failed request therefore leaves nothing behind.
Every write bumps the store's change sequence (`stores.seq`) and stamps the rows it writes with
it.

Reads never touch SQLite: entries, filters and searches are served from memory under a per-store
readers-writer lock (hnswlib's `add_items` must not run beside `knn_query`). Readers never wait
for a commit: a write request holds the store's `writer` mutex (one write per store at a time)
while it prepares and commits, and takes the readers-writer lock only to apply the committed
change in memory; new vectors enter the HNSW graph a piece of about GRAPH_PIECE_SECONDS at a
time, with searches let in between pieces.

Recovery on open:
1. The SQLite file is checked (`PRAGMA quick_check`), and every row's CRC-32 is verified while
   the stores are loaded into memory. A damaged, truncated or missing (while the marker says data
   existed) file raises DataCorruptionError naming the file; it never shows as an empty store.
2. Each HNSW store loads its saved graph if the sidecar matches (store, settings, checksum) and
   its sequence is not ahead of SQLite; entries stamped with a later sequence are re-added and
   labels of entries deleted since are marked deleted. A graph that is missing, unreadable,
   inconsistent or so far behind that replay would cost more than a rebuild is rebuilt from
   SQLite, with a log line saying why. `index_load_report()` tells which happened.
Graphs are saved by `flush()`, by `close()`, and every `checkpoint_seconds` in the background.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from nachbar.db import codec, filters, validation
from nachbar.db.errors import (
    DBError,
    InvalidArgumentError,
    NotFoundError,
    StoreChangedError,
    StoreExistsError,
    StoreNotFoundError,
)
from nachbar.db.hnsw import GraphFiles
from nachbar.db.storage import Storage
from nachbar.db.store import StoreState, row_bytes
from nachbar.db.types import (
    Entry,
    FsyncPolicy,
    IndexLoadReport,
    Page,
    SearchMode,
    SearchResult,
    StoreInfo,
    StoreSpec,
    UpsertResult,
)

log = logging.getLogger("nachbar.db")

DB_FILE = "nachbar.sqlite3"
MARKER_FILE = "nachbar-db.json"
LOCK_FILE = "LOCK"
INDEX_DIR = "indexes"
FSYNC_POLICIES: tuple[FsyncPolicy, ...] = ("full", "normal", "off")
# How long a write may hold searches off while inserting into the HNSW graph (one hnswlib insert
# takes 0.2-5 ms, so a 1000-vector batch applied at once would stall searches for seconds).
GRAPH_PIECE_SECONDS = 0.002
MAX_GRAPH_PIECE = 256


class Database:
    """Thread-safe: any number of threads may call any method at the same time."""

    def __init__(
        self,
        data_dir: Path,
        storage: Storage,
        lock_handle: int,
        fsync: FsyncPolicy,
        stores: dict[str, StoreState],
    ) -> None:
        # Use Database.open().
        self.data_dir = data_dir
        self.fsync: FsyncPolicy = fsync
        self._storage = storage
        self._lock_handle = lock_handle
        self._stores = stores
        self._catalog_lock = threading.Lock()  # guards self._stores; taken before store locks
        self._save_lock = threading.Lock()  # one graph save pass at a time
        self._close_lock = threading.Lock()
        self._closed = False
        self._stop = threading.Event()
        self._checkpointer: threading.Thread | None = None

    @classmethod
    def open(
        cls,
        data_dir: Path | str,
        *,
        fsync: FsyncPolicy = "full",
        checkpoint_seconds: float = 300.0,
        integrity_check: bool = True,
    ) -> Database:
        """Open the data directory (created if missing) and restore every store.

        checkpoint_seconds: how often changed HNSW graphs are saved in the background (0: only
        on flush/close). integrity_check: run SQLite's quick_check on open.
        """
        if fsync not in FSYNC_POLICIES:
            raise InvalidArgumentError(
                f"fsync policy {fsync!r} is unknown; use one of {', '.join(FSYNC_POLICIES)}"
            )
        data_dir = Path(data_dir)
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DBError(f"cannot create data directory {data_dir}: {error}") from None
        lock_handle = _lock_directory(data_dir)
        storage: Storage | None = None
        try:
            marker = data_dir / MARKER_FILE
            storage = Storage.open(
                data_dir / DB_FILE, fsync=fsync, marker=marker, integrity_check=integrity_check
            )
            if not marker.exists():
                marker.write_text(json.dumps({"database": DB_FILE, "format": 1}) + "\n")
            stores = _load_stores(storage, data_dir / INDEX_DIR)
        except BaseException:
            if storage is not None:
                storage.close()
            os.close(lock_handle)
            raise
        db = cls(data_dir, storage, lock_handle, fsync, stores)
        if checkpoint_seconds > 0:
            db._start_checkpointer(checkpoint_seconds)
        return db

    # ---- stores ------------------------------------------------------------------------------

    def create_store(
        self, spec: StoreSpec, *, if_not_exists: bool = False
    ) -> tuple[StoreInfo, bool]:
        """Create a store; returns its info and whether it was created (False only when
        if_not_exists found a store with the same dimension and metric)."""
        spec = validation.store_spec(spec)
        with self._catalog_lock:
            self._check_open()
            existing = self._stores.get(spec.name)
            if existing is not None:
                with existing.lock.read():
                    same = (
                        existing.spec.dimension == spec.dimension
                        and existing.spec.metric == spec.metric
                    )
                    if if_not_exists and same:
                        return _info(existing), False
                    detail = ""
                    if if_not_exists:
                        detail = (
                            f"with dimension {existing.spec.dimension} and metric "
                            f"{existing.spec.metric}, not {spec.dimension} and {spec.metric}; "
                            "use another name or drop it first"
                        )
                raise StoreExistsError(spec.name, detail)
            with self._storage.transaction() as conn:
                store_id = Storage.insert_store(conn, spec)
            state = StoreState(store_id, spec, 0, GraphFiles(self.data_dir / INDEX_DIR, store_id))
            state.create_graph()
            self._stores[spec.name] = state
            log.info("created store %r (%d-d, %s)", spec.name, spec.dimension, spec.metric)
            return _info(state), True

    def drop_store(
        self, name: str, *, missing_ok: bool = False, expected_store_id: int = 0
    ) -> bool:
        """Drop a store; with `expected_store_id`, only that incarnation of the name."""
        validation.store_name(name)
        with self._catalog_lock:
            self._check_open()
            state = self._stores.get(name)
            if state is None:
                if missing_ok:
                    return False
                raise StoreNotFoundError(name)
            _check_id(state, expected_store_id)
            with state.writer, state.lock.write():
                with self._storage.transaction() as conn:
                    Storage.delete_store(conn, state.store_id)
                state.dropped = True
                del self._stores[name]
                try:
                    state.files.remove()
                except OSError as error:
                    log.warning("store %r dropped; could not remove its graph: %s", name, error)
                state.release()
        log.info("dropped store %r", name)
        return True

    def list_stores(self) -> list[StoreInfo]:
        with self._catalog_lock:
            self._check_open()
            states = sorted(self._stores.values(), key=lambda s: s.spec.name)
        out = []
        for state in states:
            with state.lock.read():
                if not state.dropped:
                    out.append(_info(state))
        return out

    def get_store(self, name: str) -> StoreInfo:
        with self._reading(name) as state:
            return _info(state)

    def index_load_report(self, name: str) -> IndexLoadReport:
        """How the store's HNSW graph was restored when the database opened."""
        with self._reading(name) as state:
            return state.load_report

    # ---- writes ------------------------------------------------------------------------------

    def upsert(
        self, name: str, entries: Sequence[Entry], *, expected_store_id: int = 0
    ) -> UpsertResult:
        """Insert or replace entries by id, atomically: all of them or none.

        Every method that names a store takes `expected_store_id` (StoreInfo.store_id): when
        set, StoreChangedError unless the name still denotes that store."""
        state = self._state(name, expected_store_id)
        ids, vectors, metas = validation.upsert_batch(state.spec, entries)
        # Encoding is independent of the store's state: do it before taking the lock.
        blobs = [codec.encode_vector(v) for v in vectors]
        jsons = [codec.encode_metadata(m) for m in metas]
        sizes = [row_bytes(i, b, j) for i, b, j in zip(ids, blobs, jsons, strict=True)]
        checksums = [codec.row_checksum(i, b, j) for i, b, j in zip(ids, blobs, jsons, strict=True)]
        with self._writing(state):
            slots, is_new = state.assign_slots(ids)
            if not state.has_room(max(slots) + 1):
                with state.lock.write():  # growing the graph must not run beside a search
                    state.reserve(max(slots) + 1)
            seq = state.seq + 1
            rows = list(zip(ids, slots, blobs, jsons, checksums, strict=True))
            with self._storage.transaction() as conn:  # the fsync: searches go on meanwhile
                Storage.upsert_entries(conn, state.store_id, seq, rows)
                Storage.set_seq(conn, state.store_id, seq)
            with state.lock.write():
                pending = state.apply_upsert(ids, vectors, metas, slots, is_new, sizes)
                done = _index_piece(state, pending, 0, seq)
            while done < len(pending):
                with state.lock.write():
                    done = _index_piece(state, pending, done, seq)
        inserted = sum(is_new)
        return UpsertResult(inserted=inserted, updated=len(ids) - inserted)

    def delete_keys(self, name: str, ids: Sequence[str], *, expected_store_id: int = 0) -> int:
        """Delete entries by id; returns how many existed."""
        state = self._state(name, expected_store_id)
        wanted = validation.entry_ids(ids, name)
        with self._writing(state):
            present = [i for i in wanted if i in state.slot_of]
            return self._delete(state, present)

    def delete_by_predicate(
        self, name: str, filter: filters.Filter, *, expected_store_id: int = 0
    ) -> int:
        """Delete every entry matching the filter; returns how many."""
        state = self._state(name, expected_store_id)
        if filter is None:
            raise InvalidArgumentError(
                f"store {name!r}: DeleteByPredicate needs a filter; to delete everything, drop "
                "the store"
            )
        filters.validate(filter)
        with self._writing(state):
            slots = np.flatnonzero(state.matching(filter)).tolist()
            present = [i for s in slots if (i := state.ids[s]) is not None]
            return self._delete(state, present)

    def _delete(self, state: StoreState, ids: list[str]) -> int:
        if not ids:
            return 0
        slots = [state.slot_of[i] for i in ids]
        seq = state.seq + 1
        with self._storage.transaction() as conn:
            Storage.delete_entries(conn, state.store_id, ids)
            Storage.set_seq(conn, state.store_id, seq)
        with state.lock.write():
            state.apply_delete(slots, seq)
        return len(ids)

    def create_pred_index(self, name: str, fields: Sequence[str]) -> int:
        """Index metadata fields for filters; returns how many were not indexed before."""
        state = self._state(name)
        wanted = validation.field_names(fields, f"store {name!r}")
        with self._writing(state):
            new = [f for f in wanted if f not in state.field_indexes]
            if not new:
                return 0
            with self._storage.transaction() as conn:
                Storage.add_pred_indexes(conn, state.store_id, new)
            with state.lock.write():
                created = state.add_field_indexes(new)
        # Build outside the write lock: searches keep running meanwhile.
        with state.lock.read():
            if not state.dropped:
                state.warm(created)
        return len(new)

    def drop_pred_index(self, name: str, fields: Sequence[str], *, missing_ok: bool = False) -> int:
        """Drop predicate indexes; NotFoundError for a field without one unless missing_ok."""
        state = self._state(name)
        wanted = validation.field_names(fields, f"store {name!r}")
        with self._writing(state):
            missing = [f for f in wanted if f not in state.field_indexes]
            if missing and not missing_ok:
                indexed = ", ".join(repr(f) for f in sorted(state.field_indexes)) or "none"
                raise NotFoundError(
                    f"store {name!r} has no predicate index on "
                    f"{', '.join(repr(f) for f in missing)} (indexed fields: {indexed}); "
                    "set missing_ok to ignore fields without an index"
                )
            present = [f for f in wanted if f in state.field_indexes]
            if present:
                with self._storage.transaction() as conn:
                    Storage.drop_pred_indexes(conn, state.store_id, present)
                with state.lock.write():
                    state.drop_field_indexes(present)
            return len(present)

    # ---- reads -------------------------------------------------------------------------------

    def get_keys(
        self,
        name: str,
        ids: Sequence[str],
        *,
        include_vectors: bool = False,
        expected_store_id: int = 0,
    ) -> tuple[list[Entry], list[str]]:
        """The entries found, in request order (each id once), and the ids not found."""
        wanted = validation.entry_ids(ids, name)
        with self._reading(name, expected_store_id) as state:
            found: list[Entry] = []
            missing: list[str] = []
            for entry_id in wanted:
                slot = state.slot_of.get(entry_id)
                if slot is None:
                    missing.append(entry_id)
                else:
                    found.append(state.entry(slot, include_vectors))
            return found, missing

    def get_by_predicate(
        self,
        name: str,
        filter: filters.Filter | None,
        *,
        limit: int = 100,
        page_token: str = "",
        include_vectors: bool = False,
        expected_store_id: int = 0,
    ) -> Page:
        """Entries matching the filter (all if None) in id order, `limit` at a time."""
        validation.store_name(name)
        limit = validation.page_limit(name, limit)
        after = validation.decode_page_token(name, page_token)
        if filter is not None:
            filters.validate(filter)
        with self._reading(name, expected_store_id) as state:
            entries, more = state.page(filter, limit, after, include_vectors)
        token = validation.encode_page_token(entries[-1].id) if more and entries else ""
        return Page(entries=entries, next_page_token=token)

    def get_sim_n(
        self,
        name: str,
        query: np.ndarray,
        k: int,
        *,
        filter: filters.Filter | None = None,
        mode: SearchMode = SearchMode.AUTO,
        ef: int = 0,
        include_vectors: bool = False,
        expected_store_id: int = 0,
    ) -> SearchResult:
        """The k entries most similar to `query` (among those matching `filter`), best first:
        exactly min(k, matching entries) of them."""
        state = self._state(name, expected_store_id)
        k, ef, mode = validation.search_args(name, k, ef, mode)
        q = validation.vector(
            query,
            store=name,
            dimension=state.spec.dimension,
            metric=state.spec.metric,
            what="the query",
        )
        if filter is not None:
            filters.validate(filter)
        with self._read_locked(state):
            return state.search(q, k, filter, mode, ef, include_vectors)

    # ---- lifecycle ---------------------------------------------------------------------------

    def flush(self) -> None:
        """Save every HNSW graph that changed since it was last saved."""
        with self._save_lock:
            with self._catalog_lock:
                self._check_open()
                states = list(self._stores.values())
            for state in states:
                with state.lock.read():
                    if state.dropped or not state.graph_needs_save():
                        continue
                    try:
                        state.save_graph(fsync=self.fsync != "off")
                    except OSError as error:
                        # The graph is derived data: failing to save it costs a rebuild later,
                        # not data.
                        log.error("store %r: could not save its graph: %s", state.spec.name, error)

    def close(self) -> None:
        """Save graphs, close the database file and release the data directory."""
        with self._close_lock:
            if self._closed:
                return
            self._stop.set()
            if self._checkpointer is not None:
                self._checkpointer.join()
            try:
                self.flush()
            finally:
                with self._catalog_lock:
                    self._closed = True
                self._storage.close()
                os.close(self._lock_handle)

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start_checkpointer(self, interval: float) -> None:
        def run() -> None:
            while not self._stop.wait(interval):
                try:
                    self.flush()
                except Exception:  # keep checkpointing; the next pass may work
                    log.exception("saving HNSW graphs in the background failed")

        self._checkpointer = threading.Thread(target=run, name="nachbar-db-checkpoint", daemon=True)
        self._checkpointer.start()

    # ---- internals ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise DBError("the database is closed; open it again with Database.open")

    def _state(self, name: str, expected_store_id: int = 0) -> StoreState:
        validation.store_name(name)
        with self._catalog_lock:
            self._check_open()
            state = self._stores.get(name)
        if state is None:
            raise StoreNotFoundError(name)
        # A state object is one incarnation of the name: if it is dropped after this check,
        # the operation fails with StoreNotFoundError instead of reaching a newer store.
        _check_id(state, expected_store_id)
        return state

    @contextmanager
    def _reading(self, name: str, expected_store_id: int = 0) -> Iterator[StoreState]:
        state = self._state(name, expected_store_id)
        with self._read_locked(state):
            yield state

    @contextmanager
    def _read_locked(self, state: StoreState) -> Iterator[None]:
        with state.lock.read():
            if state.dropped:
                raise StoreNotFoundError(state.spec.name)
            yield

    @contextmanager
    def _writing(self, state: StoreState) -> Iterator[None]:
        """One write request on the store: excludes other writes and DropStore, not readers
        (the state only writers change may be read without the readers-writer lock; changes
        to it take that lock's write side)."""
        with state.writer:
            if state.dropped:
                raise StoreNotFoundError(state.spec.name)
            yield


def _index_piece(state: StoreState, slots: np.ndarray, start: int, seq: int) -> int:
    """Insert the next GRAPH_PIECE_SECONDS' worth of a committed upsert's vectors into the
    graph (the caller holds the write lock) and return where the next piece starts. Searches
    get in between pieces; they see the entries at once, and until its piece is in, an entry
    is found by exact scans only. `seq` moves when the graph holds the whole write, so a graph
    saved in between is replayed from before this write after a restart."""
    piece = int(GRAPH_PIECE_SECONDS / max(state.seconds_per_insert, 1e-6))
    end = start + max(1, min(MAX_GRAPH_PIECE, piece))
    state.index_slots(slots[start:end])
    if end >= len(slots):
        state.seq = seq
    return end


def _info(state: StoreState) -> StoreInfo:
    spec = state.spec
    return StoreInfo(
        name=spec.name,
        dimension=spec.dimension,
        metric=spec.metric,
        index=spec.index,
        predicate_indexes=tuple(sorted(state.field_indexes)),
        store_metadata=dict(spec.store_metadata),
        count=state.count,
        bytes_used=state.bytes_used,
        store_id=state.store_id,
    )


def _check_id(state: StoreState, expected_store_id: int) -> None:
    if expected_store_id and state.store_id != expected_store_id:
        raise StoreChangedError(state.spec.name, expected_store_id, state.store_id)


def _lock_directory(data_dir: Path) -> int:
    path = data_dir / LOCK_FILE
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(handle)
        raise DBError(
            f"data directory {data_dir} is in use by another nachbar-db (see {path}); stop it "
            "or choose another directory"
        ) from None
    except OSError as error:
        os.close(handle)
        raise DBError(f"cannot lock {path} ({error}); put the data on a local filesystem") from None
    os.ftruncate(handle, 0)
    os.write(handle, f"{os.getpid()}\n".encode())
    return handle


def _load_stores(storage: Storage, index_dir: Path) -> dict[str, StoreState]:
    stores: dict[str, StoreState] = {}
    for row in storage.stores():
        state = StoreState(row.store_id, row.spec, row.seq, GraphFiles(index_dir, row.store_id))
        slot_seqs = state.load_rows(storage.entries(row.store_id), storage.path)
        report = state.restore_graph(slot_seqs)
        state.warm(list(state.field_indexes.values()))
        log.info("store %r: %d entries, graph %s", row.spec.name, state.count, report.action)
        stores[row.spec.name] = state
    _remove_orphan_graphs(index_dir, {state.store_id for state in stores.values()})
    return stores


def _remove_orphan_graphs(index_dir: Path, store_ids: set[int]) -> None:
    """Delete graph files of dropped stores and half-written saves left by a crash."""
    if not index_dir.is_dir():
        return
    for path in index_dir.iterdir():
        stem = path.name.split(".", 1)[0]
        owner = stem.removeprefix("store-")
        if path.name.endswith(".tmp") or not owner.isdigit() or int(owner) not in store_ids:
            log.info("removing stale graph file %s", path)
            path.unlink(missing_ok=True)
