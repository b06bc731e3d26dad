"""Protobuf messages of AIService <-> the values of the nachbar-ai pipeline (nachbar.ai.pipeline).

Conversions only: what a request means is decided by the pipeline and the model layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from nachbar.ai.adapters import RankingMetrics
from nachbar.ai.bindings import ORIGINAL_TEXT
from nachbar.ai.fusion import Fusion
from nachbar.ai.models import ModelStatus
from nachbar.ai.pipeline import (
    AIEntry,
    AIStore,
    HybridSpec,
    Payload,
    RerankSpec,
    SearchOutcome,
    SearchRequest,
    UpsertItem,
)
from nachbar.ai.tailoring import State, TrainedInfo, TrainExample, TrainOptions
from nachbar.ai.vector_store import Explore, Metadata
from nachbar.server.ai_store import DBStoreOptions
from nachbar.server.errors import RequestError
from nachbar.v1 import ai_pb2, common_pb2, db_pb2
from nachbar.v1.codec import (
    RERANK_FUSION_NAMES,
    SEARCH_MODE_NAMES,
    TRUNCATION_NAMES,
    fill_metadata,
    metadata_from_proto,
)

MODALITY = {"text": ai_pb2.MODALITY_TEXT, "image": ai_pb2.MODALITY_IMAGE}
KIND = {
    "embedding": ai_pb2.MODEL_KIND_EMBEDDING,
    "cross_encoder": ai_pb2.MODEL_KIND_CROSS_ENCODER,
    "late_interaction": ai_pb2.MODEL_KIND_LATE_INTERACTION,
}


def truncation(value: ai_pb2.TruncationPolicy.ValueType) -> str:
    # An unknown number passes on as text for the model layer to refuse, naming the choices.
    return TRUNCATION_NAMES.get(value, str(value))


def search_mode(value: common_pb2.SearchMode.ValueType) -> str:
    try:
        return SEARCH_MODE_NAMES[value]
    except KeyError:
        raise RequestError(f"unknown search mode {value}; use auto, exact or hnsw") from None


def rerank_fusion(value: ai_pb2.RerankFusion.ValueType) -> Fusion:
    try:
        return Fusion(RERANK_FUSION_NAMES[value])
    except KeyError:
        raise RequestError(
            f"unknown rerank fusion {value}; use RERANK_FUSION_NONE, _RRF or _BLEND"
        ) from None


def payload(item: ai_pb2.Input, where: str) -> Payload:
    kind = item.WhichOneof("kind")
    if kind is None:
        raise RequestError(f"{where}: input is empty; set text or image")
    value: Payload = getattr(item, kind)
    return value


def set_input(target: ai_pb2.Input, value: Payload) -> None:
    if isinstance(value, str):
        target.text = value
    else:
        target.image = value


def metadata(proto: Mapping[str, common_pb2.MetadataValue], where: str) -> Metadata:
    try:
        return metadata_from_proto(proto)
    except ValueError as error:
        raise RequestError(f"{where}: metadata: {error}") from None


def optional_filter(request: object) -> common_pb2.Filter | None:
    if not request.HasField("filter"):  # type: ignore[attr-defined]
        return None
    found: common_pb2.Filter = request.filter  # type: ignore[attr-defined]
    return found


def store_options(request: ai_pb2.CreateStoreRequest) -> DBStoreOptions:
    keyword_fields = None
    if request.HasField("keyword_index"):
        keyword_fields = tuple(request.keyword_index.fields)
        if not keyword_fields:
            if not request.store_original:
                raise RequestError(
                    "keyword_index without fields indexes the stored original text, so it "
                    "needs store_original; set it, or name metadata fields to index (e.g. a "
                    "caption)"
                )
            keyword_fields = (ORIGINAL_TEXT,)
    return DBStoreOptions(
        metric=request.metric or common_pb2.METRIC_COSINE,
        index=request.index,
        predicate_indexes=tuple(request.predicate_indexes),
        keyword_fields=keyword_fields,
    )


def store_info(store: AIStore[db_pb2.StoreInfo]) -> ai_pb2.AIStoreInfo:
    return ai_pb2.AIStoreInfo(
        name=store.name,
        query_model=store.binding.query_model,
        index_model=store.binding.index_model,
        store_original=store.binding.store_original,
        db_store=store.info,
    )


def upsert_items(request: ai_pb2.UpsertRequest) -> list[UpsertItem]:
    return [
        UpsertItem(
            payload(entry.input, f"entries[{i}]"),
            entry.id,
            metadata(entry.metadata, f"entries[{i}]"),
        )
        for i, entry in enumerate(request.entries)
    ]


RECOMMEND_STRATEGIES = {
    db_pb2.RECOMMEND_STRATEGY_UNSPECIFIED: "average_vector",
    db_pb2.RECOMMEND_STRATEGY_AVERAGE_VECTOR: "average_vector",
    db_pb2.RECOMMEND_STRATEGY_BEST_SCORE: "best_score",
}


def recommend_strategy(value: db_pb2.RecommendStrategy.ValueType) -> str:
    try:
        return RECOMMEND_STRATEGIES[value]
    except KeyError:
        raise RequestError(
            f"unknown recommend strategy {value}; use average_vector or best_score"
        ) from None


def search_request(request: ai_pb2.GetSimNRequest) -> SearchRequest[common_pb2.Filter]:
    rerank = None
    if request.HasField("rerank"):
        options = request.rerank
        source = options.WhichOneof("text_source")
        rerank = RerankSpec(
            model=options.model,
            candidates=options.candidates,
            metadata_field=options.metadata_field if source == "metadata_field" else None,
            sigmoid=options.sigmoid,
            fusion=rerank_fusion(options.fusion),
            rescorer=options.rescorer,
        )
    explore = Explore(
        mmr_lambda=request.mmr_lambda if request.HasField("mmr_lambda") else None,
        mmr_candidates=request.mmr_candidates,
        positive_ids=tuple(request.positive_ids),
        negative_ids=tuple(request.negative_ids),
        strategy=recommend_strategy(request.recommend_strategy),
        recommend_candidates=request.recommend_candidates,
    )
    return SearchRequest(
        query=payload(request.query, "query") if request.HasField("query") else None,
        explore=explore,
        k=request.k,
        filter=optional_filter(request),
        truncation=truncation(request.truncation),
        rerank=rerank,
        mode=search_mode(request.mode),
        ef=request.ef,
        query_model=request.query_model_override,
        hybrid=hybrid_spec(request),
        adapter=request.adapter,
    )


HYBRID_FUSION_NAMES = {db_pb2.HYBRID_FUSION_RRF: "rrf", db_pb2.HYBRID_FUSION_BLEND: "blend"}


def hybrid_spec(request: ai_pb2.GetSimNRequest) -> HybridSpec | None:
    """Hybrid when the request sets hybrid options, keywords or keyword_only."""
    if not (request.HasField("hybrid") or request.keywords or request.keyword_only):
        return None
    options = request.hybrid
    fusion = HYBRID_FUSION_NAMES.get(options.fusion)
    if fusion is None:
        raise RequestError(f"unknown hybrid fusion {options.fusion}; use rrf or blend")
    return HybridSpec(
        keywords=request.keywords,
        keyword_only=request.keyword_only,
        fusion=fusion,
        rrf_k=options.rrf_k,
        vector_weight=options.vector_weight if options.HasField("vector_weight") else None,
        candidates=options.candidates,
    )


def search_response(outcome: SearchOutcome) -> ai_pb2.GetSimNResponse:
    out = ai_pb2.GetSimNResponse(plan=outcome.plan)
    add = out.matches.add  # in place: building each match first would copy it once more
    for hit in outcome.hits:
        match = add(id=hit.id, similarity=hit.similarity)
        fill_metadata(match.metadata, hit.metadata)
        if hit.rerank_score is not None:
            match.rerank_score = hit.rerank_score
        if hit.fused_score is not None:
            match.fused_score = hit.fused_score
        if hit.vector_score is not None:
            match.vector_score = hit.vector_score
        if hit.keyword_score is not None:
            match.keyword_score = hit.keyword_score
        if hit.hybrid_score is not None:
            match.hybrid_score = hit.hybrid_score
        if hit.original is not None:
            set_input(match.original, hit.original)
    return out


def entry(value: AIEntry) -> ai_pb2.AIEntry:
    out = ai_pb2.AIEntry(id=value.id)
    fill_metadata(out.metadata, value.metadata)
    if value.original is not None:
        set_input(out.original, value.original)
    return out


def model_info(status: ModelStatus) -> ai_pb2.ModelInfo:
    spec = status.spec
    return ai_pb2.ModelInfo(
        name=spec.name,
        kind=KIND[spec.kind],
        modality=MODALITY[spec.modality],
        dimension=spec.dimension,
        space=spec.space,
        max_tokens=spec.max_tokens,
        image_size=spec.image_size,
        source=spec.source_label,
        available=status.available,
        loaded=status.loaded,
        precision=str(spec.precision),
        description=spec.description,
    )


TRAIN_STATES = {
    State.QUEUED: ai_pb2.TRAIN_STATE_QUEUED,
    State.TRAINING: ai_pb2.TRAIN_STATE_TRAINING,
    State.READY: ai_pb2.TRAIN_STATE_READY,
    State.FAILED: ai_pb2.TRAIN_STATE_FAILED,
}


def train_examples(examples: Sequence[ai_pb2.TrainExample]) -> list[TrainExample]:
    return [
        TrainExample(
            payload(example.query, f"examples[{i}].query"),
            tuple(example.relevant_ids),
            tuple(example.irrelevant_ids),
        )
        for i, example in enumerate(examples)
    ]


def train_options(options: ai_pb2.TrainOptions) -> TrainOptions:
    return TrainOptions(
        epochs=options.epochs,
        learning_rate=options.learning_rate,
        held_out=options.held_out,
        seed=options.seed,
        identity_weight=options.identity_weight,
    )


def _metrics(value: RankingMetrics) -> ai_pb2.TrainMetrics:
    return ai_pb2.TrainMetrics(
        mrr_at_10=value.mrr, recall_at_10=value.recall, queries=value.queries
    )


def trained_info(info: TrainedInfo) -> ai_pb2.TrainedInfo:
    return ai_pb2.TrainedInfo(
        store=info.store,
        name=info.name,
        state=TRAIN_STATES[info.state],
        progress=info.progress,
        message=info.message,
        before=_metrics(info.before),
        after=_metrics(info.after),
        recommended=info.recommended,
        train_examples=info.train_examples,
        held_out_examples=info.held_out_examples,
        epochs=info.epochs,
        train_seconds=info.train_seconds,
        dimension=info.dimension,
        space=info.space,
        corpus_size=info.corpus_size,
        weight_bytes=info.weight_bytes,
        created_at=info.created_at,
    )
