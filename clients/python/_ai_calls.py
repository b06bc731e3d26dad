"""Request builders and response parsers for AIService, shared by the sync and async clients."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from nachbar.client._db_calls import (
    METRICS,
    MODES,
    NO_EXPLORE,
    Call,
    Explore,
    hybrid_to_proto,
    index_to_proto,
    optional_score,
    store_info,
    vars_of,
)
from nachbar.client.types import (
    AIEntry,
    AIGetKeyResult,
    AIInfo,
    AIMatch,
    AIPage,
    AISearchResult,
    AIStoreInfo,
    CreatedAIStoreInfo,
    Hybrid,
    Index,
    Metric,
    ModelInfo,
    RerankResult,
    SearchMode,
    TrainedInfo,
    TrainMetrics,
    UpsertResult,
)
from nachbar.client.values import (
    FilterLike,
    Metadata,
    filter_to_proto,
    metadata_from_proto,
    metadata_to_proto,
)
from nachbar.v1 import ai_pb2, codec, common_pb2


@dataclass(frozen=True)
class Text:
    """Text input (a plain `str` works too)."""

    text: str


@dataclass(frozen=True)
class Image:
    """Image input: encoded bytes (JPEG, PNG, ...). Build one with `Image.from_path(p)` or
    `Image.from_pil(img)`; a `pathlib.Path` or PIL image also works anywhere an input goes."""

    data: bytes

    @staticmethod
    def from_path(path: str | os.PathLike[str]) -> Image:
        return Image(Path(path).read_bytes())

    @staticmethod
    def from_pil(image: Any, format: str = "PNG") -> Image:
        buffer = io.BytesIO()
        image.save(buffer, format=format)
        return Image(buffer.getvalue())


InputLike: TypeAlias = str | bytes | Text | Image | os.PathLike[str] | Any


@dataclass(frozen=True)
class Item:
    """One input to upsert, with an optional id (derived from the content when empty)."""

    input: InputLike
    id: str = ""
    metadata: Metadata = field(default_factory=dict)


def to_input(value: InputLike) -> ai_pb2.Input:
    """str -> text; bytes, Path, PIL image or Image -> image."""
    if isinstance(value, Text):
        return ai_pb2.Input(text=value.text)
    if isinstance(value, str):
        return ai_pb2.Input(text=value)
    if isinstance(value, Image):
        return ai_pb2.Input(image=value.data)
    if isinstance(value, bytes | bytearray):
        return ai_pb2.Input(image=bytes(value))
    if isinstance(value, os.PathLike):
        return ai_pb2.Input(image=Path(value).read_bytes())
    if hasattr(value, "save") and hasattr(value, "mode"):  # a PIL image
        return ai_pb2.Input(image=Image.from_pil(value).data)
    raise TypeError(
        f"cannot use {type(value).__name__} as an input: pass str (text), bytes, a Path or a "
        "PIL image (image)"
    )


def from_input(proto: ai_pb2.Input) -> str | bytes | None:
    kind = proto.WhichOneof("kind")
    if kind is None:
        return None
    value: str | bytes = getattr(proto, kind)
    return value


def truncation(value: str) -> ai_pb2.TruncationPolicy.ValueType:
    try:
        return codec.TRUNCATIONS[value]
    except KeyError:
        raise ValueError(f"truncation must be 'error' or 'truncate', not {value!r}") from None


def rerank_fusion(value: str) -> ai_pb2.RerankFusion.ValueType:
    try:
        return codec.RERANK_FUSIONS[value]
    except KeyError:
        raise ValueError(f"rerank_fusion must be 'none', 'rrf' or 'blend', not {value!r}") from None


def ai_store_info(proto: ai_pb2.AIStoreInfo) -> AIStoreInfo:
    return AIStoreInfo(
        proto.name,
        proto.query_model,
        proto.index_model,
        proto.store_original,
        store_info(proto.db_store),
    )


def ai_entry(proto: ai_pb2.AIEntry) -> AIEntry:
    return AIEntry(proto.id, metadata_from_proto(proto.metadata), from_input(proto.original))


def create_store(
    store: str,
    query_model: str,
    index_model: str,
    store_original: bool,
    predicate_indexes: Iterable[str],
    index: Index | None,
    metric: Metric | str | None,
    if_not_exists: bool,
    keyword_index: Iterable[str] | None = None,
) -> Call[CreatedAIStoreInfo]:
    request = ai_pb2.CreateStoreRequest(
        store=store,
        query_model=query_model,
        index_model=index_model,
        store_original=store_original,
        predicate_indexes=list(predicate_indexes),
        index=index_to_proto(index) if index is not None else None,
        metric=METRICS[Metric(metric)] if metric else common_pb2.METRIC_UNSPECIFIED,
        if_not_exists=if_not_exists,
    )
    if keyword_index is not None:
        request.keyword_index.fields.extend(keyword_index)
    return (
        "CreateStore",
        request,
        lambda r: CreatedAIStoreInfo(**vars_of(ai_store_info(r.store)), created=r.created),
    )


def drop_store(store: str, missing_ok: bool) -> Call[bool]:
    return (
        "DropStore",
        ai_pb2.DropStoreRequest(store=store, missing_ok=missing_ok),
        (lambda r: bool(r.dropped)),
    )


def list_stores() -> Call[list[AIStoreInfo]]:
    return (
        "ListStores",
        ai_pb2.ListStoresRequest(),
        (lambda r: [ai_store_info(s) for s in r.stores]),
    )


def get_store(store: str) -> Call[AIStoreInfo]:
    return "GetStore", ai_pb2.GetStoreRequest(store=store), lambda r: ai_store_info(r.store)


def to_item(value: Item | InputLike | tuple[Any, ...]) -> Item:
    if isinstance(value, Item):
        return value
    if isinstance(value, tuple):
        return Item(*value)
    return Item(value)


def upsert(store: str, items: Sequence[Item], trunc: str) -> Call[UpsertResult]:
    request = ai_pb2.UpsertRequest(store=store, truncation=truncation(trunc))
    for item in items:
        request.entries.append(
            ai_pb2.UpsertEntry(
                id=item.id, input=to_input(item.input), metadata=metadata_to_proto(item.metadata)
            )
        )
    return "Upsert", request, lambda r: UpsertResult(r.inserted, r.updated, list(r.ids))


def get_sim_n(
    store: str,
    query: InputLike | None,
    k: int,
    filter: FilterLike | None,
    trunc: str,
    rerank: str | None,
    rerank_candidates: int,
    rerank_field: str | None,
    sigmoid: bool,
    fusion: str,
    mode: SearchMode | str,
    ef: int,
    query_model: str,
    explore: Explore = NO_EXPLORE,
    hybrid: Hybrid | None = None,
    keywords: str = "",
    keyword_only: bool = False,
    adapter: str = "",
    rescorer: str = "",
) -> Call[AISearchResult]:
    request = ai_pb2.GetSimNRequest(
        store=store,
        k=k,
        truncation=truncation(trunc),
        mode=MODES[SearchMode(mode)],
        ef=ef,
        query_model_override=query_model,
        keywords=keywords,
        keyword_only=keyword_only,
        adapter=adapter,
    )
    if query is not None:
        request.query.CopyFrom(to_input(query))
    explore.apply(request)
    if hybrid is not None:
        request.hybrid.CopyFrom(hybrid_to_proto(hybrid))
    proto = filter_to_proto(filter)
    if proto is not None:
        request.filter.CopyFrom(proto)
    if rescorer:
        if rerank:
            raise ValueError("give rerank (a model) or rescorer, not both")
        request.rerank.CopyFrom(
            ai_pb2.RerankOptions(
                rescorer=rescorer, candidates=rerank_candidates, fusion=rerank_fusion(fusion)
            )
        )
    if rerank:
        options = ai_pb2.RerankOptions(
            model=rerank,
            candidates=rerank_candidates,
            sigmoid=sigmoid,
            fusion=rerank_fusion(fusion),
        )
        if rerank_field:
            options.metadata_field = rerank_field
        else:
            options.original_text = True
        request.rerank.CopyFrom(options)

    def parse(r: ai_pb2.GetSimNResponse) -> AISearchResult:
        return AISearchResult(
            [
                AIMatch(
                    m.id,
                    m.similarity,
                    metadata_from_proto(m.metadata),
                    m.rerank_score if m.HasField("rerank_score") else None,
                    from_input(m.original),
                    m.fused_score if m.HasField("fused_score") else None,
                    optional_score(m, "vector_score"),
                    optional_score(m, "keyword_score"),
                    optional_score(m, "hybrid_score"),
                )
                for m in r.matches
            ],
            r.plan,
        )

    return "GetSimN", request, parse


def get_key(store: str, ids: Iterable[str]) -> Call[AIGetKeyResult]:
    return (
        "GetKey",
        ai_pb2.GetKeyRequest(store=store, ids=list(ids)),
        lambda r: AIGetKeyResult([ai_entry(e) for e in r.entries], list(r.missing_ids)),
    )


def get_by_predicate(
    store: str, filter: FilterLike | None, limit: int, page_token: str
) -> Call[AIPage]:
    request = ai_pb2.GetByPredicateRequest(store=store, limit=limit, page_token=page_token)
    proto = filter_to_proto(filter)
    if proto is not None:
        request.filter.CopyFrom(proto)
    return (
        "GetByPredicate",
        request,
        lambda r: AIPage([ai_entry(e) for e in r.entries], r.next_page_token),
    )


def delete_keys(store: str, ids: Iterable[str]) -> Call[int]:
    return (
        "DeleteKeys",
        ai_pb2.DeleteKeysRequest(store=store, ids=list(ids)),
        (lambda r: int(r.deleted)),
    )


def delete_by_predicate(store: str, filter: FilterLike) -> Call[int]:
    request = ai_pb2.DeleteByPredicateRequest(store=store)
    proto = filter_to_proto(filter)
    if proto is not None:
        request.filter.CopyFrom(proto)
    return "DeleteByPredicate", request, lambda r: int(r.deleted)


def embed(model: str, inputs: Iterable[InputLike], trunc: str) -> Call[list[list[float]]]:
    request = ai_pb2.EmbedRequest(
        model=model, inputs=[to_input(x) for x in inputs], truncation=truncation(trunc)
    )
    return "Embed", request, lambda r: [list(e.values) for e in r.embeddings]


def rerank(
    model: str, query: str, documents: Sequence[str], top_k: int, trunc: str, sigmoid: bool
) -> Call[list[RerankResult]]:
    request = ai_pb2.RerankRequest(
        model=model,
        query=query,
        documents=list(documents),
        top_k=top_k,
        truncation=truncation(trunc),
        sigmoid=sigmoid,
    )
    return "Rerank", request, lambda r: [RerankResult(x.index, x.score) for x in r.results]


_KINDS = {
    ai_pb2.MODEL_KIND_EMBEDDING: "embedding",
    ai_pb2.MODEL_KIND_CROSS_ENCODER: "cross_encoder",
    ai_pb2.MODEL_KIND_LATE_INTERACTION: "late_interaction",
}
_MODALITIES = {ai_pb2.MODALITY_TEXT: "text", ai_pb2.MODALITY_IMAGE: "image"}


def list_models() -> Call[list[ModelInfo]]:
    def parse(r: ai_pb2.ListModelsResponse) -> list[ModelInfo]:
        return [
            ModelInfo(
                m.name,
                _KINDS.get(m.kind, "unknown"),
                _MODALITIES.get(m.modality, "unknown"),
                m.dimension,
                m.space,
                m.max_tokens,
                m.image_size,
                m.source,
                m.available,
                m.loaded,
                m.precision,
                m.description,
            )
            for m in r.models
        ]

    return "ListModels", ai_pb2.ListModelsRequest(), parse


def info() -> Call[AIInfo]:
    return (
        "Info",
        ai_pb2.InfoRequest(),
        lambda r: AIInfo(
            r.version, list(r.loaded_models), r.db_address, r.db_reachable, r.max_message_bytes
        ),
    )


def ping() -> Call[None]:
    return "Ping", ai_pb2.PingRequest(), lambda r: None


def chunk_items(
    items: Iterable[Item | InputLike | tuple[Any, ...]], size: int
) -> Iterable[list[Item]]:
    """Batches of `size`; an empty input yields one empty batch for the server to refuse."""
    batch: list[Item] = []
    sent = False
    for value in items:
        batch.append(to_item(value))
        if len(batch) >= size:
            yield batch
            sent = True
            batch = []
    if batch or not sent:
        yield batch


@dataclass(frozen=True)
class Example:
    """A training query (text or image) and the ids of the store's entries that answer it."""

    query: InputLike
    relevant_ids: Sequence[str]
    irrelevant_ids: Sequence[str] = ()


TRAIN_STATES = {
    ai_pb2.TRAIN_STATE_QUEUED: "queued",
    ai_pb2.TRAIN_STATE_TRAINING: "training",
    ai_pb2.TRAIN_STATE_READY: "ready",
    ai_pb2.TRAIN_STATE_FAILED: "failed",
}


def _metrics(proto: ai_pb2.TrainMetrics) -> TrainMetrics:
    return TrainMetrics(proto.mrr_at_10, proto.recall_at_10, proto.queries)


def trained_info(proto: ai_pb2.TrainedInfo) -> TrainedInfo:
    return TrainedInfo(
        store=proto.store,
        name=proto.name,
        state=TRAIN_STATES.get(proto.state, "unspecified"),
        progress=proto.progress,
        message=proto.message,
        before=_metrics(proto.before),
        after=_metrics(proto.after),
        recommended=proto.recommended,
        train_examples=proto.train_examples,
        held_out_examples=proto.held_out_examples,
        epochs=proto.epochs,
        train_seconds=proto.train_seconds,
        dimension=proto.dimension,
        space=proto.space,
        corpus_size=proto.corpus_size,
        weight_bytes=proto.weight_bytes,
        created_at=proto.created_at,
    )


def _example(value: Example | tuple[Any, ...]) -> ai_pb2.TrainExample:
    example = value if isinstance(value, Example) else Example(*value)
    if isinstance(example.relevant_ids, str) or isinstance(example.irrelevant_ids, str):
        raise TypeError("relevant_ids and irrelevant_ids are lists of ids, not one string")
    return ai_pb2.TrainExample(
        query=to_input(example.query),
        relevant_ids=list(example.relevant_ids),
        irrelevant_ids=list(example.irrelevant_ids),
    )


@dataclass(frozen=True)
class TrainSettings:
    """Zero values take the server's defaults."""

    epochs: int = 0
    learning_rate: float = 0.0
    held_out: float = 0.0
    seed: int = 0
    identity_weight: float = 0.0


def train(
    kind: str,
    store: str,
    name: str,
    examples: Iterable[Example | tuple[Any, ...]],
    settings: TrainSettings,
) -> Call[TrainedInfo]:
    """kind: "adapter" or "rescorer"."""
    options = ai_pb2.TrainOptions(**vars_of(settings))
    protos = [_example(e) for e in examples]
    if kind == "adapter":
        return (
            "TrainAdapter",
            ai_pb2.TrainAdapterRequest(store=store, name=name, examples=protos, options=options),
            lambda r: trained_info(r.adapter),
        )
    return (
        "TrainRescorer",
        ai_pb2.TrainRescorerRequest(store=store, name=name, examples=protos, options=options),
        lambda r: trained_info(r.rescorer),
    )


def get_trained(kind: str, store: str, name: str) -> Call[TrainedInfo]:
    if kind == "adapter":
        return (
            "GetAdapter",
            ai_pb2.GetAdapterRequest(store=store, name=name),
            lambda r: trained_info(r.adapter),
        )
    return (
        "GetRescorer",
        ai_pb2.GetRescorerRequest(store=store, name=name),
        lambda r: trained_info(r.rescorer),
    )


def list_trained(kind: str, store: str) -> Call[list[TrainedInfo]]:
    if kind == "adapter":
        return (
            "ListAdapters",
            ai_pb2.ListAdaptersRequest(store=store),
            lambda r: [trained_info(i) for i in r.adapters],
        )
    return (
        "ListRescorers",
        ai_pb2.ListRescorersRequest(store=store),
        lambda r: [trained_info(i) for i in r.rescorers],
    )


def drop_trained(kind: str, store: str, name: str, missing_ok: bool) -> Call[bool]:
    if kind == "adapter":
        return (
            "DropAdapter",
            ai_pb2.DropAdapterRequest(store=store, name=name, missing_ok=missing_ok),
            lambda r: bool(r.dropped),
        )
    return (
        "DropRescorer",
        ai_pb2.DropRescorerRequest(store=store, name=name, missing_ok=missing_ok),
        lambda r: bool(r.dropped),
    )
