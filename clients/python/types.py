"""Plain result dataclasses returned by the clients."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from nachbar.client.values import Metadata


class Metric(StrEnum):
    COSINE = "cosine"
    L2 = "l2"
    INNER_PRODUCT = "ip"


class SearchMode(StrEnum):
    AUTO = "auto"
    EXACT = "exact"
    HNSW = "hnsw"


@dataclass(frozen=True)
class Hnsw:
    """HNSW index parameters; 0 takes the server default."""

    m: int = 0
    ef_construction: int = 0
    ef_search: int = 0


@dataclass(frozen=True)
class Exact:
    """Brute-force search: exact results, no index."""


Index = Hnsw | Exact


@dataclass(frozen=True)
class StoreInfo:
    name: str
    dimension: int
    metric: Metric
    index: Index
    predicate_indexes: tuple[str, ...]
    count: int
    bytes_used: int
    store_metadata: dict[str, str] = field(default_factory=dict)
    # Never reused: a store dropped and created again under its name gets a new id.
    store_id: int = 0
    # Metadata fields of the store's keyword index; None: it has none.
    keyword_fields: tuple[str, ...] | None = None


@dataclass(frozen=True)
class CreatedStoreInfo(StoreInfo):
    """What `create_store` returns: the store, and whether this call created it (False when
    `if_not_exists` found it there already)."""

    created: bool = True


@dataclass(frozen=True)
class Entry:
    id: str
    metadata: Metadata
    vector: list[float] | None = None
    # Fields the entry has that exclude_metadata_keys / max_metadata_value_bytes left out.
    omitted_metadata_keys: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Match:
    id: str
    # Higher is more similar (see Metric).
    similarity: float
    metadata: Metadata
    vector: list[float] | None = None
    omitted_metadata_keys: list[str] = field(default_factory=list)
    # Hybrid and keyword-only searches: each side's own score (None where that side did not
    # find the entry) and the fused score (= similarity) that ordered a hybrid search.
    vector_score: float | None = None
    keyword_score: float | None = None
    hybrid_score: float | None = None

    @property
    def score(self) -> float:
        """The former name of `similarity`, kept for existing callers."""
        return self.similarity


@dataclass(frozen=True)
class Hybrid:
    """How a hybrid search fuses its vector and keyword sides. fusion "blend" (the default):
    min-max normalized scores, vector_weight for the vector side (None: 0.5); "rrf":
    reciprocal rank fusion with rrf_k (0: 60). candidates: per side, 0 means max(k, 100)."""

    fusion: str = "blend"
    rrf_k: int = 0
    vector_weight: float | None = None
    candidates: int = 0


@dataclass(frozen=True)
class KeywordIndexCreated:
    # False: the store had a keyword index on these fields already.
    created: bool
    # Entries in the index (those with text in its fields).
    indexed: int


@dataclass(frozen=True)
class SearchResult:
    matches: list[Match]
    plan: str


@dataclass(frozen=True)
class Page:
    entries: list[Entry]
    next_page_token: str


@dataclass(frozen=True)
class UpsertResult:
    inserted: int
    updated: int
    ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class GetKeyResult:
    entries: list[Entry]
    missing_ids: list[str]


@dataclass(frozen=True)
class DBInfo:
    version: str
    store_count: int
    fsync_policy: str
    max_message_bytes: int
    uptime_seconds: float


@dataclass(frozen=True)
class AIStoreInfo:
    name: str
    query_model: str
    index_model: str
    store_original: bool
    db_store: StoreInfo


@dataclass(frozen=True)
class CreatedAIStoreInfo(AIStoreInfo):
    """What `create_store` returns: the store, and whether this call created it (False when
    `if_not_exists` found it there already)."""

    created: bool = True


@dataclass(frozen=True)
class AIMatch:
    id: str
    similarity: float
    metadata: Metadata
    rerank_score: float | None = None
    original: str | bytes | None = None
    # Set when the rerank fused its scores with the similarities; it ordered the matches.
    fused_score: float | None = None
    # Hybrid and keyword-only searches, as on Match: `similarity` is then the hybrid (or
    # keyword) score, these each side's own (None where that side did not find the entry).
    vector_score: float | None = None
    keyword_score: float | None = None
    hybrid_score: float | None = None


@dataclass(frozen=True)
class AISearchResult:
    matches: list[AIMatch]
    plan: str


@dataclass(frozen=True)
class AIEntry:
    id: str
    metadata: Metadata
    original: str | bytes | None = None


@dataclass(frozen=True)
class AIPage:
    entries: list[AIEntry]
    next_page_token: str


@dataclass(frozen=True)
class AIGetKeyResult:
    entries: list[AIEntry]
    missing_ids: list[str]


@dataclass(frozen=True)
class RerankResult:
    index: int
    score: float


@dataclass(frozen=True)
class ModelInfo:
    name: str
    kind: str
    modality: str
    dimension: int
    space: str
    max_tokens: int
    image_size: int
    source: str
    available: bool
    loaded: bool
    precision: str
    description: str


@dataclass(frozen=True)
class AIInfo:
    version: str
    loaded_models: list[str]
    db_address: str
    db_reachable: bool
    max_message_bytes: int


@dataclass(frozen=True)
class TrainMetrics:
    """MRR@10 and recall@10 over the held-out examples."""

    mrr_at_10: float
    recall_at_10: float
    queries: int


@dataclass(frozen=True)
class TrainedInfo:
    """An adapter or re-scorer of a store: "queued", "training", "ready" or "failed"."""

    store: str
    name: str
    state: str
    progress: float
    message: str
    before: TrainMetrics
    after: TrainMetrics
    # The held-out metric improved on the frozen baseline: use it only when True.
    recommended: bool
    train_examples: int
    held_out_examples: int
    epochs: int
    train_seconds: float
    dimension: int
    space: str
    corpus_size: int
    weight_bytes: int
    created_at: float
