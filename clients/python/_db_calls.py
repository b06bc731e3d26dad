"""Request builders and response parsers for DBService, shared by the sync and async clients.

Each builder returns (rpc method name, request message, response parser).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

import numpy as np

from nachbar.client._channel import MAX_MESSAGE_BYTES
from nachbar.client.types import (
    CreatedStoreInfo,
    DBInfo,
    Entry,
    Exact,
    GetKeyResult,
    Hnsw,
    Hybrid,
    Index,
    KeywordIndexCreated,
    Match,
    Metric,
    Page,
    SearchMode,
    SearchResult,
    StoreInfo,
    UpsertResult,
)
from nachbar.client.values import (
    FilterLike,
    Metadata,
    filter_to_proto,
    metadata_from_proto,
    metadata_to_proto,
)
from nachbar.v1 import ai_pb2, codec, common_pb2, db_pb2

T = TypeVar("T")
Call: TypeAlias = tuple[str, Any, Callable[[Any], T]]
VectorLike: TypeAlias = Sequence[float] | np.ndarray

METRICS = {metric: codec.METRICS[metric.value] for metric in Metric}
METRICS_BACK = {v: k for k, v in METRICS.items()}
MODES = {mode: codec.SEARCH_MODES[mode.value] for mode in SearchMode}


def index_to_proto(index: Index | None) -> common_pb2.IndexConfig:
    if index is None:
        return common_pb2.IndexConfig()
    if isinstance(index, Exact):
        return common_pb2.IndexConfig(exact=common_pb2.ExactParams())
    return common_pb2.IndexConfig(
        hnsw=common_pb2.HnswParams(
            m=index.m, ef_construction=index.ef_construction, ef_search=index.ef_search
        )
    )


def index_from_proto(index: common_pb2.IndexConfig) -> Index:
    if index.WhichOneof("kind") == "exact":
        return Exact()
    return Hnsw(index.hnsw.m, index.hnsw.ef_construction, index.hnsw.ef_search)


def store_info(proto: db_pb2.StoreInfo) -> StoreInfo:
    return StoreInfo(
        name=proto.name,
        dimension=proto.dimension,
        metric=METRICS_BACK.get(proto.metric, Metric.COSINE),
        index=index_from_proto(proto.index),
        predicate_indexes=tuple(proto.predicate_indexes),
        count=proto.count,
        bytes_used=proto.bytes_used,
        store_metadata=dict(proto.store_metadata),
        store_id=proto.store_id,
        keyword_fields=(
            tuple(proto.keyword_index.fields) if proto.HasField("keyword_index") else None
        ),
    )


def vars_of(value: object) -> dict[str, Any]:
    """A dataclass's fields, shallow (dataclasses.asdict would copy nested ones to dicts)."""
    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}  # type: ignore[arg-type]


def entry(proto: db_pb2.Entry) -> Entry:
    return Entry(
        id=proto.id,
        metadata=metadata_from_proto(proto.metadata),
        vector=list(proto.vector) if len(proto.vector) else None,
        omitted_metadata_keys=list(proto.omitted_metadata_keys),
    )


@dataclass(frozen=True)
class Selection:
    """What metadata a read returns (see the read methods of DBClient)."""

    include_metadata: bool = True
    exclude_metadata_keys: Iterable[str] = ()
    max_metadata_value_bytes: int = 0

    def apply(
        self, request: db_pb2.GetKeyRequest | db_pb2.GetByPredicateRequest | db_pb2.GetSimNRequest
    ) -> None:
        if not self.include_metadata:
            request.include_metadata = False
        request.exclude_metadata_keys.extend(self.exclude_metadata_keys)
        request.max_metadata_value_bytes = self.max_metadata_value_bytes
        # The server never sends more than this channel accepts.
        request.max_response_bytes = MAX_MESSAGE_BYTES


RECOMMEND_STRATEGIES = {
    "average_vector": db_pb2.RECOMMEND_STRATEGY_AVERAGE_VECTOR,
    "best_score": db_pb2.RECOMMEND_STRATEGY_BEST_SCORE,
}


@dataclass(frozen=True)
class Explore:
    """GetSimN's MMR and recommend-by-examples options (the same fields on nachbar-db and
    nachbar-ai; see the get_sim_n methods)."""

    mmr: float | None = None
    mmr_candidates: int = 0
    positive: Iterable[str] = ()
    negative: Iterable[str] = ()
    strategy: str = "average_vector"
    recommend_candidates: int = 0

    def apply(self, request: db_pb2.GetSimNRequest | ai_pb2.GetSimNRequest) -> None:
        if self.strategy not in RECOMMEND_STRATEGIES:
            raise ValueError(
                f"unknown recommend strategy {self.strategy!r}; use average_vector or best_score"
            )
        if self.mmr_candidates and self.mmr is None:
            raise ValueError("mmr_candidates needs mmr=<lambda in [0, 1]>")
        examples = bool(self.positive or self.negative)
        if not examples and (self.strategy != "average_vector" or self.recommend_candidates):
            raise ValueError("strategy and recommend_candidates need positive or negative ids")
        if self.mmr is not None:
            request.mmr_lambda = self.mmr
            request.mmr_candidates = self.mmr_candidates
        request.positive_ids.extend(self.positive)
        request.negative_ids.extend(self.negative)
        if request.positive_ids or request.negative_ids:
            request.recommend_strategy = RECOMMEND_STRATEGIES[self.strategy]
            request.recommend_candidates = self.recommend_candidates


NO_EXPLORE = Explore()


def _vector(values: VectorLike) -> list[float]:
    result: list[float] = np.asarray(values, dtype=np.float32).ravel().tolist()
    return result


def create_store(
    store: str,
    dimension: int,
    metric: Metric | str | None,
    index: Index | None,
    predicate_indexes: Iterable[str],
    store_metadata: Mapping[str, str] | None,
    if_not_exists: bool,
    keyword_fields: Iterable[str] | None = None,
) -> Call[CreatedStoreInfo]:
    request = db_pb2.CreateStoreRequest(
        store=store,
        dimension=dimension,
        # Unset: the server's documented default (cosine).
        metric=METRICS[Metric(metric)] if metric else common_pb2.METRIC_UNSPECIFIED,
        index=index_to_proto(index) if index is not None else None,
        predicate_indexes=list(predicate_indexes),
        store_metadata=dict(store_metadata or {}),
        if_not_exists=if_not_exists,
    )
    if keyword_fields is not None:
        request.keyword_index.fields.extend(keyword_fields)
    return (
        "CreateStore",
        request,
        lambda r: CreatedStoreInfo(**vars_of(store_info(r.store)), created=r.created),
    )


def drop_store(store: str, missing_ok: bool) -> Call[bool]:
    request = db_pb2.DropStoreRequest(store=store, missing_ok=missing_ok)
    return "DropStore", request, lambda r: bool(r.dropped)


def list_stores() -> Call[list[StoreInfo]]:
    return "ListStores", db_pb2.ListStoresRequest(), lambda r: [store_info(s) for s in r.stores]


def get_store(store: str) -> Call[StoreInfo]:
    return "GetStore", db_pb2.GetStoreRequest(store=store), lambda r: store_info(r.store)


def upsert(
    store: str,
    entries: Iterable[tuple[str, VectorLike] | tuple[str, VectorLike, Metadata | None]],
) -> Call[UpsertResult]:
    request = db_pb2.UpsertRequest(store=store)
    for item in entries:
        entry_id, vector = item[0], item[1]
        metadata = item[2] if len(item) > 2 else None
        request.entries.append(
            db_pb2.Entry(id=entry_id, vector=_vector(vector), metadata=metadata_to_proto(metadata))
        )
    return "Upsert", request, lambda r: UpsertResult(r.inserted, r.updated)


def get_key(
    store: str, ids: Iterable[str], include_vectors: bool, selection: Selection = Selection()
) -> Call[tuple[GetKeyResult, list[str]]]:
    """A GetKey that may return part of the entries; the parser gives the result and the ids
    left for another request."""
    request = db_pb2.GetKeyRequest(
        store=store, ids=list(ids), include_vectors=include_vectors, allow_partial=True
    )
    selection.apply(request)
    return (
        "GetKey",
        request,
        lambda r: (
            GetKeyResult([entry(e) for e in r.entries], list(r.missing_ids)),
            list(r.unreturned_ids),
        ),
    )


def get_by_predicate(
    store: str,
    filter: FilterLike | None,
    limit: int,
    page_token: str,
    include_vectors: bool,
    selection: Selection = Selection(),
) -> Call[Page]:
    request = db_pb2.GetByPredicateRequest(
        store=store, limit=limit, page_token=page_token, include_vectors=include_vectors
    )
    selection.apply(request)
    proto = filter_to_proto(filter)
    if proto is not None:
        request.filter.CopyFrom(proto)
    return (
        "GetByPredicate",
        request,
        lambda r: Page([entry(e) for e in r.entries], r.next_page_token),
    )


HYBRID_FUSIONS = {"rrf": db_pb2.HYBRID_FUSION_RRF, "blend": db_pb2.HYBRID_FUSION_BLEND}


def hybrid_to_proto(hybrid: Hybrid) -> db_pb2.HybridOptions:
    try:
        fusion = HYBRID_FUSIONS[hybrid.fusion]
    except KeyError:
        raise ValueError(f"unknown hybrid fusion {hybrid.fusion!r}; use rrf or blend") from None
    out = db_pb2.HybridOptions(fusion=fusion, rrf_k=hybrid.rrf_k, candidates=hybrid.candidates)
    if hybrid.vector_weight is not None:
        out.vector_weight = hybrid.vector_weight
    return out


def optional_score(message: Any, name: str) -> float | None:
    return float(getattr(message, name)) if message.HasField(name) else None


def get_sim_n(
    store: str,
    query: VectorLike | None,
    k: int,
    filter: FilterLike | None,
    mode: SearchMode | str,
    ef: int,
    include_vectors: bool,
    selection: Selection = Selection(),
    explore: Explore = Explore(),
    keywords: str = "",
    hybrid: Hybrid | None = None,
) -> Call[SearchResult]:
    request = db_pb2.GetSimNRequest(
        store=store,
        query=_vector(query) if query is not None else [],
        k=k,
        mode=MODES[SearchMode(mode)],
        ef=ef,
        include_vectors=include_vectors,
        keywords=keywords,
    )
    if hybrid is not None:
        request.hybrid.CopyFrom(hybrid_to_proto(hybrid))
    selection.apply(request)
    explore.apply(request)
    proto = filter_to_proto(filter)
    if proto is not None:
        request.filter.CopyFrom(proto)

    def parse(r: db_pb2.GetSimNResponse) -> SearchResult:
        return SearchResult(
            [
                Match(
                    m.id,
                    m.similarity,
                    metadata_from_proto(m.metadata),
                    list(m.vector) if len(m.vector) else None,
                    list(m.omitted_metadata_keys),
                    optional_score(m, "vector_score"),
                    optional_score(m, "keyword_score"),
                    optional_score(m, "hybrid_score"),
                )
                for m in r.matches
            ],
            r.plan,
        )

    return "GetSimN", request, parse


def delete_keys(store: str, ids: Iterable[str]) -> Call[int]:
    request = db_pb2.DeleteKeysRequest(store=store, ids=list(ids))
    return "DeleteKeys", request, lambda r: int(r.deleted)


def delete_by_predicate(store: str, filter: FilterLike) -> Call[int]:
    request = db_pb2.DeleteByPredicateRequest(store=store)
    proto = filter_to_proto(filter)
    if proto is not None:
        request.filter.CopyFrom(proto)
    return "DeleteByPredicate", request, lambda r: int(r.deleted)


def create_pred_index(store: str, fields: Iterable[str]) -> Call[int]:
    request = db_pb2.CreatePredIndexRequest(store=store, fields=list(fields))
    return "CreatePredIndex", request, lambda r: int(r.created)


def drop_pred_index(store: str, fields: Iterable[str], missing_ok: bool) -> Call[int]:
    request = db_pb2.DropPredIndexRequest(store=store, fields=list(fields), missing_ok=missing_ok)
    return "DropPredIndex", request, lambda r: int(r.dropped)


def info() -> Call[DBInfo]:
    return (
        "Info",
        db_pb2.InfoRequest(),
        lambda r: DBInfo(
            r.version, r.store_count, r.fsync_policy, r.max_message_bytes, r.uptime_seconds
        ),
    )


def ping() -> Call[None]:
    return "Ping", db_pb2.PingRequest(), lambda r: None


def create_keyword_index(store: str, fields: Iterable[str]) -> Call[KeywordIndexCreated]:
    request = db_pb2.KeywordIndexCreateRequest(
        store=store, index=db_pb2.KeywordIndexConfig(fields=list(fields))
    )
    return (
        "CreateKeywordIndex",
        request,
        lambda r: KeywordIndexCreated(bool(r.created), int(r.indexed)),
    )


def drop_keyword_index(store: str, missing_ok: bool) -> Call[bool]:
    request = db_pb2.KeywordIndexDropRequest(store=store, missing_ok=missing_ok)
    return "DropKeywordIndex", request, lambda r: bool(r.dropped)
