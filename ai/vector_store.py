"""The vector store nachbar-ai talks to: the small protocol the pipeline needs, nothing more.

nachbar-ai keeps no vectors of its own. Every store it serves lives in a vector store: nachbar-db
over gRPC in production (`nachbar.server.ai_store`), an in-process one in the pipeline's unit
tests. Filters, store creation options and the store's own description of a store are that
store's types: the pipeline passes them through untouched, so it never converts what it does
not read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeAlias, TypeVar

import numpy as np
import numpy.typing as npt

from nachbar.ai.errors import AIError

MetadataValue: TypeAlias = str | int | float | bool | bytes | list[str]
Metadata: TypeAlias = dict[str, MetadataValue]
FloatArray: TypeAlias = npt.NDArray[np.float32]

#: The store's filter expressions (nachbar-db: common.proto's Filter).
FilterT = TypeVar("FilterT")
#: The store's creation options: metric, index, field indexes (nachbar-db: a CreateStoreRequest).
OptionsT = TypeVar("OptionsT")
#: The store's full description of one store: count, metric, index... (nachbar-db: StoreInfo).
InfoT = TypeVar("InfoT")
FilterT_contra = TypeVar("FilterT_contra", contravariant=True)
OptionsT_contra = TypeVar("OptionsT_contra", contravariant=True)


class StoreNotFoundError(AIError):
    """Raised by a vector store for a store name it does not hold."""


class StoreChangedError(AIError):
    """Raised by a vector store when a request's `expected_store_id` is not the id of the store
    the name holds now: the store was dropped and created again."""


@dataclass(frozen=True)
class StoreRecord(Generic[InfoT]):
    """What nachbar-ai reads of a store, and the store's own description to pass back."""

    name: str
    # Never reused by the vector store: a store dropped and created again gets a new id, so
    # what nachbar-ai knows about a store is cached under its id.
    store_id: int
    dimension: int
    # Opaque string attributes set at creation: where nachbar-ai keeps its model bindings.
    store_metadata: Mapping[str, str]
    info: InfoT


@dataclass(frozen=True)
class VectorEntry:
    id: str
    vector: FloatArray
    metadata: Metadata


@dataclass(frozen=True)
class StoredEntry:
    id: str
    metadata: Metadata


@dataclass(frozen=True)
class StoredMatch:
    id: str
    # Higher is more similar (the metric's similarity, see the glossary); in hybrid and
    # keyword-only searches the score that ordered them (hybrid or keyword score).
    similarity: float
    metadata: Metadata
    # Hybrid and keyword-only searches: each side's own score (None where that side did not
    # find the entry), and the fused one.
    vector_score: float | None = None
    keyword_score: float | None = None
    hybrid_score: float | None = None


@dataclass(frozen=True)
class KeywordSearch:
    """The keyword side of a hybrid (or keyword-only) search and how it is fused with the
    vector side: fusion "blend" (vector_weight, None: the default) or "rrf" (rrf_k, 0: the
    default); candidates per side, 0: the default."""

    text: str
    fusion: str = "blend"
    rrf_k: int = 0
    vector_weight: float | None = None
    candidates: int = 0


@dataclass(frozen=True)
class Hits:
    """Best first; `plan` names how the store searched ("exact" or "hnsw")."""

    matches: list[StoredMatch]
    plan: str


@dataclass(frozen=True)
class Explore:
    """More ways to ask a search, passed through to the store: MMR diversity and recommend by
    example entries (nachbar-db's GetSimN fields of the same names)."""

    mmr_lambda: float | None = None  # None: no MMR
    mmr_candidates: int = 0
    positive_ids: tuple[str, ...] = ()
    negative_ids: tuple[str, ...] = ()
    strategy: str = "average_vector"  # or "best_score"
    recommend_candidates: int = 0

    @property
    def has_examples(self) -> bool:
        return bool(self.positive_ids or self.negative_ids)


NO_EXPLORE = Explore()
RECOMMEND_STRATEGIES = ("average_vector", "best_score")


@dataclass(frozen=True)
class StoredPage:
    entries: list[StoredEntry]
    # Empty when there are no more pages.
    next_page_token: str


@dataclass(frozen=True)
class WriteCounts:
    inserted: int
    updated: int


class VectorStore(Protocol[FilterT_contra, OptionsT_contra, InfoT]):
    """Named stores of (id, vector, metadata) entries. A store name that does not exist raises
    StoreNotFoundError; other errors are the implementation's own.

    Every call on an existing store takes `expected_store_id`: when non-zero, the call applies
    only if the name still denotes the store with that id, and raises StoreChangedError (having
    changed nothing) otherwise."""

    def create_store(
        self,
        name: str,
        dimension: int,
        store_metadata: Mapping[str, str],
        options: OptionsT_contra,
        *,
        if_not_exists: bool,
    ) -> tuple[StoreRecord[InfoT], bool]:
        """The store and whether it was created (False: `if_not_exists` found it there)."""
        ...

    def get_store(self, name: str) -> StoreRecord[InfoT]: ...

    def list_stores(self) -> list[StoreRecord[InfoT]]: ...

    def drop_store(self, name: str, *, missing_ok: bool, expected_store_id: int) -> bool: ...

    def upsert(
        self, store: str, entries: Sequence[VectorEntry], *, expected_store_id: int
    ) -> WriteCounts:
        """Insert or replace by id, all or nothing."""
        ...

    def search(
        self,
        store: str,
        vector: FloatArray | None,
        k: int,
        *,
        filter: FilterT_contra | None,
        mode: str,
        ef: int,
        expected_store_id: int,
        explore: Explore = NO_EXPLORE,
        keywords: KeywordSearch | None = None,
    ) -> Hits:
        """The k entries most similar to `vector`; mode is "auto", "exact" or "hnsw". With
        `explore`, diversified and/or by example entries (then `vector` may be None). With
        `keywords` a hybrid search, keyword-only when `vector` is None (not with `explore`)."""
        ...

    def get(
        self, store: str, ids: Sequence[str], *, expected_store_id: int
    ) -> tuple[list[StoredEntry], list[str]]:
        """The entries found, in request order, and the ids not found."""
        ...

    def get_by_filter(
        self,
        store: str,
        filter: FilterT_contra | None,
        *,
        limit: int,
        page_token: str,
        expected_store_id: int,
    ) -> StoredPage: ...

    def delete(self, store: str, ids: Sequence[str], *, expected_store_id: int) -> int: ...

    def delete_by_filter(
        self, store: str, filter: FilterT_contra | None, *, expected_store_id: int
    ) -> int: ...
