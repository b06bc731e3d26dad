"""The SQLite file that is the durable source of truth of every store.

Schema (format 1):

    meta(key, value)                     format version
    stores(store_id, name, dimension, metric, index_kind, m, ef_construction, ef_search,
           store_metadata, seq)          one row per store; seq = its last change sequence
    pred_indexes(store_id, field)        fields with a predicate index
    entries(store_id, id, slot, seq, vector, metadata, checksum)
    keyword_indexes(store_id, fields)    stores with a keyword index, its fields (JSON list)
    keywords_<store_id>(rowid, id, body) that store's FTS5 keyword index: rowid = the entry's
                                         slot, body = its text (nachbar.db.hybrid)

`store_id` is never reused (AUTOINCREMENT), so files named after it cannot be mistaken for those
of a dropped store with the same name. Every write request is one `BEGIN IMMEDIATE` transaction
that also bumps the store's `seq`; an entry row records the `seq` that last wrote it, which is how
a saved HNSW graph finds the entries written after it. A store's keyword index rows are
written in the same transaction as its entry rows, so the two never disagree, after a crash
too. (`keyword_indexes` came after format 1 was fixed: opening an older file adds it.)
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from nachbar.db import hybrid
from nachbar.db.errors import DataCorruptionError, DBError, ResourceExhaustedError
from nachbar.db.observe import NO_OBSERVER, StorageObserver
from nachbar.db.types import ExactConfig, FsyncPolicy, HnswConfig, Metric, StoreSpec

FORMAT = 1
PAGE_SIZE = 8192  # of new database files
_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}

_SCHEMA = """
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE stores (
    store_id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    dimension INTEGER NOT NULL,
    metric TEXT NOT NULL,
    index_kind TEXT NOT NULL,
    m INTEGER NOT NULL,
    ef_construction INTEGER NOT NULL,
    ef_search INTEGER NOT NULL,
    store_metadata TEXT NOT NULL,
    seq INTEGER NOT NULL
);
CREATE TABLE pred_indexes (
    store_id INTEGER NOT NULL,
    field TEXT NOT NULL,
    PRIMARY KEY (store_id, field)
);
CREATE TABLE entries (
    store_id INTEGER NOT NULL,
    id TEXT NOT NULL,
    slot INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    vector BLOB NOT NULL,
    metadata TEXT NOT NULL,
    checksum INTEGER NOT NULL,
    UNIQUE (store_id, id)
);
CREATE TABLE IF NOT EXISTS keyword_indexes (
    store_id INTEGER PRIMARY KEY,
    fields TEXT NOT NULL
);
"""
_KEYWORD_SCHEMA = _SCHEMA[_SCHEMA.index("CREATE TABLE IF NOT EXISTS keyword_indexes") :]

_UPSERT = """
INSERT INTO entries (store_id, id, slot, seq, vector, metadata, checksum)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (store_id, id) DO UPDATE SET
    slot = excluded.slot, seq = excluded.seq, vector = excluded.vector,
    metadata = excluded.metadata, checksum = excluded.checksum
"""


@dataclass(frozen=True)
class StoreRow:
    store_id: int
    spec: StoreSpec
    seq: int


@dataclass(frozen=True)
class EntryColumns:
    """A chunk of a store's entry rows, column by column (cheaper to check and decode in bulk
    than one object per row)."""

    ids: list[str]
    slots: list[int]
    seqs: list[int]
    vectors: list[bytes]
    metadata: list[str]
    checksums: list[int]


class Storage:
    """One SQLite connection, shared by all threads and serialized by a lock.

    SQLite allows one writer at a time anyway, and reads are served from memory, so a single
    connection loses nothing.
    """

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self.created = False  # True when this open created the schema (a new database)
        self._conn = connection
        self._lock = threading.Lock()
        self.observer: StorageObserver = NO_OBSERVER
        # Keyword searches read on a connection of their own (WAL readers never wait for a
        # commit); opened on first use.
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, *, fsync: FsyncPolicy, marker: Path) -> Storage:
        """Open (or create) the database file; DataCorruptionError if it is damaged (see also
        `quick_check`).

        `marker` exists once a database was created in this directory: from then on a missing or
        empty database file is an error, never a fresh start.
        """
        if marker.exists() and (not path.exists() or path.stat().st_size == 0):
            raise _lost(path, marker)
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        except sqlite3.Error as error:
            raise _translate(error, path) from error
        storage = cls(path, conn)
        try:
            storage._setup(fsync=fsync, marker=marker)
        except BaseException:
            conn.close()
            raise
        return storage

    def _setup(self, *, fsync: FsyncPolicy, marker: Path) -> None:
        with self._errors():
            # Only a new file takes it (before WAL mode writes the header); existing databases
            # keep theirs. An entry row of a 384-d store is ~1.6 KB: 4 KB pages hold two and
            # leave a quarter empty, 8 KB pages hold five (the file shrinks by a fifth).
            self._conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise DBError(f"{self.path}: SQLite refused WAL mode (got {mode!r})")
            self._conn.execute(f"PRAGMA synchronous={_SYNCHRONOUS[fsync]}")
            tables = {
                row[0]
                for row in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if not tables:
                if marker.exists():
                    raise _lost(self.path, marker)
                self._create_schema()
                self.created = True
                return
            row = None
            if "meta" in tables:
                row = self._conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
            if row is None:
                raise DataCorruptionError(
                    f"{self.path} is an SQLite file but not a nachbar database (no format "
                    "record); point the server at another data directory"
                )
            if row[0] != str(FORMAT):
                raise DBError(
                    f"{self.path} has storage format {row[0]}, this version reads format "
                    f"{FORMAT}; run a matching nachbar version"
                )
            if "keyword_indexes" not in tables:
                self._conn.execute(_KEYWORD_SCHEMA)

    def quick_check(self) -> None:
        """SQLite's structural check of the whole file; DataCorruptionError if it finds damage.
        Runs on a connection of its own, so it can run while the stores load (SQLite does the
        work without Python's GIL)."""
        try:
            conn = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, timeout=30)
        except sqlite3.Error as error:
            raise _translate(error, self.path) from error
        try:
            with self._errors():
                problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
        finally:
            conn.close()
        if problems != ["ok"]:
            summary = "; ".join(" ".join(str(p).split()) for p in problems[:3])[:300]
            raise DataCorruptionError(
                f"database file {self.path} is corrupt ({summary}); restore it from a backup"
            )

    def _create_schema(self) -> None:
        with self.transaction() as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO meta (key, value) VALUES ('format', ?)", (str(FORMAT),))

    def close(self) -> None:
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        with self._lock:
            self._conn.close()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as error:
            raise _translate(error, self.path) from error

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: committed when the block ends, rolled back if it raises."""
        with self._lock, self._errors():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            started = time.perf_counter()
            self._conn.execute("COMMIT")
            self.observer.committed(time.perf_counter() - started)

    # Reads (only at open: afterwards everything is served from memory).

    def stores(self) -> list[StoreRow]:
        with self._lock, self._errors():
            rows = self._conn.execute(
                "SELECT store_id, name, dimension, metric, index_kind, m, ef_construction, "
                "ef_search, store_metadata, seq FROM stores ORDER BY name"
            ).fetchall()
            indexed: dict[int, list[str]] = {}
            for store_id, field_name in self._conn.execute(
                "SELECT store_id, field FROM pred_indexes ORDER BY field"
            ):
                indexed.setdefault(store_id, []).append(field_name)
            keyword_fields = dict(
                self._conn.execute("SELECT store_id, fields FROM keyword_indexes").fetchall()
            )
        out = []
        for store_id, name, dim, metric, kind, m, efc, efs, meta_json, seq in rows:
            try:
                index: HnswConfig | ExactConfig = (
                    ExactConfig() if kind == "exact" else HnswConfig(m, efc, efs)
                )
                spec = StoreSpec(
                    name=name,
                    dimension=dim,
                    metric=Metric(metric),
                    index=index,
                    predicate_indexes=tuple(indexed.get(store_id, ())),
                    store_metadata=json.loads(meta_json),
                    keyword_fields=(
                        tuple(json.loads(keyword_fields[store_id]))
                        if store_id in keyword_fields
                        else None
                    ),
                )
            except ValueError as error:
                raise DataCorruptionError(
                    f"database file {self.path}: the record of store {name!r} is damaged "
                    f"({error}); restore the file from a backup"
                ) from None
            out.append(StoreRow(store_id=store_id, spec=spec, seq=seq))
        return out

    def entries(self, store_id: int, chunk_rows: int = 8192) -> Generator[EntryColumns, None, None]:
        """Every entry row of the store, `chunk_rows` at a time (bounded memory on top of the
        store's own). Holds the connection until exhausted or closed."""
        with self._lock, self._errors():
            cursor = self._conn.execute(
                "SELECT id, slot, seq, vector, metadata, checksum FROM entries WHERE store_id = ?",
                (store_id,),
            )
            try:
                while rows := cursor.fetchmany(chunk_rows):
                    columns = [list(column) for column in zip(*rows, strict=True)]
                    yield EntryColumns(*columns)
            finally:
                cursor.close()

    def entry_count(self, store_id: int) -> int:
        """How many entries the store has (counted on the (store_id, id) index, not the rows)."""
        with self._lock, self._errors():
            row = self._conn.execute(
                "SELECT count(*) FROM entries WHERE store_id = ?", (store_id,)
            ).fetchone()
        return int(row[0])

    def max_store_id(self) -> int:
        """The highest store id ever handed out (AUTOINCREMENT keeps it after drops)."""
        with self._lock, self._errors():
            row = self._conn.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'stores'"
            ).fetchone()
        return int(row[0]) if row is not None else 0

    def keyword_search(
        self, store_id: int, expression: str
    ) -> Generator[tuple[int, str, float], None, None]:
        """(slot, id, score) of the store's keyword index rows matching an FTS5 expression
        (made by nachbar.db.hybrid.match_expression), best first; score = -bm25, higher is
        better. Reads the latest commit; holds the reader connection until closed."""
        with self._reader_lock, self._errors():
            if self._reader is None:
                self._reader = sqlite3.connect(
                    f"{self.path.as_uri()}?mode=ro",
                    uri=True,
                    isolation_level=None,
                    check_same_thread=False,
                    timeout=30,
                )
            table = keyword_table(store_id)
            cursor = self._reader.execute(
                f"SELECT rowid, id, -bm25({table}) FROM {table} WHERE {table} MATCH ? "
                "ORDER BY rank",
                (expression,),
            )
            try:
                while rows := cursor.fetchmany(256):
                    yield from rows
            finally:
                cursor.close()

    def keyword_rows(self, store_id: int) -> dict[int, tuple[str, str]]:
        """Every row of the store's keyword index: slot -> (id, text). For checks and tests."""
        table = keyword_table(store_id)
        with self._lock, self._errors():
            rows = self._conn.execute(f"SELECT rowid, id, body FROM {table}").fetchall()
        return {slot: (entry_id, body) for slot, entry_id, body in rows}

    @property
    def wal_path(self) -> Path:
        return self.path.with_name(self.path.name + "-wal")

    def sync(self) -> None:
        """fsync the write-ahead log and the database file, so that every commit made so far
        survives power loss whatever the fsync policy (which only governs each commit)."""
        for path in (self.wal_path, self.path):
            try:
                handle = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # no WAL right now: everything is in the database file
            try:
                os.fsync(handle)
            finally:
                os.close(handle)

    # Writes: each takes the connection inside `transaction()`.

    @staticmethod
    def insert_store(conn: sqlite3.Connection, spec: StoreSpec) -> int:
        index = spec.index
        hnsw = index if isinstance(index, HnswConfig) else HnswConfig()
        cursor = conn.execute(
            "INSERT INTO stores (name, dimension, metric, index_kind, m, ef_construction, "
            "ef_search, store_metadata, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
            (
                spec.name,
                spec.dimension,
                spec.metric.value,
                "exact" if isinstance(index, ExactConfig) else "hnsw",
                hnsw.m,
                hnsw.ef_construction,
                hnsw.ef_search,
                json.dumps(dict(spec.store_metadata), sort_keys=True),
            ),
        )
        store_id = cursor.lastrowid
        assert store_id is not None
        conn.executemany(
            "INSERT INTO pred_indexes (store_id, field) VALUES (?, ?)",
            [(store_id, f) for f in spec.predicate_indexes],
        )
        if spec.keyword_fields is not None:
            Storage.create_keyword_index(conn, store_id, spec.keyword_fields)
        return store_id

    @staticmethod
    def delete_store(conn: sqlite3.Connection, store_id: int) -> None:
        Storage.drop_keyword_index(conn, store_id)
        conn.execute("DELETE FROM entries WHERE store_id = ?", (store_id,))
        conn.execute("DELETE FROM pred_indexes WHERE store_id = ?", (store_id,))
        conn.execute("DELETE FROM stores WHERE store_id = ?", (store_id,))

    @staticmethod
    def set_seq(conn: sqlite3.Connection, store_id: int, seq: int) -> None:
        conn.execute("UPDATE stores SET seq = ? WHERE store_id = ?", (seq, store_id))

    @staticmethod
    def upsert_entries(
        conn: sqlite3.Connection,
        store_id: int,
        seq: int,
        rows: Iterable[tuple[str, int, bytes | memoryview, str, int]],
    ) -> None:
        """rows: (id, slot, vector blob, metadata json, checksum), read one at a time."""
        conn.executemany(
            _UPSERT, ((store_id, i, slot, seq, vec, meta, crc) for i, slot, vec, meta, crc in rows)
        )

    @staticmethod
    def delete_entries(conn: sqlite3.Connection, store_id: int, ids: Sequence[str]) -> None:
        conn.executemany(
            "DELETE FROM entries WHERE store_id = ? AND id = ?", [(store_id, i) for i in ids]
        )

    @staticmethod
    def add_pred_indexes(conn: sqlite3.Connection, store_id: int, fields: Sequence[str]) -> None:
        conn.executemany(
            "INSERT INTO pred_indexes (store_id, field) VALUES (?, ?)",
            [(store_id, f) for f in fields],
        )

    @staticmethod
    def drop_pred_indexes(conn: sqlite3.Connection, store_id: int, fields: Sequence[str]) -> None:
        conn.executemany(
            "DELETE FROM pred_indexes WHERE store_id = ? AND field = ?",
            [(store_id, f) for f in fields],
        )

    @staticmethod
    def create_keyword_index(
        conn: sqlite3.Connection, store_id: int, fields: Sequence[str]
    ) -> None:
        conn.execute(
            f"CREATE VIRTUAL TABLE {keyword_table(store_id)} USING fts5("
            f"id UNINDEXED, body, tokenize='{hybrid.TOKENIZER}')"
        )
        conn.execute(
            "INSERT INTO keyword_indexes (store_id, fields) VALUES (?, ?)",
            (store_id, json.dumps(list(fields))),
        )

    @staticmethod
    def drop_keyword_index(conn: sqlite3.Connection, store_id: int) -> None:
        conn.execute(f"DROP TABLE IF EXISTS {keyword_table(store_id)}")
        conn.execute("DELETE FROM keyword_indexes WHERE store_id = ?", (store_id,))

    @staticmethod
    def upsert_keywords(
        conn: sqlite3.Connection, store_id: int, rows: Sequence[tuple[int, str, str]]
    ) -> None:
        """rows: (slot, id, text); an empty text removes the slot's row (nothing to find)."""
        table = keyword_table(store_id)
        conn.executemany(
            f"INSERT OR REPLACE INTO {table} (rowid, id, body) VALUES (?, ?, ?)",
            [row for row in rows if row[2]],
        )
        conn.executemany(
            f"DELETE FROM {table} WHERE rowid = ?", [(slot,) for slot, _, text in rows if not text]
        )

    @staticmethod
    def delete_keywords(conn: sqlite3.Connection, store_id: int, slots: Sequence[int]) -> None:
        conn.executemany(
            f"DELETE FROM {keyword_table(store_id)} WHERE rowid = ?", [(s,) for s in slots]
        )


def keyword_table(store_id: int) -> str:
    """The FTS5 table of a store's keyword index (an int in the name: never injected text)."""
    return f"keywords_{int(store_id)}"


def _lost(path: Path, marker: Path) -> DataCorruptionError:
    return DataCorruptionError(
        f"database file {path} is missing or empty, but {marker} shows this data directory "
        "held data; restore the file from a backup, or move the directory away to start with "
        "an empty database"
    )


def _translate(error: sqlite3.Error, path: Path) -> DBError:
    text = str(error)
    lowered = text.lower()
    if "not a database" in lowered or "malformed" in lowered or "corrupt" in lowered:
        return DataCorruptionError(
            f"database file {path} is corrupt or truncated ({text}); restore it from a backup"
        )
    if "disk is full" in lowered or "out of memory" in lowered:
        return ResourceExhaustedError(
            f"cannot write {path}: {text}; free disk space and retry the request"
        )
    if "readonly" in lowered or "unable to open" in lowered:
        return DBError(
            f"cannot open or write {path}: {text}; check the data directory's permissions"
        )
    return DBError(f"database file {path}: {text}")
