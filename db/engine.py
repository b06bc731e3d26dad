"""The nachbar-db storage engine: named stores of vectors with metadata, durable on disk.

Storage layout of a data directory:

    nachbar.sqlite3 (+ -wal, -shm)   the source of truth: stores, entries, predicate index
                                     fields (nachbar.db.storage has the schema)
    nachbar-db.json                  marker written when the database is created
    committed.json                   each store's change sequence known to be durable in SQLite
                                     (a lower bound, see nachbar.db.recovery)
    LOCK                             held (flock) by the one process that has the directory open
    indexes/store-<id>.<seq>-<nonce>.hnsw   a store's saved HNSW graph (hnswlib format)
    indexes/store-<id>.json          which graph file is current and what it was built from:
                                     store, settings, the store's change sequence it reflects,
                                     CRC-32 of the graph (written last, see nachbar.db.hnsw)

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
   So does a database that lacks changes `committed.json` says were committed (a damaged or
   deleted WAL, see nachbar.db.recovery).
2. The stores serve as soon as their rows are in memory. Each HNSW store's graph comes back in
   the background (nachbar.db.recovery.restore_graph): the saved graph is loaded if the sidecar
   matches (store, settings, checksum) and its sequence is not ahead of SQLite, entries stamped
   with a later sequence are re-added and labels of entries deleted since are marked deleted; a
   graph that is missing, unreadable, inconsistent or so far behind that replay would cost more
   than a rebuild is rebuilt from SQLite, with a log line saying why. Until its graph is in, a
   store answers searches by exact scan. `index_load_report()` tells what happened,
   `wait_for_indexes()` waits for it.
Graphs are checkpointed in the background once `checkpoint_changes` entries changed or the oldest
unsaved change is `checkpoint_seconds` old (so a restart replays little), and by `flush()` and
`close()`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import numpy as np

from nachbar.db import codec, filters, hybrid, recovery, validation
from nachbar.db.errors import (
    DBError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    StoreChangedError,
    StoreExistsError,
    StoreNotFoundError,
)
from nachbar.db.hnsw import GraphFiles
from nachbar.db.observe import NO_OBSERVER, StorageObserver
from nachbar.db.storage import Storage, StoreRow
from nachbar.db.store import StoreState, row_bytes
from nachbar.db.types import (
    ALL_METADATA,
    Entry,
    EntryBatch,
    FsyncPolicy,
    HybridOptions,
    IndexLoadReport,
    Match,
    Metadata,
    MetadataSelection,
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
DEFAULT_CHECKPOINT_SECONDS = 300.0
DEFAULT_CHECKPOINT_CHANGES = 10_000
T = TypeVar("T")
# How long a write may hold searches off while inserting into the HNSW graph (one hnswlib insert
# takes 0.2-5 ms, so a 1000-vector batch applied at once would stall searches for seconds).
GRAPH_PIECE_SECONDS = 0.002
MAX_GRAPH_PIECE = 256
DEFAULT_HYBRID = HybridOptions()


class Database:
    """Thread-safe: any number of threads may call any method at the same time."""

    def __init__(
        self,
        data_dir: Path,
        storage: Storage,
        lock_handle: int,
        fsync: FsyncPolicy,
        stores: dict[str, StoreState],
        max_store_id: int,
        checkpoint_seconds: float,
        checkpoint_changes: int,
        filter_limits: filters.FilterLimits = filters.DEFAULT_LIMITS,
    ) -> None:
        # Use Database.open().
        self.data_dir = data_dir
        self.fsync: FsyncPolicy = fsync
        self.filter_limits = filter_limits
        self._storage = storage
        self._lock_handle = lock_handle
        self._stores = stores
        self._max_store_id = max_store_id  # guarded by the catalog lock
        self._checkpoint_seconds = checkpoint_seconds
        self._checkpoint_changes = checkpoint_changes
        self._catalog_lock = threading.Lock()  # guards self._stores; taken before store locks
        self._save_lock = threading.Lock()  # one graph save pass at a time
        self._mark_lock = threading.Lock()  # one committed-mark write at a time
        self._mark: recovery.CommittedMark | None = None  # the last one written
        self._close_lock = threading.Lock()
        self._closed = False
        self._stop = threading.Event()
        self._wake = threading.Event()  # a store reached checkpoint_changes
        self._indexes_ready = threading.Event()
        self._threads: list[threading.Thread] = []
        self._observer: StorageObserver = NO_OBSERVER

    @classmethod
    def open(
        cls,
        data_dir: Path | str,
        *,
        fsync: FsyncPolicy = "full",
        checkpoint_seconds: float = DEFAULT_CHECKPOINT_SECONDS,
        checkpoint_changes: int = DEFAULT_CHECKPOINT_CHANGES,
        integrity_check: bool = True,
        wait_for_indexes: bool = True,
        filter_limits: filters.FilterLimits = filters.DEFAULT_LIMITS,
    ) -> Database:
        """Open the data directory (created if missing) and restore every store.

        checkpoint_seconds / checkpoint_changes: a changed HNSW graph is saved in the background
        once its oldest unsaved change is this old / this many entries changed (0 turns a
        trigger off; with both off graphs are saved only by flush and close).
        integrity_check: run SQLite's quick_check on open. wait_for_indexes: return once every
        HNSW graph is back (False: return once the stores can serve, and let the graphs come
        back in the background; see `wait_for_indexes`). filter_limits: how large a filter a
        request may send.
        """
        if fsync not in FSYNC_POLICIES:
            raise InvalidArgumentError(
                f"fsync policy {fsync!r} is unknown; use one of {', '.join(FSYNC_POLICIES)}"
            )
        if checkpoint_seconds < 0 or checkpoint_changes < 0:
            raise InvalidArgumentError(
                "checkpoint_seconds and checkpoint_changes must be 0 (off) or positive"
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
            storage = Storage.open(data_dir / DB_FILE, fsync=fsync, marker=marker)
            if not marker.exists():
                marker.write_text(json.dumps({"database": DB_FILE, "format": 1}) + "\n")
            # SQLite checks the file while Python loads the rows: two cores at work.
            checked = _in_background(storage.quick_check if integrity_check else lambda: None)
            try:
                rows = storage.stores()
                max_store_id = storage.max_store_id()
                _check_committed(storage, rows, max_store_id, data_dir / recovery.COMMITTED_FILE)
                stores = _load_stores(storage, rows, data_dir / INDEX_DIR)
            finally:
                checked()  # raises what quick_check found, before anything else
        except BaseException:
            if storage is not None:
                storage.close()
            os.close(lock_handle)
            raise
        db = cls(
            data_dir,
            storage,
            lock_handle,
            fsync,
            stores,
            max_store_id,
            checkpoint_seconds,
            checkpoint_changes,
            filter_limits,
        )
        db._start_background()
        if wait_for_indexes:
            db.wait_for_indexes()
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
            self._max_store_id = max(self._max_store_id, store_id)
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
        """How the store's HNSW graph was restored when the database opened ("pending" while
        that goes on in the background)."""
        with self._reading(name) as state:
            return state.load_report

    def wait_for_indexes(self, timeout: float | None = None) -> bool:
        """Wait until every HNSW graph restored at open is in; False if `timeout` passed."""
        return self._indexes_ready.wait(timeout)

    # ---- writes ------------------------------------------------------------------------------

    def upsert(
        self, name: str, entries: Sequence[Entry] | EntryBatch, *, expected_store_id: int = 0
    ) -> UpsertResult:
        """Insert or replace entries by id, atomically: all of them or none.

        Every method that names a store takes `expected_store_id` (StoreInfo.store_id): when
        set, StoreChangedError unless the name still denotes that store."""
        state = self._state(name, expected_store_id)
        ids, vectors, metas = validation.upsert_batch(state.spec, entries)
        # Encoding is independent of the store's state: do it before taking the lock. Vector
        # blobs are views of the batch's rows, made one at a time, not a copy of the batch.
        stored = codec.vector_rows(vectors)
        jsons = [codec.encode_metadata(m) for m in metas]
        sizes = [row_bytes(i, codec.blob(v), j) for i, v, j in zip(ids, stored, jsons, strict=True)]
        checksums = [
            codec.row_checksum(i, codec.blob(v), j)
            for i, v, j in zip(ids, stored, jsons, strict=True)
        ]
        with self._writing(state):
            slots, is_new = state.assign_slots(ids)
            keyword_rows = _keyword_rows(state, ids, slots, metas)
            if not state.has_room(max(slots) + 1):
                with state.lock.write():  # growing the graph must not run beside a search
                    state.reserve(max(slots) + 1)
            seq = state.seq + 1
            blobs = map(codec.blob, stored)
            rows = zip(ids, slots, blobs, jsons, checksums, strict=True)
            with self._storage.transaction() as conn:  # the fsync: searches go on meanwhile
                Storage.upsert_entries(conn, state.store_id, seq, rows)
                if keyword_rows is not None:
                    Storage.upsert_keywords(conn, state.store_id, keyword_rows)
                Storage.set_seq(conn, state.store_id, seq)
            with state.lock.write():
                pending = state.apply_upsert(ids, vectors, metas, slots, is_new, sizes, seq)
                done = _index_piece(state, pending, 0, seq, len(ids))
            while done < len(pending):
                with state.lock.write():
                    done = _index_piece(state, pending, done, seq, len(ids))
            self._checkpoint_soon_if_due(state)
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
        filters.validate(filter, self.filter_limits)
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
            if state.keyword_fields is not None:
                Storage.delete_keywords(conn, state.store_id, slots)
            Storage.set_seq(conn, state.store_id, seq)
        with state.lock.write():
            state.apply_delete(slots, seq)
        self._checkpoint_soon_if_due(state)
        return len(ids)

    def _checkpoint_soon_if_due(self, state: StoreState) -> None:
        if self._checkpoint_changes and state.unsaved_changes >= self._checkpoint_changes:
            self._wake.set()

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

    def create_keyword_index(self, name: str, fields: Sequence[str]) -> tuple[bool, int]:
        """Give the store a keyword (FTS5/BM25) index over these metadata fields, filled from
        the entries already there in the same transaction. Returns whether it was created
        (False: the store has one on exactly these fields) and how many entries it holds."""
        state = self._state(name)
        wanted = tuple(validation.field_names(fields, f"store {name!r} keyword index"))
        with self._writing(state):
            if state.keyword_fields is not None:
                if state.keyword_fields == wanted:
                    return False, self._storage_keyword_count(state)
                raise FailedPreconditionError(
                    f"store {name!r} has a keyword index on "
                    f"{', '.join(repr(f) for f in state.keyword_fields)} already; drop it with "
                    "DropKeywordIndex first to index other fields"
                )
            live = [s for s, i in enumerate(state.ids) if i is not None]
            rows = _keyword_rows_of(
                wanted,
                [state.ids[s] or "" for s in live],
                live,
                [state.metas[s] or {} for s in live],
            )
            with self._storage.transaction() as conn:
                Storage.create_keyword_index(conn, state.store_id, wanted)
                Storage.upsert_keywords(conn, state.store_id, rows)
            with state.lock.write():
                state.keyword_fields = wanted
        log.info("store %r: keyword index on %s created", name, ", ".join(wanted))
        return True, sum(1 for row in rows if row[2])

    def drop_keyword_index(self, name: str, *, missing_ok: bool = False) -> bool:
        """Drop the store's keyword index; NotFoundError if it has none unless missing_ok."""
        state = self._state(name)
        with self._writing(state):
            if state.keyword_fields is None:
                if missing_ok:
                    return False
                raise NotFoundError(
                    f"store {name!r} has no keyword index; set missing_ok to ignore that"
                )
            # Under the write lock: a keyword search in flight must not find its table gone.
            with state.lock.write():
                with self._storage.transaction() as conn:
                    Storage.drop_keyword_index(conn, state.store_id)
                state.keyword_fields = None
        return True

    def keyword_index_rows(self, name: str) -> dict[int, tuple[str, str]]:
        """The store's keyword index rows as committed: slot -> (id, text). For checks."""
        state = self._state(name)
        if state.keyword_fields is None:
            return {}
        return self._storage.keyword_rows(state.store_id)

    def _storage_keyword_count(self, state: StoreState) -> int:
        return len(self._storage.keyword_rows(state.store_id))

    # ---- reads -------------------------------------------------------------------------------

    def get_keys(
        self,
        name: str,
        ids: Sequence[str],
        *,
        include_vectors: bool = False,
        metadata: MetadataSelection = ALL_METADATA,
        expected_store_id: int = 0,
    ) -> tuple[list[Entry], list[str]]:
        """The entries found, in request order (each id once), and the ids not found."""
        wanted = validation.entry_ids(ids, name)
        metadata = validation.metadata_selection(name, metadata)
        with self._reading(name, expected_store_id) as state:
            found: list[Entry] = []
            missing: list[str] = []
            for entry_id in wanted:
                slot = state.slot_of.get(entry_id)
                if slot is None:
                    missing.append(entry_id)
                else:
                    found.append(state.entry(slot, include_vectors, metadata))
            return found, missing

    def get_by_predicate(
        self,
        name: str,
        filter: filters.Filter | None,
        *,
        limit: int = 100,
        page_token: str = "",
        include_vectors: bool = False,
        metadata: MetadataSelection = ALL_METADATA,
        expected_store_id: int = 0,
    ) -> Page:
        """Entries matching the filter (all if None) in id order, `limit` at a time."""
        validation.store_name(name)
        limit = validation.page_limit(name, limit)
        metadata = validation.metadata_selection(name, metadata)
        after = validation.decode_page_token(name, page_token)
        if filter is not None:
            filters.validate(filter, self.filter_limits)
        with self._reading(name, expected_store_id) as state:
            entries, more = state.page(filter, limit, after, include_vectors, metadata)
        token = validation.encode_page_token(entries[-1].id) if more and entries else ""
        return Page(entries=entries, next_page_token=token)

    def get_sim_n(
        self,
        name: str,
        query: np.ndarray | None,
        k: int,
        *,
        filter: filters.Filter | None = None,
        mode: SearchMode = SearchMode.AUTO,
        ef: int = 0,
        include_vectors: bool = False,
        metadata: MetadataSelection = ALL_METADATA,
        expected_store_id: int = 0,
        keywords: str = "",
        fusion: HybridOptions = DEFAULT_HYBRID,
    ) -> SearchResult:
        """The k entries most similar to `query` (among those matching `filter`), best first:
        exactly min(k, matching entries) of them.

        With `keywords` (the store needs a keyword index) the search is hybrid: the best
        `candidates` of each side (vector and BM25, both filtered) are fused as `fusion` says,
        and every match carries vector_score, keyword_score and hybrid_score. With keywords and
        no query vector (None or empty) it is keyword-only: min(k, entries that match the filter
        and at least one word), ordered by BM25."""
        state = self._state(name, expected_store_id)
        k, ef, mode = validation.search_args(name, k, ef, mode)
        metadata = validation.metadata_selection(name, metadata)
        has_vector = query is not None and np.size(query) > 0
        if not has_vector and not keywords:
            raise InvalidArgumentError(
                f"store {name!r}: GetSimN needs a query vector, keywords, or both"
            )
        q = None
        if has_vector:
            q = validation.vector(
                query,
                store=name,
                dimension=state.spec.dimension,
                metric=state.spec.metric,
                what="the query",
            )
        expression = hybrid.match_expression(keywords, name) if keywords else ""
        if filter is not None:
            filters.validate(filter, self.filter_limits)
        if not expression:
            assert q is not None
            with self._read_locked(state):
                return state.search(q, k, filter, mode, ef, include_vectors, metadata)
        options, depth = hybrid.hybrid_options(name, fusion, k)
        with self._read_locked(state):
            if state.keyword_fields is None:
                raise FailedPreconditionError(
                    f"store {name!r} has no keyword index; create one with CreateKeywordIndex "
                    "(the metadata fields holding its text) before searching by keywords"
                )
            mask = state.matching(filter) if filter is not None else None
            vector_side: list[tuple[int, float]] = []
            plan = "keyword"
            if q is not None:
                found = state.search(q, depth, filter, mode, ef, False, _NO_METADATA)
                vector_side = [(state.slot_of[m.id], m.score) for m in found.matches]
                plan = f"hybrid({found.plan})"
            keyword_side = self._keyword_candidates(state, expression, mask, depth)
            if q is None:
                return SearchResult(
                    matches=[
                        state.match(slot, score, include_vectors, metadata, keyword_score=score)
                        for slot, score in keyword_side[:k]
                    ],
                    plan=plan,
                )
            fused = hybrid.fuse(vector_side, keyword_side, options, lambda s: state.ids[s] or "")
            return SearchResult(
                matches=[_fused_match(state, f, include_vectors, metadata) for f in fused[:k]],
                plan=plan,
            )

    def _keyword_candidates(
        self, state: StoreState, expression: str, mask: np.ndarray | None, depth: int
    ) -> list[tuple[int, float]]:
        """The best `depth` keyword matches among the live entries (in `mask`), best first.
        Rows committed but not yet applied in memory (or replaced since) are skipped, so the
        answer agrees with the entries this search sees."""
        out: list[tuple[int, float]] = []
        with contextlib.closing(self._storage.keyword_search(state.store_id, expression)) as rows:
            for slot, entry_id, score in rows:
                if state.slot_of.get(entry_id) != slot:
                    continue
                if mask is not None and not mask[slot]:
                    continue
                out.append((slot, float(score)))
                if len(out) == depth:
                    break
        # Equal BM25 scores rank by id, as equal similarities do.
        out.sort(key=lambda item: (-item[1], state.ids[item[0]] or ""))
        return out

    # ---- lifecycle ---------------------------------------------------------------------------

    def observe(self, observer: StorageObserver) -> None:
        """Report commits and graph checkpoints to `observer` from now on."""
        self._observer = observer
        self._storage.observer = observer

    def flush(self) -> None:
        """Save every HNSW graph that changed since it was last saved, and record what is
        committed (see nachbar.db.recovery)."""
        self._save_graphs(lambda state: True)
        self._write_mark()

    def close(self) -> None:
        """Save graphs, close the database file and release the data directory."""
        with self._close_lock:
            if self._closed:
                return
            self._stop.set()
            for thread in self._threads:
                thread.join()
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

    def _start_background(self) -> None:
        with self._catalog_lock:
            pending = sorted(
                (s for s in self._stores.values() if s.hnsw_config is not None),
                key=lambda s: s.count,  # small stores first: most of them search fast soonest
            )
        for name, target in (
            ("nachbar-db-restore", lambda: self._restore_graphs(pending)),
            ("nachbar-db-checkpoint", self._keep_checkpoints),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            self._threads.append(thread)
            thread.start()

    def _restore_graphs(self, states: list[StoreState]) -> None:
        try:
            for state in states:
                if self._stop.is_set():
                    return
                try:
                    recovery.restore_graph(state, self._stop)
                except Exception as error:  # the store keeps serving with exact scans
                    log.exception("store %r: restoring its HNSW graph failed", state.spec.name)
                    with state.lock.write():
                        state.graph_broken = True
                        state.load_report = IndexLoadReport(
                            store=state.spec.name, action="failed", reason=str(error)
                        )
        finally:
            self._indexes_ready.set()

    def _keep_checkpoints(self) -> None:
        poll = recovery.MARK_INTERVAL_SECONDS
        if self._checkpoint_seconds:
            poll = min(poll, self._checkpoint_seconds)
        while not self._stop.is_set():
            self._wake.wait(poll)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._write_mark()
                self._save_graphs(self._checkpoint_due)
            except Exception:  # keep checkpointing; the next pass may work
                log.exception("background checkpoint failed")

    def _checkpoint_due(self, state: StoreState) -> bool:
        if self._checkpoint_changes and state.unsaved_changes >= self._checkpoint_changes:
            return True
        since = state.unsaved_since
        return bool(self._checkpoint_seconds) and (
            since is not None and time.monotonic() - since >= self._checkpoint_seconds
        )

    def _save_graphs(self, due: Callable[[StoreState], bool]) -> None:
        with self._save_lock:
            with self._catalog_lock:
                self._check_open()
                states = list(self._stores.values())
            for state in states:
                if not due(state):
                    continue
                try:
                    saved = recovery.save_graph(state, fsync=self.fsync != "off")
                except OSError as error:
                    # The graph is derived data: failing to save it costs a rebuild later,
                    # not data.
                    log.error("store %r: could not save its graph: %s", state.spec.name, error)
                    continue
                if saved is not None:
                    self._observer.graphs_saved(saved.seconds)
                    log.info(
                        "store %r: graph checkpoint of %d changes, %.1f MB in %.2f s "
                        "(writes held %.3f s)",
                        state.spec.name,
                        saved.changes,
                        saved.graph_bytes / 1e6,
                        saved.seconds,
                        saved.held_seconds,
                    )

    def _write_mark(self) -> None:
        """Record every store's committed change sequence, once it is durable."""
        with self._mark_lock:
            with self._catalog_lock:
                self._check_open()
                # state.seq moves after its commit, so this is a lower bound of what is
                # committed; the catalog lock orders it with CreateStore and DropStore.
                mark = recovery.CommittedMark(
                    store_seqs={s.store_id: s.seq for s in self._stores.values()},
                    max_store_id=self._max_store_id,
                )
            if mark == self._mark:
                return
            self._storage.sync()
            recovery.write_mark(self.data_dir / recovery.COMMITTED_FILE, mark, fsync=True)
            self._mark = mark

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


def _index_piece(state: StoreState, slots: np.ndarray, start: int, seq: int, written: int) -> int:
    """Insert the next GRAPH_PIECE_SECONDS' worth of a committed upsert's vectors into the
    graph (the caller holds the write lock) and return where the next piece starts. Searches
    get in between pieces; they see the entries at once, and until its piece is in, an entry
    is found by exact scans only. `seq` moves when the graph holds the whole write, so a graph
    saved in between is replayed from before this write after a restart."""
    piece = int(GRAPH_PIECE_SECONDS / max(state.seconds_per_insert, 1e-6))
    end = start + max(1, min(MAX_GRAPH_PIECE, piece))
    state.index_slots(slots[start:end])
    if end >= len(slots):
        state.finish_upsert(seq, written)
    return end


_NO_METADATA = MetadataSelection(include=False)


def _fused_match(
    state: StoreState,
    fused: hybrid.Fused[int],
    include_vectors: bool,
    metadata: MetadataSelection,
) -> Match:
    return state.match(
        fused.key,
        fused.score,
        include_vectors,
        metadata,
        vector_score=fused.vector_score,
        keyword_score=fused.keyword_score,
        hybrid_score=fused.score,
    )


def _keyword_rows(
    state: StoreState, ids: Sequence[str], slots: Sequence[int], metas: Sequence[Metadata]
) -> list[tuple[int, str, str]] | None:
    if state.keyword_fields is None:
        return None
    return _keyword_rows_of(state.keyword_fields, ids, slots, metas)


def _keyword_rows_of(
    fields: Sequence[str], ids: Sequence[str], slots: Sequence[int], metas: Sequence[Metadata]
) -> list[tuple[int, str, str]]:
    """(slot, id, text) keyword index rows; an empty text means "not in the index"."""
    return [
        (slot, entry_id, hybrid.document(meta, fields))
        for entry_id, slot, meta in zip(ids, slots, metas, strict=True)
    ]


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
        keyword_fields=state.keyword_fields,
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


def _in_background(work: Callable[[], None]) -> Callable[[], None]:
    """Start `work` in a thread; the returned function waits for it and raises its error."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as error:  # handed to the caller below
            errors.append(error)

    thread = threading.Thread(target=run, name="nachbar-db-check", daemon=True)
    thread.start()

    def join() -> None:
        thread.join()
        if errors:
            raise errors[0]

    return join


def _prefetched(chunks: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Iterate `chunks` in a thread, `depth` ahead: SQLite reads the next chunk (without the
    GIL) while Python decodes this one."""
    ready: queue.Queue[tuple[str, object]] = queue.Queue(depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                while not stop.is_set():
                    try:
                        ready.put(("chunk", chunk), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ready.put(("end", None))
        except BaseException as error:  # handed to the consumer
            ready.put(("error", error))

    thread = threading.Thread(target=produce, name="nachbar-db-read", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = ready.get()
            if kind == "end":
                return
            if kind == "error":
                assert isinstance(item, BaseException)
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        while thread.is_alive():
            with contextlib.suppress(queue.Empty):
                ready.get(timeout=0.1)
        thread.join()


def _check_committed(
    storage: Storage, rows: list[StoreRow], max_store_id: int, mark_path: Path
) -> None:
    if storage.created:
        if mark_path.exists():  # a database started afresh: the old record is meaningless
            log.warning("new database: ignoring %s, left from an earlier one", mark_path)
            mark_path.unlink()
        return
    mark = recovery.read_mark(mark_path)
    if mark is None:
        # A database from before the mark existed, or one whose mark was deleted on purpose.
        log.warning("no %s: opening without checking for lost commits", mark_path)
        return
    recovery.check_mark(
        mark,
        rows,
        max_store_id,
        db_path=storage.path,
        wal_path=storage.wal_path,
        mark_path=mark_path,
    )


def _load_stores(storage: Storage, rows: list[StoreRow], index_dir: Path) -> dict[str, StoreState]:
    stores: dict[str, StoreState] = {}
    for row in rows:
        files = GraphFiles(index_dir, row.store_id)
        state = StoreState(row.store_id, row.spec, row.seq, files)
        began = time.perf_counter()
        # Room for every row up front: growing the arrays chunk by chunk copies them each time.
        state.reserve(storage.entry_count(row.store_id))
        with contextlib.closing(storage.entries(row.store_id)) as chunks:
            state.load_rows(_prefetched(chunks), storage.path)
        state.warm(list(state.field_indexes.values()))
        if state.hnsw_config is not None:
            state.load_report = IndexLoadReport(store=row.spec.name, action="pending")
            state.graph_file_bytes = files.size()
        log.info(
            "store %r: %d entries loaded in %.1f s",
            row.spec.name,
            state.count,
            time.perf_counter() - began,
        )
        stores[row.spec.name] = state
    _remove_orphan_graphs(index_dir, {state.store_id: state for state in stores.values()})
    return stores


def _remove_orphan_graphs(index_dir: Path, stores: dict[int, StoreState]) -> None:
    """Delete graph files of dropped stores, half-written saves left by a crash and graphs
    their store's sidecar no longer names."""
    if not index_dir.is_dir():
        return
    for path in index_dir.iterdir():
        stem = path.name.split(".", 1)[0]
        owner = stem.removeprefix("store-")
        if path.name.endswith(".tmp") or not owner.isdigit() or int(owner) not in stores:
            log.info("removing stale graph file %s", path)
            path.unlink(missing_ok=True)
    for state in stores.values():
        state.files.remove_stale(keep=state.files.current_graph())
