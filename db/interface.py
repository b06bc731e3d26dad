"""The storage engine interface that nachbar-db serves: what every engine must do.

Two engines implement it:
- `nachbar.db.engine.Database`: the embedded default (hnswlib graphs, SQLite, one process).
- `nachbar.db.milvus_engine.MilvusEngine`: stores as Milvus collections (milvus-lite, a Milvus
  standalone server or a distributed cluster); nachbar-db keeps no state of its own.

Both give the same answers: the conformance suites under tests/db run over each. Where an engine
cannot (batch atomicity, size limits, durability), the README's engine table says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from nachbar.db.filters import Filter, FilterLimits
from nachbar.db.types import (
    ALL_METADATA,
    Entry,
    EntryBatch,
    HybridOptions,
    MetadataSelection,
    Page,
    SearchMode,
    SearchResult,
    StoreInfo,
    StoreSpec,
    UpsertResult,
)


class Engine(Protocol):
    """Named stores of vectors with typed metadata. Thread-safe: any number of threads may call
    any method at the same time. Errors are `nachbar.db.errors` classes.

    Every store has a `StoreInfo.store_id` that is never reused for its name. Every method on
    an existing store takes `expected_store_id`: when non-zero, StoreChangedError unless the
    name still denotes that store (it was dropped and created again)."""

    # How large a filter a request may send; every method taking a filter checks it first.
    filter_limits: FilterLimits

    def create_store(
        self, spec: StoreSpec, *, if_not_exists: bool = False
    ) -> tuple[StoreInfo, bool]:
        """Create a store; returns its info and whether it was created (False only when
        if_not_exists found a store with the same dimension and metric)."""
        ...

    def drop_store(
        self, name: str, *, missing_ok: bool = False, expected_store_id: int = 0
    ) -> bool: ...

    def list_stores(self) -> list[StoreInfo]:
        """Every store, by name."""
        ...

    def get_store(self, name: str) -> StoreInfo: ...

    def upsert(
        self, name: str, entries: Sequence[Entry] | EntryBatch, *, expected_store_id: int = 0
    ) -> UpsertResult:
        """Insert or replace entries by id (replace, not merge)."""
        ...

    def delete_keys(self, name: str, ids: Sequence[str], *, expected_store_id: int = 0) -> int:
        """Delete entries by id; returns how many existed."""
        ...

    def delete_by_predicate(self, name: str, filter: Filter, *, expected_store_id: int = 0) -> int:
        """Delete every entry matching the filter; returns how many."""
        ...

    def create_pred_index(self, name: str, fields: Sequence[str]) -> int:
        """Index metadata fields for filters; returns how many were not indexed before."""
        ...

    def drop_pred_index(self, name: str, fields: Sequence[str], *, missing_ok: bool = False) -> int:
        """Drop predicate indexes; NotFoundError for a field without one unless missing_ok."""
        ...

    def create_keyword_index(self, name: str, fields: Sequence[str]) -> tuple[bool, int]:
        """Give the store a keyword (BM25) index over metadata text fields, filled from its
        entries; returns whether it was created (False: one on these fields exists) and how
        many entries it holds. UnsupportedError on engines without keyword search."""
        ...

    def drop_keyword_index(self, name: str, *, missing_ok: bool = False) -> bool:
        """Drop the store's keyword index; NotFoundError if it has none unless missing_ok."""
        ...

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
        ...

    def get_by_predicate(
        self,
        name: str,
        filter: Filter | None,
        *,
        limit: int = 100,
        page_token: str = "",
        include_vectors: bool = False,
        metadata: MetadataSelection = ALL_METADATA,
        expected_store_id: int = 0,
    ) -> Page:
        """Entries matching the filter (all if None) in id order, `limit` at a time."""
        ...

    def get_sim_n(
        self,
        name: str,
        query: np.ndarray | None,
        k: int,
        *,
        filter: Filter | None = None,
        mode: SearchMode = SearchMode.AUTO,
        ef: int = 0,
        include_vectors: bool = False,
        metadata: MetadataSelection = ALL_METADATA,
        expected_store_id: int = 0,
        keywords: str = "",
        fusion: HybridOptions = ...,
    ) -> SearchResult:
        """The k entries most similar to `query` (among those matching `filter`), best first:
        exactly min(k, matching entries) of them, ties by id. With `keywords`, a hybrid search
        (or keyword-only without a query vector) fused as `fusion` says; UnsupportedError on
        engines without keyword search."""
        ...

    def flush(self) -> None:
        """Persist what the engine keeps in memory (a no-op where nothing is kept)."""
        ...

    def close(self) -> None: ...
