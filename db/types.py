"""Value types of the nachbar.db API: store specs, entries, search results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, TypeAlias

import numpy as np

# bool is listed apart from int on purpose: `True` is an int to Python but its own type here.
MetadataValue: TypeAlias = str | int | float | bool | bytes | list[str]
Metadata: TypeAlias = dict[str, MetadataValue]

# How hard a commit pushes data to disk: "full" survives power loss, "normal" survives a killed
# process, "off" leaves it to the operating system.
FsyncPolicy: TypeAlias = Literal["full", "normal", "off"]


class Metric(StrEnum):
    """Similarity of two vectors. Every score is "higher is more similar"."""

    COSINE = "cosine"  # score = cosine similarity
    L2 = "l2"  # score = -(squared Euclidean distance)
    INNER_PRODUCT = "ip"  # score = dot product (common.proto's METRIC_INNER_PRODUCT)


class HybridFusion(StrEnum):
    """How a hybrid search merges its vector and keyword results (nachbar.db.hybrid)."""

    BLEND = "blend"  # min-max normalized scores, weighted (the default)
    RRF = "rrf"  # reciprocal rank fusion


@dataclass(frozen=True)
class HybridOptions:
    """How GetSimN fuses vector and keyword results; zero values take the defaults."""

    fusion: HybridFusion = HybridFusion.BLEND
    rrf_k: int = 0  # 0: 60
    vector_weight: float = 0.5  # blend only: the vector side's share, 0..1
    candidates: int = 0  # per side; 0: max(k, 100)


class SearchMode(StrEnum):
    AUTO = "auto"  # the planner picks exact or HNSW
    EXACT = "exact"
    HNSW = "hnsw"


@dataclass(frozen=True)
class HnswConfig:
    m: int = 16
    ef_construction: int = 200
    ef_search: int = 64


@dataclass(frozen=True)
class ExactConfig:
    """Brute-force search over every vector; nothing to build."""


IndexConfig: TypeAlias = HnswConfig | ExactConfig


@dataclass(frozen=True)
class StoreSpec:
    name: str
    dimension: int
    metric: Metric = Metric.COSINE
    index: IndexConfig = field(default_factory=HnswConfig)
    predicate_indexes: tuple[str, ...] = ()
    store_metadata: Mapping[str, str] = field(default_factory=dict)
    # Metadata fields of the store's keyword (FTS5) index; None: the store has none.
    keyword_fields: tuple[str, ...] | None = None


@dataclass(frozen=True)
class StoreInfo:
    name: str
    dimension: int
    metric: Metric
    index: IndexConfig
    predicate_indexes: tuple[str, ...]
    store_metadata: Mapping[str, str]
    count: int
    bytes_used: int
    # Never reused: a store dropped and created again under its name gets a new id.
    store_id: int = 0
    keyword_fields: tuple[str, ...] | None = None  # as on StoreSpec

    @property
    def spec(self) -> StoreSpec:
        return StoreSpec(
            name=self.name,
            dimension=self.dimension,
            metric=self.metric,
            index=self.index,
            predicate_indexes=self.predicate_indexes,
            store_metadata=self.store_metadata,
            keyword_fields=self.keyword_fields,
        )


@dataclass(frozen=True)
class MetadataSelection:
    """Which metadata a read returns. The default, everything, is what reads always returned;
    stores that keep large values (nachbar-ai keeps originals under reserved keys) can leave
    them out."""

    include: bool = True  # False: no metadata at all
    exclude_keys: frozenset[str] = frozenset()
    # Leave out str, bytes and string-list values larger than this many bytes (UTF-8 for
    # text); 0: no limit.
    max_value_bytes: int = 0

    @property
    def everything(self) -> bool:
        return self.include and not self.exclude_keys and not self.max_value_bytes


ALL_METADATA = MetadataSelection()


def _same_vector(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is b
    return bool(np.array_equal(a, b))


# Entries and matches hold numpy arrays, whose `==` is elementwise, so they define equality
# themselves instead of taking the dataclass one.
@dataclass(frozen=True, eq=False)
class Entry:
    id: str
    vector: np.ndarray | None
    metadata: Metadata = field(default_factory=dict)
    # Fields the entry has that a read's MetadataSelection left out (never set on writes).
    omitted_keys: tuple[str, ...] = ()
    # On reads: the bytes of the entry's row in the database file (id, vector, metadata as
    # JSON), which bounds the size of any encoding of it; 0 when unknown. Not part of equality.
    stored_bytes: int = 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Entry):
            return NotImplemented
        return (
            self.id == other.id
            and self.metadata == other.metadata
            and self.omitted_keys == other.omitted_keys
            and _same_vector(self.vector, other.vector)
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class EntryBatch:
    """Entries to upsert as columns: ids, one (n, dimension) float32 matrix, metadata. The same
    as a list of Entry, without an array per vector (how the server hands over a request)."""

    ids: Sequence[str]
    vectors: np.ndarray
    metadata: Sequence[Mapping[str, MetadataValue]]


@dataclass(frozen=True, eq=False)
class Match:
    id: str
    score: float
    metadata: Metadata
    vector: np.ndarray | None = None
    omitted_keys: tuple[str, ...] = ()  # as on Entry
    stored_bytes: int = 0  # as on Entry
    # Hybrid and keyword-only searches: each side's own score, None where that side did not
    # find the entry among its candidates (or did not run); `score` is then the fused score
    # (hybrid) or the keyword score (keyword only). None in vector-only searches.
    vector_score: float | None = None
    keyword_score: float | None = None
    hybrid_score: float | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Match):
            return NotImplemented
        return (
            self.id == other.id
            and self.score == other.score
            and self.metadata == other.metadata
            and self.omitted_keys == other.omitted_keys
            and _same_vector(self.vector, other.vector)
        )

    __hash__ = None  # type: ignore[assignment]


class RecommendStrategy(StrEnum):
    """How GetSimN turns positive and negative example entries into results."""

    # One query vector: 2 x mean(positives and the query) - mean(negatives), then a plain search.
    AVERAGE_VECTOR = "average_vector"
    # Each candidate scored by its best similarity to a positive (or the query) against its best
    # similarity to a negative.
    BEST_SCORE = "best_score"


@dataclass(frozen=True)
class MmrOptions:
    """Maximal marginal relevance: pick k from a pool of the `candidates` best, each time the
    one maximizing lambda_ x sim(query, d) - (1 - lambda_) x max sim(d, already picked)."""

    lambda_: float
    candidates: int = 0  # 0: max(4 x k, 20)


@dataclass(frozen=True)
class RecommendOptions:
    """Search by example entries (by id) instead of, or together with, a query vector."""

    positive_ids: tuple[str, ...] = ()
    negative_ids: tuple[str, ...] = ()
    strategy: RecommendStrategy = RecommendStrategy.AVERAGE_VECTOR
    candidates: int = 0  # best_score's pool per positive example; 0: max(4 x k, 20)


@dataclass(frozen=True)
class SearchResult:
    matches: list[Match]
    plan: str  # "exact" or "hnsw": the plan that produced the matches


@dataclass(frozen=True)
class UpsertResult:
    inserted: int
    updated: int


@dataclass(frozen=True)
class Page:
    entries: list[Entry]
    next_page_token: str  # empty on the last page


@dataclass(frozen=True)
class IndexLoadReport:
    """How a store's HNSW graph came back when the database opened."""

    store: str
    # "none": exact stores have no graph; "pending": being restored in the background (searches
    # scan exactly meanwhile); "failed": restoring failed (logged), searches keep scanning.
    action: Literal["loaded", "rebuilt", "none", "pending", "failed"]
    replayed: int = 0  # entries written after the saved graph and applied on top of it
    reason: str = ""  # why the graph was rebuilt
