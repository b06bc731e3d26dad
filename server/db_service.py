"""DBService: converts requests, calls nachbar.db, converts back."""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib.metadata import version

import grpc
import numpy as np

from nachbar.db import explore
from nachbar.db.filters import Filter
from nachbar.db.interface import Engine
from nachbar.server import db_convert as conv
from nachbar.server import db_responses as responses
from nachbar.server.errors import RequestError, servicer
from nachbar.v1 import db_pb2, db_pb2_grpc


@servicer
class DBServicer(db_pb2_grpc.DBServiceServicer):
    def __init__(
        self,
        database: Callable[[], Engine],
        *,
        fsync: str,
        max_message_bytes: int,
        max_filter_bytes: int = 0,
        engine: str = "embedded",
        consistency: str = "strong",
    ) -> None:
        # A callable, because the server answers while the database is still opening: until
        # then it raises NotReadyError (UNAVAILABLE).
        self._database = database
        self._fsync = fsync
        self._engine = engine
        self._consistency = consistency
        self._max_message_bytes = max_message_bytes
        self._max_filter_bytes = max_filter_bytes
        self._started = time.monotonic()

    @property
    def _db(self) -> Engine:
        return self._database()

    def _limit(self, requested: int) -> responses.ResponseLimit:
        return responses.ResponseLimit.of(self._max_message_bytes, requested)

    def _filter(self, request: object) -> Filter | None:
        return conv.optional_filter(
            request, limits=self._db.filter_limits, max_bytes=self._max_filter_bytes
        )

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
            conv.upsert_entries(request.entries),
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
            metadata=conv.metadata_selection(request),
            expected_store_id=request.expected_store_id,
        )
        return responses.get_key(
            request.store,
            found,
            missing,
            self._limit(request.max_response_bytes),
            allow_partial=request.allow_partial,
        )

    def GetByPredicate(
        self, request: db_pb2.GetByPredicateRequest, context: grpc.ServicerContext
    ) -> db_pb2.GetByPredicateResponse:
        page = self._db.get_by_predicate(
            request.store,
            self._filter(request),
            limit=request.limit or 100,
            page_token=request.page_token,
            include_vectors=request.include_vectors,
            metadata=conv.metadata_selection(request),
            expected_store_id=request.expected_store_id,
        )
        return responses.page(request.store, page, self._limit(request.max_response_bytes))

    def GetSimN(
        self, request: db_pb2.GetSimNRequest, context: grpc.ServicerContext
    ) -> db_pb2.GetSimNResponse:
        mmr = conv.mmr_options(request)
        recommend = conv.recommend_options(request)
        if mmr is not None or recommend is not None:
            # Above the engine: MMR and examples reach it as plain searches.
            query = np.asarray(request.query, dtype=np.float32)
            result = explore.get_sim_n(
                self._db,
                request.store,
                query if len(query) or recommend is None else None,
                request.k,
                mmr=mmr,
                recommend=recommend,
                filter=self._filter(request),
                mode=conv.mode(request.mode),
                ef=request.ef,
                include_vectors=request.include_vectors,
                metadata=conv.metadata_selection(request),
                expected_store_id=request.expected_store_id,
                keywords=bool(request.keywords) or request.HasField("hybrid"),
            )
            return responses.search(request.store, result, self._limit(request.max_response_bytes))
        result = self._db.get_sim_n(
            request.store,
            np.asarray(request.query, dtype=np.float32),
            request.k,
            filter=self._filter(request),
            mode=conv.mode(request.mode),
            ef=request.ef,
            include_vectors=request.include_vectors,
            metadata=conv.metadata_selection(request),
            expected_store_id=request.expected_store_id,
            keywords=request.keywords,
            fusion=conv.hybrid_options(request.hybrid),
        )
        return responses.search(request.store, result, self._limit(request.max_response_bytes))

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
        flt = self._filter(request)
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

    def CreateKeywordIndex(
        self, request: db_pb2.KeywordIndexCreateRequest, context: grpc.ServicerContext
    ) -> db_pb2.KeywordIndexCreateResponse:
        created, indexed = self._db.create_keyword_index(request.store, list(request.index.fields))
        return db_pb2.KeywordIndexCreateResponse(created=created, indexed=indexed)

    def DropKeywordIndex(
        self, request: db_pb2.KeywordIndexDropRequest, context: grpc.ServicerContext
    ) -> db_pb2.KeywordIndexDropResponse:
        dropped = self._db.drop_keyword_index(request.store, missing_ok=request.missing_ok)
        return db_pb2.KeywordIndexDropResponse(dropped=dropped)

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
        # UNAVAILABLE while the stores load, like every other call: nachbar-ai pings to know
        # whether it can use this server.
        self._database()
        return db_pb2.PingResponse()
