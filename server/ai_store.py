"""nachbar-db over gRPC as the vector store nachbar-ai talks to (nachbar.ai.vector_store).

Filters, creation options and store descriptions stay protobuf messages: the pipeline passes
them through, so a filter travels from the AIService request to the DBService request as is.
Metadata is decoded once on the way in and encoded once on the way out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import grpc

from nachbar.ai.vector_store import (
    FloatArray,
    Hits,
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
from nachbar.v1 import common_pb2, db_pb2, db_pb2_grpc, targets
from nachbar.v1.codec import SEARCH_MODES, fill_metadata, metadata_from_proto

PING_TIMEOUT_SECONDS = 2.0

Request = TypeVar("Request")
Response = TypeVar("Response")


@dataclass(frozen=True)
class DBStoreOptions:
    """The db settings of a store nachbar-ai creates; the pipeline picks its dimension."""

    metric: common_pb2.Metric.ValueType = common_pb2.METRIC_COSINE
    index: common_pb2.IndexConfig = field(default_factory=common_pb2.IndexConfig)
    predicate_indexes: tuple[str, ...] = ()


def record(info: db_pb2.StoreInfo) -> StoreRecord[db_pb2.StoreInfo]:
    return StoreRecord(info.name, info.store_id, info.dimension, info.store_metadata, info)


def _entry(proto: db_pb2.Entry) -> StoredEntry:
    return StoredEntry(proto.id, metadata_from_proto(proto.metadata))


class DBVectorStore:
    """A gRPC channel to nachbar-db. Thread-safe."""

    def __init__(self, address: str, *, timeout: float, max_message_bytes: int) -> None:
        self.address = address
        self._timeout = timeout
        # Several nachbar-db replicas are balanced round-robin; idempotent calls are retried on
        # UNAVAILABLE (one replica stopping), as in the clients.
        target, options = targets.channel_options(address, targets.DB_SERVICE)
        self._channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                *options,
            ],
        )
        self._stub = db_pb2_grpc.DBServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def reachable(self) -> bool:
        try:
            self._stub.Ping(db_pb2.PingRequest(), timeout=PING_TIMEOUT_SECONDS)
        except grpc.RpcError:
            return False
        return True

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
        response = self._call(self._stub.CreateStore, request)
        return record(response.store), response.created

    def get_store(self, name: str) -> StoreRecord[db_pb2.StoreInfo]:
        response = self._call(self._stub.GetStore, db_pb2.GetStoreRequest(store=name))
        return record(response.store)

    def list_stores(self) -> list[StoreRecord[db_pb2.StoreInfo]]:
        response = self._call(self._stub.ListStores, db_pb2.ListStoresRequest())
        return [record(info) for info in response.stores]

    def drop_store(self, name: str, *, missing_ok: bool, expected_store_id: int) -> bool:
        request = db_pb2.DropStoreRequest(
            store=name, missing_ok=missing_ok, expected_store_id=expected_store_id
        )
        return bool(self._call(self._stub.DropStore, request).dropped)

    def upsert(
        self, store: str, entries: Sequence[VectorEntry], *, expected_store_id: int
    ) -> WriteCounts:
        request = db_pb2.UpsertRequest(store=store, expected_store_id=expected_store_id)
        add = request.entries.add
        for entry in entries:
            proto = add(id=entry.id, vector=entry.vector.tolist())
            fill_metadata(proto.metadata, entry.metadata)
        response = self._call(self._stub.Upsert, request)
        return WriteCounts(response.inserted, response.updated)

    def search(
        self,
        store: str,
        vector: FloatArray,
        k: int,
        *,
        filter: common_pb2.Filter | None,
        mode: str,
        ef: int,
        expected_store_id: int,
    ) -> Hits:
        request = db_pb2.GetSimNRequest(
            store=store,
            query=vector.tolist(),
            k=k,
            mode=SEARCH_MODES[mode],
            ef=ef,
            expected_store_id=expected_store_id,
        )
        if filter is not None:
            request.filter.CopyFrom(filter)
        response = self._call(self._stub.GetSimN, request)
        matches = [
            StoredMatch(m.id, m.similarity, metadata_from_proto(m.metadata))
            for m in response.matches
        ]
        return Hits(matches, response.plan)

    def get(
        self, store: str, ids: Sequence[str], *, expected_store_id: int
    ) -> tuple[list[StoredEntry], list[str]]:
        request = db_pb2.GetKeyRequest(
            store=store, ids=list(ids), expected_store_id=expected_store_id
        )
        response = self._call(self._stub.GetKey, request)
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
        response = self._call(self._stub.GetByPredicate, request)
        return StoredPage([_entry(e) for e in response.entries], response.next_page_token)

    def delete(self, store: str, ids: Sequence[str], *, expected_store_id: int) -> int:
        request = db_pb2.DeleteKeysRequest(
            store=store, ids=list(ids), expected_store_id=expected_store_id
        )
        return int(self._call(self._stub.DeleteKeys, request).deleted)

    def delete_by_filter(
        self, store: str, filter: common_pb2.Filter | None, *, expected_store_id: int
    ) -> int:
        request = db_pb2.DeleteByPredicateRequest(store=store, expected_store_id=expected_store_id)
        if filter is not None:
            request.filter.CopyFrom(filter)
        return int(self._call(self._stub.DeleteByPredicate, request).deleted)

    # -- internals ------------------------------------------------------------------------------

    def _call(
        self, method: grpc.UnaryUnaryMultiCallable[Request, Response], request: Request
    ) -> Response:
        try:
            return method(request, timeout=self._timeout)
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
