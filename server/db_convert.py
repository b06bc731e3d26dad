"""Protobuf messages <-> nachbar.db domain objects."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from nachbar.db import filters, types
from nachbar.server.errors import RequestError
from nachbar.v1 import common_pb2, db_pb2
from nachbar.v1.codec import fill_metadata, metadata_from_proto

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


def entry_to_proto(value: types.Entry) -> db_pb2.Entry:
    out = db_pb2.Entry(id=value.id)
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
    return out


def filter_from_proto(proto: common_pb2.Filter, path: str = "filter") -> filters.Filter:
    kind = proto.WhichOneof("kind")
    if kind == "condition":
        cond = proto.condition
        try:
            op = OP_FROM_PROTO[cond.op]
        except KeyError:
            raise RequestError(f"{path}: condition on {cond.field!r} has no operator") from None
        value = None
        if cond.HasField("value"):
            try:
                value = metadata_from_proto({"v": cond.value})["v"]
            except ValueError:
                raise RequestError(
                    f"{path}: condition on {cond.field!r} has an empty value"
                ) from None
        values = tuple(metadata({str(i): v for i, v in enumerate(cond.values)}).values())
        return filters.Condition(field=cond.field, op=op, value=value, values=values)
    if kind in ("all_of", "any_of"):
        children = [
            filter_from_proto(f, f"{path}.{kind}[{i}]")
            for i, f in enumerate(getattr(proto, kind).filters)
        ]
        if not children:
            raise RequestError(f"{path}.{kind} is empty; give at least one filter")
        return (
            filters.AllOf(tuple(children)) if kind == "all_of" else filters.AnyOf(tuple(children))
        )
    if kind == "negate":
        return filters.Not(filter_from_proto(proto.negate, f"{path}.negate"))
    raise RequestError(f"{path} is empty; set condition, all_of, any_of or negate")


def optional_filter(holder: object, field: str = "filter") -> filters.Filter | None:
    if not holder.HasField(field):  # type: ignore[attr-defined]
        return None
    return filter_from_proto(getattr(holder, field))
