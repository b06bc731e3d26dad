"""AIService: converts requests, calls the nachbar-ai pipeline (nachbar.ai.pipeline), converts
back. Every decision about a request is the pipeline's or the model layer's."""

from __future__ import annotations

from importlib.metadata import version

import grpc

from nachbar.ai.pipeline import AIPipeline
from nachbar.ai.tailoring import Kind, Tailoring
from nachbar.server import ai_convert as conv
from nachbar.server.ai_store import DBStoreOptions, DBVectorStore
from nachbar.server.errors import servicer
from nachbar.v1 import ai_pb2, ai_pb2_grpc, common_pb2, db_pb2

Pipeline = AIPipeline[common_pb2.Filter, DBStoreOptions, db_pb2.StoreInfo]


@servicer
class AIServicer(ai_pb2_grpc.AIServiceServicer):
    def __init__(
        self,
        pipeline: Pipeline,
        db: DBVectorStore,
        *,
        max_message_bytes: int,
        tailoring: Tailoring,
    ) -> None:
        self._pipeline = pipeline
        self._tailoring = tailoring
        self._db = db
        self._max_message_bytes = max_message_bytes

    def CreateStore(
        self, request: ai_pb2.CreateStoreRequest, context: grpc.ServicerContext
    ) -> ai_pb2.CreateStoreResponse:
        store, created = self._pipeline.create_store(
            request.store,
            query_model=request.query_model,
            index_model=request.index_model,
            store_original=request.store_original,
            options=conv.store_options(request),
            if_not_exists=request.if_not_exists,
        )
        return ai_pb2.CreateStoreResponse(store=conv.store_info(store), created=created)

    def DropStore(
        self, request: ai_pb2.DropStoreRequest, context: grpc.ServicerContext
    ) -> ai_pb2.DropStoreResponse:
        dropped = self._pipeline.drop_store(request.store, missing_ok=request.missing_ok)
        return ai_pb2.DropStoreResponse(dropped=dropped)

    def ListStores(
        self, request: ai_pb2.ListStoresRequest, context: grpc.ServicerContext
    ) -> ai_pb2.ListStoresResponse:
        stores = self._pipeline.list_stores()
        return ai_pb2.ListStoresResponse(stores=[conv.store_info(s) for s in stores])

    def GetStore(
        self, request: ai_pb2.GetStoreRequest, context: grpc.ServicerContext
    ) -> ai_pb2.GetStoreResponse:
        store = self._pipeline.get_store(request.store)
        return ai_pb2.GetStoreResponse(store=conv.store_info(store))

    def Upsert(
        self, request: ai_pb2.UpsertRequest, context: grpc.ServicerContext
    ) -> ai_pb2.UpsertResponse:
        outcome = self._pipeline.upsert(
            request.store,
            conv.upsert_items(request),
            truncation=conv.truncation(request.truncation),
        )
        return ai_pb2.UpsertResponse(
            inserted=outcome.inserted, updated=outcome.updated, ids=outcome.ids
        )

    def GetSimN(
        self, request: ai_pb2.GetSimNRequest, context: grpc.ServicerContext
    ) -> ai_pb2.GetSimNResponse:
        outcome = self._pipeline.search(request.store, conv.search_request(request))
        return conv.search_response(outcome)

    def GetKey(
        self, request: ai_pb2.GetKeyRequest, context: grpc.ServicerContext
    ) -> ai_pb2.GetKeyResponse:
        entries, missing = self._pipeline.get(request.store, list(request.ids))
        return ai_pb2.GetKeyResponse(entries=[conv.entry(e) for e in entries], missing_ids=missing)

    def GetByPredicate(
        self, request: ai_pb2.GetByPredicateRequest, context: grpc.ServicerContext
    ) -> ai_pb2.GetByPredicateResponse:
        page = self._pipeline.get_by_filter(
            request.store,
            conv.optional_filter(request),
            limit=request.limit,
            page_token=request.page_token,
        )
        return ai_pb2.GetByPredicateResponse(
            entries=[conv.entry(e) for e in page.entries], next_page_token=page.next_page_token
        )

    def DeleteKeys(
        self, request: ai_pb2.DeleteKeysRequest, context: grpc.ServicerContext
    ) -> db_pb2.DeleteResponse:
        return db_pb2.DeleteResponse(
            deleted=self._pipeline.delete(request.store, list(request.ids))
        )

    def DeleteByPredicate(
        self, request: ai_pb2.DeleteByPredicateRequest, context: grpc.ServicerContext
    ) -> db_pb2.DeleteResponse:
        deleted = self._pipeline.delete_by_filter(request.store, conv.optional_filter(request))
        return db_pb2.DeleteResponse(deleted=deleted)

    def Embed(
        self, request: ai_pb2.EmbedRequest, context: grpc.ServicerContext
    ) -> ai_pb2.EmbedResponse:
        payloads = [conv.payload(x, f"inputs[{i}]") for i, x in enumerate(request.inputs)]
        embeddings = self._pipeline.embed(
            request.model, payloads, truncation=conv.truncation(request.truncation)
        )
        return ai_pb2.EmbedResponse(
            embeddings=[ai_pb2.Embedding(values=v.tolist()) for v in embeddings.vectors],
            dimension=embeddings.dimension,
        )

    def Rerank(
        self, request: ai_pb2.RerankRequest, context: grpc.ServicerContext
    ) -> ai_pb2.RerankResponse:
        ranked = self._pipeline.rerank(
            request.model,
            request.query,
            list(request.documents),
            top_k=request.top_k,
            truncation=conv.truncation(request.truncation),
            sigmoid=request.sigmoid,
        )
        return ai_pb2.RerankResponse(
            results=[ai_pb2.RerankResult(index=r.index, score=r.score) for r in ranked]
        )

    def ListModels(
        self, request: ai_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> ai_pb2.ListModelsResponse:
        models = self._pipeline.list_models()
        return ai_pb2.ListModelsResponse(models=[conv.model_info(s) for s in models])

    def Info(
        self, request: ai_pb2.InfoRequest, context: grpc.ServicerContext
    ) -> ai_pb2.InfoResponse:
        return ai_pb2.InfoResponse(
            version=version("nachbar"),
            loaded_models=[s.spec.name for s in self._pipeline.list_models() if s.loaded],
            db_address=self._db.address,
            db_reachable=self._db.reachable(),
            max_message_bytes=self._max_message_bytes,
        )

    def Ping(
        self, request: ai_pb2.PingRequest, context: grpc.ServicerContext
    ) -> ai_pb2.PingResponse:
        return ai_pb2.PingResponse()

    # -- adapters and re-scorers (nachbar.ai.tailoring) -----------------------------------------

    def TrainAdapter(
        self, request: ai_pb2.TrainAdapterRequest, context: grpc.ServicerContext
    ) -> ai_pb2.TrainAdapterResponse:
        info = self._tailoring.train(
            Kind.ADAPTER,
            request.store,
            request.name,
            conv.train_examples(request.examples),
            conv.train_options(request.options),
        )
        return ai_pb2.TrainAdapterResponse(adapter=conv.trained_info(info))

    def GetAdapter(
        self, request: ai_pb2.GetAdapterRequest, context: grpc.ServicerContext
    ) -> ai_pb2.GetAdapterResponse:
        info = self._tailoring.get(Kind.ADAPTER, request.store, request.name)
        return ai_pb2.GetAdapterResponse(adapter=conv.trained_info(info))

    def ListAdapters(
        self, request: ai_pb2.ListAdaptersRequest, context: grpc.ServicerContext
    ) -> ai_pb2.ListAdaptersResponse:
        infos = self._tailoring.list(Kind.ADAPTER, request.store)
        return ai_pb2.ListAdaptersResponse(adapters=[conv.trained_info(i) for i in infos])

    def DropAdapter(
        self, request: ai_pb2.DropAdapterRequest, context: grpc.ServicerContext
    ) -> ai_pb2.DropAdapterResponse:
        dropped = self._tailoring.drop(
            Kind.ADAPTER, request.store, request.name, missing_ok=request.missing_ok
        )
        return ai_pb2.DropAdapterResponse(dropped=dropped)

    def TrainRescorer(
        self, request: ai_pb2.TrainRescorerRequest, context: grpc.ServicerContext
    ) -> ai_pb2.TrainRescorerResponse:
        info = self._tailoring.train(
            Kind.RESCORER,
            request.store,
            request.name,
            conv.train_examples(request.examples),
            conv.train_options(request.options),
        )
        return ai_pb2.TrainRescorerResponse(rescorer=conv.trained_info(info))

    def GetRescorer(
        self, request: ai_pb2.GetRescorerRequest, context: grpc.ServicerContext
    ) -> ai_pb2.GetRescorerResponse:
        info = self._tailoring.get(Kind.RESCORER, request.store, request.name)
        return ai_pb2.GetRescorerResponse(rescorer=conv.trained_info(info))

    def ListRescorers(
        self, request: ai_pb2.ListRescorersRequest, context: grpc.ServicerContext
    ) -> ai_pb2.ListRescorersResponse:
        infos = self._tailoring.list(Kind.RESCORER, request.store)
        return ai_pb2.ListRescorersResponse(rescorers=[conv.trained_info(i) for i in infos])

    def DropRescorer(
        self, request: ai_pb2.DropRescorerRequest, context: grpc.ServicerContext
    ) -> ai_pb2.DropRescorerResponse:
        dropped = self._tailoring.drop(
            Kind.RESCORER, request.store, request.name, missing_ok=request.missing_ok
        )
        return ai_pb2.DropRescorerResponse(dropped=dropped)
