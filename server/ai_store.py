"""nachbar-db over gRPC as the vector store nachbar-ai talks to (nachbar.ai.vector_store).

Filters, creation options and store descriptions stay protobuf messages: the pipeline passes
them through, so a filter travels from the AIService request to the DBService request as is.
Metadata is decoded once on the way in and encoded once on the way out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry import propagate, trace

from nachbar.ai.vector_store import (
    NO_EXPLORE,
    Explore,
    FloatArray,
    Hits,
    KeywordSearch,
    StoreChangedError,
    StoredEntry,
    StoredMatch,
    StoredPage,
    StoreNotFoundError,
    StoreRecord,
    VectorEntry,
    WriteCounts,
)
from nachbar.server.errors import NotReadyError, UpstreamError
from nachbar.server.logs import REQUEST_ID, REQUEST_ID_HEADER
from nachbar.server.tracing import tracer
from nachbar.v1 import common_pb2, db_pb2, db_pb2_grpc, targets
from nachbar.v1.codec import SEARCH_MODES, fill_metadata, metadata_from_proto

PING_TIMEOUT_SECONDS = 2.0
DB_SERVICE = db_pb2.DESCRIPTOR.services_by_name["DBService"].full_name


# nachbar-ai's recommend strategy names as nachbar-db's enum.
RECOMMEND_STRATEGIES = {
    "average_vector": db_pb2.RECOMMEND_STRATEGY_AVERAGE_VECTOR,
    "best_score": db_pb2.RECOMMEND_STRATEGY_BEST_SCORE,
}


@dataclass(frozen=True)
class DBStoreOptions:
    """The db settings of a store nachbar-ai creates; the pipeline picks its dimension."""

    metric: common_pb2.Metric.ValueType = common_pb2.METRIC_COSINE
    index: common_pb2.IndexConfig = field(default_factory=common_pb2.IndexConfig)
    predicate_indexes: tuple[str, ...] = ()
    # Metadata fields of a keyword index; None: no keyword index.
    keyword_fields: tuple[str, ...] | None = None


HYBRID_FUSIONS = {"rrf": db_pb2.HYBRID_FUSION_RRF, "blend": db_pb2.HYBRID_FUSION_BLEND}


def _hybrid_options(keywords: KeywordSearch) -> db_pb2.HybridOptions:
    out = db_pb2.HybridOptions(
        fusion=HYBRID_FUSIONS[keywords.fusion], rrf_k=keywords.rrf_k, candidates=keywords.candidates
    )
    if keywords.vector_weight is not None:
        out.vector_weight = keywords.vector_weight
    return out


def record(info: db_pb2.StoreInfo) -> StoreRecord[db_pb2.StoreInfo]:
    return StoreRecord(info.name, info.store_id, info.dimension, info.store_metadata, info)


def _entry(proto: db_pb2.Entry) -> StoredEntry:
    return StoredEntry(proto.id, metadata_from_proto(proto.metadata))


class DBVectorStore:
    """A gRPC channel to nachbar-db. Thread-safe.

    Each call carries nachbar-ai's own API key (`api_key`, "" for none), the request id of the
    request it serves, and with `traced` a client span and its W3C `traceparent`."""

    def __init__(
        self,
        address: str,
        *,
        timeout: float,
        max_message_bytes: int,
        api_key: str = "",
        credentials: grpc.ChannelCredentials | None = None,
        traced: bool = False,
    ) -> None:
        self.address = address
        self._timeout = timeout
        # Several nachbar-db replicas are balanced round-robin; idempotent calls are retried on
        # UNAVAILABLE (one replica stopping), as in the clients.
        target, balancing = targets.channel_options(address, targets.DB_SERVICE)
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            *balancing,
        ]
        self._channel = (
            grpc.insecure_channel(target, options=options)
            if credentials is None
            else grpc.secure_channel(target, credentials, options=options)
        )
        self._stub = db_pb2_grpc.DBServiceStub(self._channel)
        self._key_metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {api_key}"),) if api_key else ()
        )
        self._tracer = tracer() if traced else None

    def close(self) -> None:
        self._channel.close()

    def reachable(self) -> bool:
        return self._ping() is None

    def key_refusal(self) -> str | None:
        """nachbar-db's words when it answers but refuses nachbar-ai's API key; else None."""
        error = self._ping()
        if error is None:
            return None
        code = error.code()
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return f"{code.name}: {error.details()}"
        return None

    def _ping(self) -> grpc.RpcError | None:
        try:
            self._stub.Ping(
                db_pb2.PingRequest(), timeout=PING_TIMEOUT_SECONDS, metadata=self._key_metadata
            )
        except grpc.RpcError as error:
            return error
        return None

    # -- the VectorStore protocol ----------------------------------------------------------------

    def create_store(
        self,
        name: str,
        dimension: int,
        store_metadata: Mapping[str, str],
        options: DBStoreOptions,
        *,
        if_not_exists: bool,
    ) -> tuple[StoreRecord[db_pb2.StoreInfo], bool]:
        request = db_pb2.CreateStoreRequest(
            store=name,
            dimension=dimension,
            metric=options.metric,
            index=options.index,
            predicate_indexes=list(options.predicate_indexes),
            store_metadata=dict(store_metadata),
            if_not_exists=if_not_exists,
        )
        if options.keyword_fields is not None:
            request.keyword_index.fields.extend(options.keyword_fields)
        response = self._call("CreateStore", request)
        return record(response.store), response.created

    def get_store(self, name: str) -> StoreRecord[db_pb2.StoreInfo]:
        response = self._call("GetStore", db_pb2.GetStoreRequest(store=name))
        return record(response.store)

    def list_stores(self) -> list[StoreRecord[db_pb2.StoreInfo]]:
        response = self._call("ListStores", db_pb2.ListStoresRequest())
        return [record(info) for info in response.stores]

    def drop_store(self, name: str, *, missing_ok: bool, expected_store_id: int) -> bool:
        request = db_pb2.DropStoreRequest(
            store=name, missing_ok=missing_ok, expected_store_id=expected_store_id
        )
        return bool(self._call("DropStore", request).dropped)

    def upsert(
        self, store: str, entries: Sequence[VectorEntry], *, expected_store_id: int
    ) -> WriteCounts:
        request = db_pb2.UpsertRequest(store=store, expected_store_id=expected_store_id)
        add = request.entries.add
        for entry in entries:
            proto = add(id=entry.id, vector=entry.vector.tolist())
            fill_metadata(proto.metadata, entry.metadata)
        response = self._call("Upsert", request)
        return WriteCounts(response.inserted, response.updated)

    def search(
        self,
        store: str,
        vector: FloatArray | None,
        k: int,
        *,
        filter: common_pb2.Filter | None,
        mode: str,
        ef: int,
        expected_store_id: int,
        explore: Explore = NO_EXPLORE,
        keywords: KeywordSearch | None = None,
    ) -> Hits:
        request = db_pb2.GetSimNRequest(
            store=store,
            query=vector.tolist() if vector is not None else [],
            k=k,
            mode=SEARCH_MODES[mode],
            ef=ef,
            expected_store_id=expected_store_id,
            positive_ids=explore.positive_ids,
            negative_ids=explore.negative_ids,
            recommend_candidates=explore.recommend_candidates,
            # Sent as asked, even when inconsistent: nachbar-db owns the rules of these options.
            mmr_candidates=explore.mmr_candidates,
            recommend_strategy=RECOMMEND_STRATEGIES[explore.strategy],
        )
        if explore.mmr_lambda is not None:
            request.mmr_lambda = explore.mmr_lambda
        if filter is not None:
            request.filter.CopyFrom(filter)
        if keywords is not None:
            request.keywords = keywords.text
            request.hybrid.CopyFrom(_hybrid_options(keywords))
        response = self._call("GetSimN", request)
        matches = [
            StoredMatch(
                m.id,
                m.similarity,
                metadata_from_proto(m.metadata),
                m.vector_score if m.HasField("vector_score") else None,
                m.keyword_score if m.HasField("keyword_score") else None,
                m.hybrid_score if m.HasField("hybrid_score") else None,
            )
            for m in response.matches
        ]
        return Hits(matches, response.plan)

    def get(
        self, store: str, ids: Sequence[str], *, expected_store_id: int
    ) -> tuple[list[StoredEntry], list[str]]:
        request = db_pb2.GetKeyRequest(
            store=store, ids=list(ids), expected_store_id=expected_store_id
        )
        response = self._call("GetKey", request)
        return [_entry(e) for e in response.entries], list(response.missing_ids)

    def get_by_filter(
        self,
        store: str,
        filter: common_pb2.Filter | None,
        *,
        limit: int,
        page_token: str,
        expected_store_id: int,
    ) -> StoredPage:
        request = db_pb2.GetByPredicateRequest(
            store=store, limit=limit, page_token=page_token, expected_store_id=expected_store_id
        )
        if filter is not None:
            request.filter.CopyFrom(filter)
        response = self._call("GetByPredicate", request)
        return StoredPage([_entry(e) for e in response.entries], response.next_page_token)

    def delete(self, store: str, ids: Sequence[str], *, expected_store_id: int) -> int:
        request = db_pb2.DeleteKeysRequest(
            store=store, ids=list(ids), expected_store_id=expected_store_id
        )
        return int(self._call("DeleteKeys", request).deleted)

    def delete_by_filter(
        self, store: str, filter: common_pb2.Filter | None, *, expected_store_id: int
    ) -> int:
        request = db_pb2.DeleteByPredicateRequest(store=store, expected_store_id=expected_store_id)
        if filter is not None:
            request.filter.CopyFrom(filter)
        return int(self._call("DeleteByPredicate", request).deleted)

    def call(self, method: str, request: Any) -> Any:
        """Any DBService method, with this channel's key, request id and error mapping."""
        return self._call(method, request)

    # -- internals ------------------------------------------------------------------------------

    def _call(self, method: str, request: Any) -> Any:
        metadata = self._key_metadata
        request_id = REQUEST_ID.get()
        if request_id is not None:
            metadata += ((REQUEST_ID_HEADER, request_id),)
        if self._tracer is None:
            return self._send(method, request, metadata)
        with self._tracer.start_as_current_span(
            f"{DB_SERVICE}/{method}",
            kind=trace.SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.service": DB_SERVICE, "rpc.method": method},
        ):
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            return self._send(method, request, metadata + tuple(carrier.items()))

    def _send(self, method: str, request: Any, metadata: tuple[tuple[str, str], ...]) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=self._timeout, metadata=metadata)
        except grpc.RpcError as error:
            raise self._relay(error) from None

    def _relay(self, error: grpc.RpcError) -> Exception:
        code: grpc.StatusCode = error.code()
        details: str = error.details() or code.name
        if code is grpc.StatusCode.UNAVAILABLE:
            return NotReadyError(
                f"nachbar-db at {self.address} is unreachable ({details}); start it or point "
                "nachbar-ai at it with --db-host/--db-port, then retry"
            )
        if code is grpc.StatusCode.NOT_FOUND:
            return StoreNotFoundError(details)
        if code is grpc.StatusCode.ABORTED:
            return StoreChangedError(details)
        return UpstreamError(code, details)
