"""Protobuf messages <-> nachbar.db domain objects, and the encoded size of a response before it
is built."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import chain

import numpy as np

from nachbar.db import filters, types
from nachbar.db.codec import utf8_length
from nachbar.server.errors import RequestError
from nachbar.v1 import common_pb2, db_pb2
from nachbar.v1.codec import fill_metadata, metadata_from_proto, value_from_proto

METRIC_FROM_PROTO = {
    common_pb2.METRIC_UNSPECIFIED: types.Metric.COSINE,
    common_pb2.METRIC_COSINE: types.Metric.COSINE,
    common_pb2.METRIC_L2: types.Metric.L2,
    common_pb2.METRIC_INNER_PRODUCT: types.Metric.INNER_PRODUCT,
}
METRIC_TO_PROTO = {
    types.Metric.COSINE: common_pb2.METRIC_COSINE,
    types.Metric.L2: common_pb2.METRIC_L2,
    types.Metric.INNER_PRODUCT: common_pb2.METRIC_INNER_PRODUCT,
}
MODE_FROM_PROTO = {
    common_pb2.SEARCH_MODE_AUTO: types.SearchMode.AUTO,
    common_pb2.SEARCH_MODE_EXACT: types.SearchMode.EXACT,
    common_pb2.SEARCH_MODE_HNSW: types.SearchMode.HNSW,
}
OP_FROM_PROTO = {
    common_pb2.Condition.OP_EQ: filters.Op.EQ,
    common_pb2.Condition.OP_NE: filters.Op.NE,
    common_pb2.Condition.OP_LT: filters.Op.LT,
    common_pb2.Condition.OP_LTE: filters.Op.LTE,
    common_pb2.Condition.OP_GT: filters.Op.GT,
    common_pb2.Condition.OP_GTE: filters.Op.GTE,
    common_pb2.Condition.OP_IN: filters.Op.IN,
    common_pb2.Condition.OP_NOT_IN: filters.Op.NOT_IN,
    common_pb2.Condition.OP_EXISTS: filters.Op.EXISTS,
}


def metric(value: common_pb2.Metric.ValueType) -> types.Metric:
    try:
        return METRIC_FROM_PROTO[value]
    except KeyError:
        raise RequestError(f"unknown metric {value}; use cosine, l2 or inner product") from None


def mode(value: common_pb2.SearchMode.ValueType) -> types.SearchMode:
    try:
        return MODE_FROM_PROTO[value]
    except KeyError:
        raise RequestError(f"unknown search mode {value}; use auto, exact or hnsw") from None


RECOMMEND_STRATEGY_FROM_PROTO = {
    db_pb2.RECOMMEND_STRATEGY_UNSPECIFIED: types.RecommendStrategy.AVERAGE_VECTOR,
    db_pb2.RECOMMEND_STRATEGY_AVERAGE_VECTOR: types.RecommendStrategy.AVERAGE_VECTOR,
    db_pb2.RECOMMEND_STRATEGY_BEST_SCORE: types.RecommendStrategy.BEST_SCORE,
}


def mmr_options(request: db_pb2.GetSimNRequest) -> types.MmrOptions | None:
    """The request's MMR choice; None for a plain search."""
    if not request.HasField("mmr_lambda"):
        if request.mmr_candidates:
            raise RequestError(
                "mmr_candidates is set without mmr_lambda; set mmr_lambda (0 to 1) to use MMR"
            )
        return None
    return types.MmrOptions(lambda_=request.mmr_lambda, candidates=request.mmr_candidates)


def recommend_options(request: db_pb2.GetSimNRequest) -> types.RecommendOptions | None:
    """The request's examples; None without positive or negative ids."""
    if not request.positive_ids and not request.negative_ids:
        if request.recommend_candidates or (
            request.recommend_strategy == db_pb2.RECOMMEND_STRATEGY_BEST_SCORE
        ):
            raise RequestError(
                "recommend_strategy best_score and recommend_candidates need example ids; "
                "add positive_ids (or negative_ids with a query)"
            )
        return None
    try:
        strategy = RECOMMEND_STRATEGY_FROM_PROTO[request.recommend_strategy]
    except KeyError:
        raise RequestError(
            f"unknown recommend strategy {request.recommend_strategy}; use average_vector or "
            "best_score"
        ) from None
    return types.RecommendOptions(
        positive_ids=tuple(request.positive_ids),
        negative_ids=tuple(request.negative_ids),
        strategy=strategy,
        candidates=request.recommend_candidates,
    )


def index_config(index: common_pb2.IndexConfig) -> types.HnswConfig | types.ExactConfig:
    kind = index.WhichOneof("kind")
    if kind == "exact":
        return types.ExactConfig()
    defaults = types.HnswConfig()
    hnsw = index.hnsw
    return types.HnswConfig(
        m=hnsw.m or defaults.m,
        ef_construction=hnsw.ef_construction or defaults.ef_construction,
        ef_search=hnsw.ef_search or defaults.ef_search,
    )


def index_to_proto(index: types.HnswConfig | types.ExactConfig) -> common_pb2.IndexConfig:
    if isinstance(index, types.ExactConfig):
        return common_pb2.IndexConfig(exact=common_pb2.ExactParams())
    return common_pb2.IndexConfig(
        hnsw=common_pb2.HnswParams(
            m=index.m, ef_construction=index.ef_construction, ef_search=index.ef_search
        )
    )


def store_spec(request: db_pb2.CreateStoreRequest) -> types.StoreSpec:
    return types.StoreSpec(
        name=request.store,
        dimension=request.dimension,
        metric=metric(request.metric),
        index=index_config(request.index),
        predicate_indexes=tuple(request.predicate_indexes),
        store_metadata=dict(request.store_metadata),
        keyword_fields=(
            tuple(request.keyword_index.fields) if request.HasField("keyword_index") else None
        ),
    )


def store_info(info: types.StoreInfo) -> db_pb2.StoreInfo:
    return db_pb2.StoreInfo(
        name=info.name,
        dimension=info.dimension,
        metric=METRIC_TO_PROTO[info.metric],
        index=index_to_proto(info.index),
        predicate_indexes=list(info.predicate_indexes),
        count=info.count,
        bytes_used=info.bytes_used,
        store_metadata=dict(info.store_metadata),
        store_id=info.store_id,
        keyword_index=(
            db_pb2.KeywordIndexConfig(fields=list(info.keyword_fields))
            if info.keyword_fields is not None
            else None
        ),
    )


def vector(values: object) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def metadata(proto: Mapping[str, common_pb2.MetadataValue]) -> dict[str, types.MetadataValue]:
    try:
        return metadata_from_proto(proto)
    except ValueError as error:
        raise RequestError(f"metadata: {error}") from None


def entry(proto: db_pb2.Entry) -> types.Entry:
    return types.Entry(id=proto.id, vector=vector(proto.vector), metadata=metadata(proto.metadata))


def upsert_entries(
    entries: Sequence[db_pb2.Entry],
) -> types.EntryBatch | list[types.Entry]:
    """The entries of an Upsert. Vectors of one length are read into one float32 matrix
    straight from the message, with no array or list per vector; otherwise entry by entry, so
    that the store names the entry whose vector has the wrong length."""
    if not entries:
        return []
    dimension = len(entries[0].vector)
    if any(len(e.vector) != dimension for e in entries):
        return [entry(e) for e in entries]
    values = chain.from_iterable(e.vector for e in entries)
    matrix = np.fromiter(values, dtype=np.float32, count=len(entries) * dimension)
    return types.EntryBatch(
        ids=[e.id for e in entries],
        vectors=matrix.reshape(len(entries), dimension),
        metadata=[metadata(e.metadata) for e in entries],
    )


def entry_to_proto(value: types.Entry) -> db_pb2.Entry:
    out = db_pb2.Entry(id=value.id, omitted_metadata_keys=value.omitted_keys)
    fill_metadata(out.metadata, value.metadata)
    if value.vector is not None:
        out.vector.extend(value.vector.tolist())
    return out


def search_response(result: types.SearchResult) -> db_pb2.GetSimNResponse:
    out = db_pb2.GetSimNResponse(plan=result.plan)
    # Matches are added in place: building each Match on its own and passing the list would
    # copy every message once more.
    add = out.matches.add
    for value in result.matches:
        match = add(id=value.id, similarity=value.score)
        fill_metadata(match.metadata, value.metadata)
        if value.vector is not None:
            match.vector.extend(value.vector.tolist())
        if value.omitted_keys:
            match.omitted_metadata_keys.extend(value.omitted_keys)
        if value.vector_score is not None:
            match.vector_score = value.vector_score
        if value.keyword_score is not None:
            match.keyword_score = value.keyword_score
        if value.hybrid_score is not None:
            match.hybrid_score = value.hybrid_score
    return out


HYBRID_FUSION_FROM_PROTO = {
    db_pb2.HYBRID_FUSION_BLEND: types.HybridFusion.BLEND,
    db_pb2.HYBRID_FUSION_RRF: types.HybridFusion.RRF,
}


def hybrid_options(proto: db_pb2.HybridOptions) -> types.HybridOptions:
    try:
        fusion = HYBRID_FUSION_FROM_PROTO[proto.fusion]
    except KeyError:
        raise RequestError(f"unknown hybrid fusion {proto.fusion}; use rrf or blend") from None
    return types.HybridOptions(
        fusion=fusion,
        rrf_k=proto.rrf_k,
        vector_weight=proto.vector_weight if proto.HasField("vector_weight") else 0.5,
        candidates=proto.candidates,
    )


def metadata_selection(
    request: db_pb2.GetKeyRequest | db_pb2.GetByPredicateRequest | db_pb2.GetSimNRequest,
) -> types.MetadataSelection:
    include = request.include_metadata if request.HasField("include_metadata") else True
    return types.MetadataSelection(
        include=include,
        exclude_keys=frozenset(request.exclude_metadata_keys),
        max_value_bytes=request.max_metadata_value_bytes,
    )


def filter_from_proto(
    proto: common_pb2.Filter,
    limits: filters.FilterLimits = filters.DEFAULT_LIMITS,
    max_bytes: int = 0,
) -> filters.Filter:
    """The domain filter of a request. Limits are checked while converting, so that an
    oversized filter is refused before it is copied into Python objects; max_bytes (0: none)
    bounds its encoded size."""
    if max_bytes:
        size = proto.ByteSize()
        if size > max_bytes:
            raise RequestError(
                f"the filter is {size} bytes encoded, over the limit of {max_bytes} bytes per "
                "filter; use fewer or shorter values, or split the query"
            )
    return _FilterReader(limits).read(proto, "filter", 0)


class _FilterReader:
    def __init__(self, limits: filters.FilterLimits) -> None:
        self.limits = limits
        self.conditions = 0

    def read(self, proto: common_pb2.Filter, path: str, depth: int) -> filters.Filter:
        if depth > self.limits.max_depth:
            raise filters.too_deep(path, self.limits)
        kind = proto.WhichOneof("kind")
        if kind == "condition":
            self.conditions += 1
            if self.conditions > self.limits.max_conditions:
                raise filters.too_many_conditions(self.limits)
            return self.condition(proto.condition, path)
        if kind in ("all_of", "any_of"):
            children = [
                self.read(f, f"{path}.{kind}[{i}]", depth + 1)
                for i, f in enumerate(getattr(proto, kind).filters)
            ]
            if not children:
                raise RequestError(f"{path}.{kind} is empty; give at least one filter")
            if kind == "all_of":
                return filters.AllOf(tuple(children))
            return filters.AnyOf(tuple(children))
        if kind == "negate":
            return filters.Not(self.read(proto.negate, f"{path}.negate", depth + 1))
        raise RequestError(f"{path} is empty; set condition, all_of, any_of or negate")

    def condition(self, cond: common_pb2.Condition, path: str) -> filters.Condition:
        try:
            op = OP_FROM_PROTO[cond.op]
        except KeyError:
            raise RequestError(f"{path}: condition on {cond.field!r} has no operator") from None
        if len(cond.values) > self.limits.max_values:
            where = f"{path}: condition {op} on {cond.field!r}"
            raise filters.too_many_values(where, len(cond.values), self.limits)
        value = None
        if cond.HasField("value"):
            try:
                value = metadata_from_proto({"v": cond.value})["v"]
            except ValueError:
                raise RequestError(
                    f"{path}: condition on {cond.field!r} has an empty value"
                ) from None
        try:
            values = tuple(value_from_proto(v) for v in cond.values)
        except ValueError:
            raise RequestError(
                f"{path}: condition on {cond.field!r} has an empty value among its values"
            ) from None
        return filters.Condition(field=cond.field, op=op, value=value, values=values)


def optional_filter(
    holder: object,
    field: str = "filter",
    *,
    limits: filters.FilterLimits = filters.DEFAULT_LIMITS,
    max_bytes: int = 0,
) -> filters.Filter | None:
    if not holder.HasField(field):  # type: ignore[attr-defined]
        return None
    return filter_from_proto(getattr(holder, field), limits, max_bytes)


# ---- encoded sizes ---------------------------------------------------------------------------
#
# Exact sizes (upper bounds where noted) of the messages a read would send, computed from the
# domain objects so that a response over the limit is refused or cut before it is built. Every
# field number involved is below 16, so each tag is one byte.


def _varint_size(value: int) -> int:
    if value < 0:
        return 10  # negative int64 values take ten bytes
    return max(1, (value.bit_length() + 6) // 7)


def _delimited(payload: int) -> int:
    """A length-delimited field: tag, length, payload."""
    if payload < 128:  # the common case, without a call
        return payload + 2
    return 1 + _varint_size(payload) + payload


def value_size(value: types.MetadataValue) -> int:
    """Encoded size of a MetadataValue message."""
    if isinstance(value, str):
        return _delimited(utf8_length(value))
    if isinstance(value, bool):
        return 2
    if isinstance(value, int):
        return 1 + _varint_size(value)
    if isinstance(value, float):
        return 9
    if isinstance(value, bytes):
        return _delimited(len(value))
    return _delimited(sum(_delimited(utf8_length(item)) for item in value))


def field_size(key: str, value: types.MetadataValue) -> int:
    """Encoded size of one metadata map entry (as a field of Entry or Match)."""
    return _delimited(_delimited(utf8_length(key)) + _delimited(value_size(value)))


def metadata_size(metadata: Mapping[str, types.MetadataValue]) -> int:
    """Encoded size of a metadata map: the sum of field_size, computed inline because every
    match of every search passes here."""
    size = 0
    for key, value in metadata.items():
        kind = type(value)
        if kind is str:
            payload = len(value) if value.isascii() else utf8_length(value)  # type: ignore[union-attr, arg-type]
            inner = payload + 2 if payload < 128 else _delimited(payload)
        elif kind is int and 0 <= value < 128:  # type: ignore[operator]
            inner = 2
        elif kind is float or kind is bool:
            inner = 9 if kind is float else 2
        else:
            inner = value_size(value)
        key_size = len(key) if key.isascii() else utf8_length(key)
        entry = (key_size + 2 if key_size < 128 else _delimited(key_size)) + (
            inner + 2 if inner < 128 else _delimited(inner)
        )
        size += entry + 2 if entry < 128 else _delimited(entry)
    return size


def ids_size(ids: Iterable[str]) -> int:
    """Encoded size of a repeated string field holding `ids`."""
    return sum(_delimited(utf8_length(i)) for i in ids)


def entry_size(value: types.Entry | types.Match) -> int:
    """Encoded size of an Entry or Match as an element of a response's repeated field (for a
    Match an upper bound: a zero score takes no bytes)."""
    size = _delimited(utf8_length(value.id)) + metadata_size(value.metadata)
    if value.omitted_keys:
        size += ids_size(value.omitted_keys)
    if value.vector is not None and len(value.vector):
        size += _delimited(4 * len(value.vector))
    if isinstance(value, types.Match):
        size += 5
        # vector_score, keyword_score, hybrid_score: 5 bytes each when set
        size += 5 * sum(
            score is not None
            for score in (value.vector_score, value.keyword_score, value.hybrid_score)
        )
    return _delimited(size)
