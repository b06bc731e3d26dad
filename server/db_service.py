"""DBService: converts requests, calls nachbar.db, converts back."""

from __future__ import annotations

import time
from importlib.metadata import version

import grpc
import numpy as np

from nachbar.db.interface import Engine
from nachbar.server import db_convert as conv
from nachbar.server.errors import RequestError, servicer
from nachbar.v1 import db_pb2, db_pb2_grpc


@servicer
class DBServicer(db_pb2_grpc.DBServiceServicer):
    def __init__(
        self,
        db: Engine,
        *,
        fsync: str,
        max_message_bytes: int,
        engine: str = "embedded",
        consistency: str = "strong",
    ) -> None:
        self._db = db
        self._fsync = fsync
        self._engine = engine
        self._consistency = consistency
        self._max_message_bytes = max_message_bytes
        self._started = time.monotonic()

    def CreateStore(
        self, request: db_pb2.CreateStoreRequest, context: grpc.ServicerContext
    ) -> db_pb2.CreateStoreResponse:
        info, created = self._db.create_store(
            conv.store_spec(request), if_not_exists=request.if_not_exists
        )
        return db_pb2.CreateStoreResponse(store=conv.store_info(info), created=created)

    def DropStore(
        self, request: db_pb2.DropStoreRequest, context: grpc.ServicerContext
    ) -> db_pb2.DropStoreResponse:
        return db_pb2.DropStoreResponse(
            dropped=self._db.drop_store(
                request.store,
                missing_ok=request.missing_ok,
                expected_store_id=request.expected_store_id,
            )
        )

    def ListStores(
        self, request: db_pb2.ListStoresRequest, context: grpc.ServicerContext
    ) -> db_pb2.ListStoresResponse:
        return db_pb2.ListStoresResponse(
            stores=[conv.store_info(s) for s in self._db.list_stores()]
        )

    def GetStore(
        self, request: db_pb2.GetStoreRequest, context: grpc.ServicerContext
    ) -> db_pb2.GetStoreResponse:
        return db_pb2.GetStoreResponse(store=conv.store_info(self._db.get_store(request.store)))

    def Upsert(
        self, request: db_pb2.UpsertRequest, context: grpc.ServicerContext
    ) -> db_pb2.UpsertResponse:
        result = self._db.upsert(
            request.store,
            [conv.entry(e) for e in request.entries],
            expected_store_id=request.expected_store_id,
        )
        return db_pb2.UpsertResponse(inserted=result.inserted, updated=result.updated)

    def GetKey(
        self, request: db_pb2.GetKeyRequest, context: grpc.ServicerContext
    ) -> db_pb2.GetKeyResponse:
        found, missing = self._db.get_keys(
            request.store,
            list(request.ids),
            include_vectors=request.include_vectors,
            expected_store_id=request.expected_store_id,
        )
        return db_pb2.GetKeyResponse(
            entries=[conv.entry_to_proto(e) for e in found], missing_ids=missing
        )

    def GetByPredicate(
        self, request: db_pb2.GetByPredicateRequest, context: grpc.ServicerContext
    ) -> db_pb2.GetByPredicateResponse:
        page = self._db.get_by_predicate(
            request.store,
            conv.optional_filter(request),
            limit=request.limit or 100,
            page_token=request.page_token,
            include_vectors=request.include_vectors,
            expected_store_id=request.expected_store_id,
        )
        return db_pb2.GetByPredicateResponse(
            entries=[conv.entry_to_proto(e) for e in page.entries],
            next_page_token=page.next_page_token,
        )

    def GetSimN(
        self, request: db_pb2.GetSimNRequest, context: grpc.ServicerContext
    ) -> db_pb2.GetSimNResponse:
        result = self._db.get_sim_n(
            request.store,
            np.asarray(request.query, dtype=np.float32),
            request.k,
            filter=conv.optional_filter(request),
            mode=conv.mode(request.mode),
            ef=request.ef,
            include_vectors=request.include_vectors,
            expected_store_id=request.expected_store_id,
        )
        return conv.search_response(result)

    def DeleteKeys(
        self, request: db_pb2.DeleteKeysRequest, context: grpc.ServicerContext
    ) -> db_pb2.DeleteResponse:
        deleted = self._db.delete_keys(
            request.store, list(request.ids), expected_store_id=request.expected_store_id
        )
        return db_pb2.DeleteResponse(deleted=deleted)

    def DeleteByPredicate(
        self, request: db_pb2.DeleteByPredicateRequest, context: grpc.ServicerContext
    ) -> db_pb2.DeleteResponse:
        flt = conv.optional_filter(request)
        if flt is None:
            raise RequestError(
                f"DeleteByPredicate on {request.store!r} needs a filter; "
                "to delete everything, use DropStore"
            )
        deleted = self._db.delete_by_predicate(
            request.store, flt, expected_store_id=request.expected_store_id
        )
        return db_pb2.DeleteResponse(deleted=deleted)

    def CreatePredIndex(
        self, request: db_pb2.CreatePredIndexRequest, context: grpc.ServicerContext
    ) -> db_pb2.CreatePredIndexResponse:
        created = self._db.create_pred_index(request.store, list(request.fields))
        return db_pb2.CreatePredIndexResponse(created=created)

    def DropPredIndex(
        self, request: db_pb2.DropPredIndexRequest, context: grpc.ServicerContext
    ) -> db_pb2.DropPredIndexResponse:
        dropped = self._db.drop_pred_index(
            request.store, list(request.fields), missing_ok=request.missing_ok
        )
        return db_pb2.DropPredIndexResponse(dropped=dropped)

    def Info(
        self, request: db_pb2.InfoRequest, context: grpc.ServicerContext
    ) -> db_pb2.InfoResponse:
        return db_pb2.InfoResponse(
            version=version("nachbar"),
            store_count=len(self._db.list_stores()),
            fsync_policy=self._fsync,
            max_message_bytes=self._max_message_bytes,
            uptime_seconds=time.monotonic() - self._started,
            engine=self._engine,
            consistency=self._consistency,
        )

    def Ping(
        self, request: db_pb2.PingRequest, context: grpc.ServicerContext
    ) -> db_pb2.PingResponse:
        return db_pb2.PingResponse()
