"""What nachbar-ai does with a request, as plain Python: the pipeline behind every AIService RPC.

The gRPC servicer (nachbar.server.ai_service) only converts messages to the values here and
back. The pipeline reads a store's model bindings, embeds inputs, checks that models pair,
picks rerank candidates, keeps or strips original inputs and merges rerank scores, over any
`VectorStore` (nachbar-db over gRPC in production, an in-process store in unit tests).

Each rule is checked in one place: model kinds, empty inputs and truncation policies in the
model layer (nachbar.ai.models, nachbar.ai.registry), embedding spaces in the registry, `k`
and rerank candidates here.

Bindings are cached by store id (nachbar.ai.bindings.BindingCache), so a request costs no
extra round trip to read them. Each call on a store carries the id its cached binding belongs
to; if the store was dropped and created again meanwhile (by another nachbar-ai, say), the
vector store refuses the call, the binding is read again and the request runs once more with
it, embedding anew: a stale binding is never used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from nachbar.ai import bindings
from nachbar.ai.bindings import BindingCache, Bound, StoreBinding
from nachbar.ai.errors import InvalidInputError
from nachbar.ai.fusion import Fusion, fuse
from nachbar.ai.limits import InputLimits
from nachbar.ai.models import ModelManager, ModelStatus
from nachbar.ai.registry import Role, require_same_space
from nachbar.ai.vector_store import (
    NO_EXPLORE,
    RECOMMEND_STRATEGIES,
    Explore,
    FilterT,
    FloatArray,
    InfoT,
    KeywordSearch,
    Metadata,
    OptionsT,
    StoreChangedError,
    StoredEntry,
    StoredMatch,
    StoreNotFoundError,
    StoreRecord,
    VectorEntry,
    VectorStore,
)

log = logging.getLogger("nachbar.ai.pipeline")

#: nachbar-db's limit on a keyword query; a query text used as keywords is cut to it (a long
#: query's first words), explicit keywords are not.
KEYWORD_TEXT_BYTES = 4096
#: Vector candidates a rerank reads when the request does not say: max(k, this).
DEFAULT_RERANK_CANDIDATES = 20

Payload = str | bytes
T = TypeVar("T")


@dataclass(frozen=True)
class AIStore(Generic[InfoT]):
    """A store nachbar-ai serves: its model bindings and the vector store's description."""

    name: str
    binding: StoreBinding
    info: InfoT


@dataclass(frozen=True)
class UpsertItem:
    payload: Payload
    # Empty: derived from the payload's content, so sending it again is an update.
    id: str = ""
    metadata: Metadata = field(default_factory=dict)


@dataclass(frozen=True)
class UpsertOutcome:
    inserted: int
    updated: int
    # The id of each item, in request order.
    ids: list[str]


@dataclass(frozen=True)
class RerankSpec:
    """Rerank the vector candidates with a reranker (cross-encoder or late interaction)."""

    model: str
    # How many vector candidates to rerank; 0: max(k, DEFAULT_RERANK_CANDIDATES).
    candidates: int = 0
    # Where each candidate's document text is read: a metadata field, or (None) the stored
    # original text.
    metadata_field: str | None = None
    sigmoid: bool = False
    # Order by the reranker alone, or by its scores fused with the similarities.
    fusion: Fusion = Fusion.NONE
    # A re-scorer of the store (nachbar.ai.tailoring) instead of `model`: scores stored
    # vectors, so it needs no text.
    rescorer: str = ""


@dataclass(frozen=True)
class HybridSpec:
    """Search keywords too (the store needs a keyword index) and fuse them with the vector
    search. keywords: the keyword text; empty: the query text (image queries must give it).
    keyword_only: no vector search at all."""

    keywords: str = ""
    keyword_only: bool = False
    fusion: str = "blend"
    rrf_k: int = 0
    vector_weight: float | None = None
    candidates: int = 0


@dataclass(frozen=True)
class SearchRequest(Generic[FilterT]):
    query: Payload | None  # None: positive examples in `explore` stand for it
    k: int
    filter: FilterT | None = None
    truncation: str = "error"
    rerank: RerankSpec | None = None
    mode: str = "auto"
    ef: int = 0
    # Embed the query with this model (of the store's space) instead of the store's.
    query_model: str = ""
    # MMR and recommend by examples, done by the store.
    explore: Explore = NO_EXPLORE
    hybrid: HybridSpec | None = None
    # Map the query vector with this adapter of the store before searching.
    adapter: str = ""


@dataclass(frozen=True)
class Hit:
    id: str
    similarity: float
    metadata: Metadata
    original: Payload | None = None
    # Set only when the search reranked.
    rerank_score: float | None = None
    # Set only when the rerank fused: the score that ordered the hits.
    fused_score: float | None = None
    # Hybrid and keyword-only searches (see StoredMatch); `similarity` is then the score
    # that ordered the store's search.
    vector_score: float | None = None
    keyword_score: float | None = None
    hybrid_score: float | None = None


@dataclass(frozen=True)
class SearchOutcome:
    # Best first: by fused score when the rerank fused, by rerank score when reranked, else by
    # similarity.
    hits: list[Hit]
    plan: str


@dataclass(frozen=True)
class AIEntry:
    id: str
    metadata: Metadata
    original: Payload | None = None


@dataclass(frozen=True)
class AIPage:
    entries: list[AIEntry]
    next_page_token: str


@dataclass(frozen=True)
class Embeddings:
    vectors: FloatArray
    dimension: int


@dataclass(frozen=True)
class Ranked:
    # Index into the documents as sent.
    index: int
    score: float


class SearchTailoring(Protocol):
    """Adapters and re-scorers at query time (nachbar.ai.tailoring.Tailoring)."""

    def adapt(self, store: str, bound: Bound, name: str, query: FloatArray) -> FloatArray: ...

    def rescore(
        self, store: str, bound: Bound, name: str, query: FloatArray, ids: Sequence[str]
    ) -> dict[str, float]: ...

    def forget_store(self, store: str) -> None: ...


class AIPipeline(Generic[FilterT, OptionsT, InfoT]):
    """Thread-safe when the models and the vector store are."""

    #: Set when adapters and re-scorers are served (they need a durable home).
    tailoring: SearchTailoring | None = None

    def __init__(
        self,
        models: ModelManager,
        store: VectorStore[FilterT, OptionsT, InfoT],
        binding_cache: BindingCache | None = None,
    ) -> None:
        self.models = models
        self.store = store
        self.binding_cache = binding_cache if binding_cache is not None else BindingCache()

    # -- stores ---------------------------------------------------------------------------------

    def create_store(
        self,
        name: str,
        *,
        query_model: str,
        index_model: str = "",
        store_original: bool,
        options: OptionsT,
        if_not_exists: bool = False,
    ) -> tuple[AIStore[InfoT], bool]:
        """A store bound to a query and an index model of one space (the index model defaults
        to the query model); whether it was created."""
        if not query_model:
            raise InvalidInputError("query_model is required; `nachbar models list` shows them")
        query, index = require_same_space(
            query_model, index_model or query_model, roles=("query_model", "index_model")
        )
        binding = StoreBinding(query.name, index.name, store_original, index.space)
        record, created = self.store.create_store(
            name,
            index.dimension,
            binding.to_store_metadata(),
            options,
            if_not_exists=if_not_exists,
        )
        existing = StoreBinding.from_store_metadata(record.store_metadata)
        if not created and existing != binding:
            raise InvalidInputError(
                f"store {name!r} already exists with other models or options ({existing}); "
                "drop it first or use another name"
            )
        self.binding_cache.put(name, Bound(record.store_id, binding))
        return AIStore(record.name, binding, record.info), created

    def drop_store(self, name: str, *, missing_ok: bool = False) -> bool:
        """Drop a store nachbar-ai created; stores created on the vector store directly are
        refused, with or without `missing_ok` (which only forgives a store that is gone)."""
        try:
            dropped = self._on_store(
                name,
                lambda bound: self.store.drop_store(
                    name, missing_ok=missing_ok, expected_store_id=bound.store_id
                ),
            )
        except StoreNotFoundError:
            if missing_ok:
                return False
            raise
        self.binding_cache.forget(name)
        if dropped and self.tailoring is not None:
            try:
                self.tailoring.forget_store(name)
            except Exception:  # left over, they are refused: trained for another store id
                log.warning("could not drop what was trained for store %r", name, exc_info=True)
        return dropped

    def list_stores(self) -> list[AIStore[InfoT]]:
        """Stores created through nachbar-ai; other stores of the vector store are left out."""
        out = []
        for record in self.store.list_stores():
            binding = StoreBinding.from_store_metadata(record.store_metadata)
            if binding is not None:
                self.binding_cache.put(record.name, Bound(record.store_id, binding))
                out.append(AIStore(record.name, binding, record.info))
        return out

    def get_store(self, name: str) -> AIStore[InfoT]:
        """Read afresh: the description (count, size...) changes with every write."""
        record, bound = self._read(name)
        return AIStore(record.name, bound.binding, record.info)

    # -- data -----------------------------------------------------------------------------------

    def upsert(
        self, store: str, items: Sequence[UpsertItem], *, truncation: str = "error"
    ) -> UpsertOutcome:
        """Embed each item with the store's index model and store it (with its original input
        when the store keeps originals). All or nothing."""
        for i, item in enumerate(items):
            bindings.check_user_metadata(item.metadata, f"entries[{i}]")
        payloads = [item.payload for item in items]
        ids = [item.id or bindings.content_id(item.payload) for item in items]

        def run(bound: Bound) -> UpsertOutcome:
            binding = bound.binding
            vectors = self.models.embed(
                binding.index_model, payloads, truncation=truncation, role=Role.DOCUMENT
            )
            entries = [
                VectorEntry(
                    entry_id,
                    vector,
                    bindings.with_original(item.metadata, item.payload, binding.store_original),
                )
                for entry_id, vector, item in zip(ids, vectors, items, strict=True)
            ]
            counts = self.store.upsert(store, entries, expected_store_id=bound.store_id)
            return UpsertOutcome(counts.inserted, counts.updated, ids)

        return self._on_store(store, run)

    def search(self, store: str, request: SearchRequest[FilterT]) -> SearchOutcome:
        """The k entries most similar to the query, embedded with the store's query model (or
        the request's override of the same space); optionally reranked by a cross-encoder or a
        late-interaction model. Texts get their model's prompt for their role (query here,
        document on upsert). `explore` diversifies (MMR) or searches by example entries; the
        store does both on stored vectors, so examples work across modalities."""
        if request.k < 1:
            raise InvalidInputError(f"k must be at least 1 (got {request.k})")
        fetch = request.k
        if (request.adapter or (request.rerank and request.rerank.rescorer)) and (
            self.tailoring is None
        ):
            raise InvalidInputError("this server does not serve adapters or re-scorers")
        if request.rerank is not None and request.rerank.rescorer and request.rerank.model:
            raise InvalidInputError(
                "rerank names both a model and a re-scorer; set one of `model` and `rescorer`"
            )
        if request.adapter and request.query is None:
            raise InvalidInputError(
                "an adapter maps the query vector; add a query or drop the adapter"
            )
        explore = request.explore
        if explore.strategy not in RECOMMEND_STRATEGIES:
            raise InvalidInputError(
                f"unknown recommend strategy {explore.strategy!r}; use "
                f"{' or '.join(RECOMMEND_STRATEGIES)}"
            )
        if request.query is None and not explore.positive_ids:
            raise InvalidInputError(
                "give a query or positive example ids (or both); negative examples alone say "
                "nothing about what to find"
            )
        if request.rerank is not None and explore.mmr_lambda is not None:
            raise InvalidInputError(
                "MMR does not combine with rerank: the reranker's scores and the similarities "
                "between results are on different scales; drop mmr or rerank"
            )
        if request.rerank is not None and request.query is None:
            raise InvalidInputError(
                "rerank needs a text query to compare the candidates with; add a query or drop "
                "rerank"
            )
        if request.rerank is not None:
            fetch = request.rerank.candidates or max(request.k, DEFAULT_RERANK_CANDIDATES)
            if fetch < request.k:
                raise InvalidInputError(
                    f"rerank.candidates ({fetch}) must be at least k ({request.k})"
                )
            most = self.models.limits.max_inputs
            if fetch > most:  # refused before searching, not after
                raise InvalidInputError(
                    f"{fetch} rerank candidates, over this server's limit of {most} documents "
                    "per request (--max-inputs-per-request); ask for fewer candidates (and k)"
                )

        keyword_only = request.hybrid is not None and request.hybrid.keyword_only
        if keyword_only and (request.adapter or (request.rerank and request.rerank.rescorer)):
            raise InvalidInputError(
                "a keyword-only search has no query vector for an adapter or a re-scorer; drop "
                "keyword_only (a hybrid search keeps the vector side) or the adapter/re-scorer"
            )
        keywords = _keyword_search(request)

        def run(bound: Bound) -> SearchOutcome:
            binding = bound.binding
            query_model = binding.query_model
            if request.query_model:
                override, _ = require_same_space(
                    request.query_model,
                    binding.index_model,
                    roles=("query_model_override", f"store {store!r}'s index model"),
                )
                query_model = override.name
            vector = None
            if request.query is not None and (
                request.hybrid is None or not request.hybrid.keyword_only
            ):
                vector = self.models.embed(
                    query_model, [request.query], truncation=request.truncation, role=Role.QUERY
                )[0]
            search_vector = vector
            if request.adapter and self.tailoring is not None and vector is not None:
                search_vector = self.tailoring.adapt(store, bound, request.adapter, vector)
            found = self.store.search(
                store,
                search_vector,
                fetch,
                filter=request.filter,
                mode=request.mode,
                ef=request.ef,
                expected_store_id=bound.store_id,
                explore=explore,
                keywords=keywords,
            )
            hits = [_hit(m) for m in found.matches]
            if request.rerank is not None and request.rerank.rescorer:
                assert vector is not None  # rerank needs a query (checked above)
                hits = self._rescore(store, bound, request.rerank, vector, hits)
            elif request.rerank is not None:
                hits = self._rerank(store, binding, request, request.rerank, hits)
            return SearchOutcome(hits[: request.k], found.plan)

        return self._on_store(store, run)

    def get(self, store: str, ids: Sequence[str]) -> tuple[list[AIEntry], list[str]]:
        found, missing = self._on_store(
            store, lambda bound: self.store.get(store, ids, expected_store_id=bound.store_id)
        )
        return [_entry(e) for e in found], missing

    def get_by_filter(
        self, store: str, filter: FilterT | None, *, limit: int = 0, page_token: str = ""
    ) -> AIPage:
        page = self._on_store(
            store,
            lambda bound: self.store.get_by_filter(
                store, filter, limit=limit, page_token=page_token, expected_store_id=bound.store_id
            ),
        )
        return AIPage([_entry(e) for e in page.entries], page.next_page_token)

    def delete(self, store: str, ids: Sequence[str]) -> int:
        return self._on_store(
            store, lambda bound: self.store.delete(store, ids, expected_store_id=bound.store_id)
        )

    def delete_by_filter(self, store: str, filter: FilterT | None) -> int:
        return self._on_store(
            store,
            lambda bound: self.store.delete_by_filter(
                store, filter, expected_store_id=bound.store_id
            ),
        )

    # -- models ---------------------------------------------------------------------------------

    def embed(
        self, model: str, payloads: Sequence[Payload], *, truncation: str = "error"
    ) -> Embeddings:
        vectors = self.models.embed(model, payloads, truncation=truncation)
        return Embeddings(vectors, vectors.shape[1])

    def rerank(
        self,
        model: str,
        query: str,
        documents: Sequence[str],
        *,
        top_k: int = 0,
        truncation: str = "error",
        sigmoid: bool = False,
    ) -> list[Ranked]:
        """Documents best first by cross-encoder score; the best `top_k` (0: all)."""
        scores = self.models.rerank(model, query, documents, truncation=truncation, sigmoid=sigmoid)
        order = _best_first(scores)
        if top_k:
            order = order[:top_k]
        return [Ranked(int(i), float(scores[i])) for i in order]

    def list_models(self) -> list[ModelStatus]:
        return self.models.list_models()

    # -- tailoring (nachbar.ai.tailoring's EmbeddingSource) --------------------------------------

    def bound(self, store: str) -> Bound:
        """The store's binding, read afresh."""
        return self._read(store)[1]

    def input_limits(self) -> InputLimits:
        return self.models.limits

    def embed_queries(self, store: str, bound: Bound, payloads: Sequence[Payload]) -> FloatArray:
        """Queries embedded as GetSimN embeds them, in batches the server allows; texts over
        the model's limit are cut to it."""
        most = self.models.limits.max_inputs
        parts = [
            self.models.embed(
                bound.binding.query_model,
                payloads[start : start + most],
                truncation="truncate",
                role=Role.QUERY,
            )
            for start in range(0, len(payloads), most)
        ]
        out: FloatArray = np.concatenate(parts).astype(np.float32)
        return out

    # -- internals ------------------------------------------------------------------------------

    def _rescore(
        self,
        store: str,
        bound: Bound,
        rerank: RerankSpec,
        query: FloatArray,
        hits: list[Hit],
    ) -> list[Hit]:
        assert self.tailoring is not None
        scored = self.tailoring.rescore(store, bound, rerank.rescorer, query, [h.id for h in hits])
        # Entries deleted since the search have no stored vector to score.
        hits = [hit for hit in hits if hit.id in scored]
        if not hits:
            return hits
        scores = np.asarray([scored[hit.id] for hit in hits], dtype=np.float32)
        fused = fuse(rerank.fusion, [hit.similarity for hit in hits], scores)
        if fused is None:
            out = [replace(h, rerank_score=float(s)) for h, s in zip(hits, scores, strict=True)]
            return [out[i] for i in _best_first(scores)]
        out = [
            replace(h, rerank_score=float(s), fused_score=float(f))
            for h, s, f in zip(hits, scores, fused, strict=True)
        ]
        return [out[i] for i in _best_first(fused)]

    def _read(self, name: str) -> tuple[StoreRecord[InfoT], Bound]:
        """The store as the vector store describes it now; its binding goes into the cache."""
        self.binding_cache.forget(name)
        record = self.store.get_store(name)
        bound = Bound(record.store_id, _binding_of(record))
        self.binding_cache.put(name, bound)
        return record, bound

    def _on_store(self, name: str, action: Callable[[Bound], T]) -> T:
        """Run `action` with the store's binding, cached or read; when the store turns out to
        have been dropped and created again since it was cached, read it and run once more."""
        try:
            bound = self.binding_cache.get(name) or self._read(name)[1]
            try:
                return action(bound)
            except StoreChangedError:
                return action(self._read(name)[1])
        except StoreNotFoundError:
            self.binding_cache.forget(name)
            raise

    def _rerank(
        self,
        store: str,
        binding: StoreBinding,
        request: SearchRequest[FilterT],
        rerank: RerankSpec,
        hits: list[Hit],
    ) -> list[Hit]:
        if not isinstance(request.query, str):
            raise InvalidInputError(
                "reranking needs a text query: rerankers read (query text, document text) "
                "pairs; drop `rerank` for image queries"
            )
        if hits and rerank.metadata_field is None and not binding.store_original:
            raise InvalidInputError(
                f"store {store!r} does not keep original inputs (store_original=false), so "
                "there is no text to rerank; rerank from a metadata field instead"
            )
        documents = [_rerank_text(store, hit, rerank.metadata_field) for hit in hits]
        if not documents:
            return hits
        scores = self.models.rerank(
            rerank.model,
            request.query,
            documents,
            truncation=request.truncation,
            sigmoid=rerank.sigmoid,
        )
        fused = fuse(rerank.fusion, [hit.similarity for hit in hits], scores)
        if fused is None:
            scored = [
                replace(hit, rerank_score=float(score))
                for hit, score in zip(hits, scores, strict=True)
            ]
            return [scored[i] for i in _best_first(scores)]
        scored = [
            replace(hit, rerank_score=float(score), fused_score=float(total))
            for hit, score, total in zip(hits, scores, fused, strict=True)
        ]
        return [scored[i] for i in _best_first(fused)]


def _binding_of(record: StoreRecord[InfoT]) -> StoreBinding:
    binding = StoreBinding.from_store_metadata(record.store_metadata)
    if binding is None:
        raise InvalidInputError(
            f"store {record.name!r} was created on nachbar-db directly and has no models; "
            "use the db service for it, or create a store through nachbar-ai"
        )
    return binding


def _hit(match: StoredMatch) -> Hit:
    user, original = bindings.split_original(match.metadata)
    return Hit(
        match.id,
        match.similarity,
        user,
        original,
        vector_score=match.vector_score,
        keyword_score=match.keyword_score,
        hybrid_score=match.hybrid_score,
    )


def _keyword_search(request: SearchRequest[FilterT]) -> KeywordSearch | None:
    """The keyword side of a hybrid request: its keywords, else the query text."""
    hybrid = request.hybrid
    if hybrid is None:
        return None
    text = hybrid.keywords
    if not text:
        if not isinstance(request.query, str):
            raise InvalidInputError(
                "a hybrid or keyword-only search with an image query needs keywords: give the "
                "words to search for (for example in a caption field the keyword index covers)"
            )
        text = request.query.encode("utf-8")[:KEYWORD_TEXT_BYTES].decode("utf-8", "ignore")
    return KeywordSearch(
        text,
        fusion=hybrid.fusion,
        rrf_k=hybrid.rrf_k,
        vector_weight=hybrid.vector_weight,
        candidates=hybrid.candidates,
    )


def _entry(entry: StoredEntry) -> AIEntry:
    user, original = bindings.split_original(entry.metadata)
    return AIEntry(entry.id, user, original)


def _rerank_text(store: str, hit: Hit, metadata_field: str | None) -> str:
    if metadata_field is not None:
        value = hit.metadata.get(metadata_field)
        where = f"metadata field {metadata_field!r}"
    else:
        value = hit.original if isinstance(hit.original, str) else None
        where = "stored original text"
    if not isinstance(value, str) or not value:
        raise InvalidInputError(
            f"entry {hit.id!r} in store {store!r} has no text in its {where}; rerank needs text "
            "for every candidate (choose another text source)"
        )
    return value


def _best_first(scores: npt.NDArray[np.floating[Any]]) -> list[int]:
    order: list[int] = np.argsort(-np.asarray(scores), kind="stable").tolist()
    return order
