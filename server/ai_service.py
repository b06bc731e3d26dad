"""AIService: embeds with nachbar.ai models and keeps vectors in nachbar-db via the db client."""

from __future__ import annotations

import time
from importlib.metadata import version

import grpc
import numpy as np

from nachbar.ai.errors import IncompatibleModelsError, InvalidInputError
from nachbar.ai.models import ModelManager, ModelStatus
from nachbar.ai.registry import ModelSpec
from nachbar.ai.text import Truncation
from nachbar.client import _db_calls as db_calls
from nachbar.client.db import DBClient
from nachbar.client.errors import NachbarError, Unavailable
from nachbar.client.values import Metadata, metadata_from_proto, metadata_to_proto
from nachbar.server import ai_bindings as bind
from nachbar.server.errors import NotReadyError, RequestError, servicer
from nachbar.v1 import ai_pb2, ai_pb2_grpc, common_pb2, db_pb2

TRUNCATION = {
    ai_pb2.TRUNCATION_POLICY_ERROR: Truncation.ERROR,
    ai_pb2.TRUNCATION_POLICY_TRUNCATE: Truncation.TRUNCATE,
}
MODALITY = {"text": ai_pb2.MODALITY_TEXT, "image": ai_pb2.MODALITY_IMAGE}
KIND = {
    "embedding": ai_pb2.MODEL_KIND_EMBEDDING,
    "cross_encoder": ai_pb2.MODEL_KIND_CROSS_ENCODER,
    "late_interaction": ai_pb2.MODEL_KIND_LATE_INTERACTION,
}
DEFAULT_RERANK_CANDIDATES = 20


def _truncation(value: ai_pb2.TruncationPolicy.ValueType) -> Truncation:
    try:
        return TRUNCATION[value]
    except KeyError:
        raise RequestError(f"unknown truncation policy {value}; use ERROR or TRUNCATE") from None


def _payload(item: ai_pb2.Input, where: str) -> str | bytes:
    kind = item.WhichOneof("kind")
    if kind is None:
        raise RequestError(f"{where}: input is empty; set text or image")
    value: str | bytes = getattr(item, kind)
    return value


def _input(payload: str | bytes) -> ai_pb2.Input:
    if isinstance(payload, str):
        return ai_pb2.Input(text=payload)
    return ai_pb2.Input(image=payload)


@servicer
class AIServicer(ai_pb2_grpc.AIServiceServicer):
    def __init__(self, models: ModelManager, db: DBClient, *, max_message_bytes: int) -> None:
        self._models = models
        self._db = db
        self._max_message_bytes = max_message_bytes
        self._started = time.monotonic()

    # -- helpers ------------------------------------------------------------------------------

    def _db_call(self, call: db_calls.Call[db_calls.T]) -> db_calls.T:
        try:
            return self._db.execute(call)
        except Unavailable as error:
            raise NotReadyError(
                f"nachbar-db at {self._db.address} is unreachable ({error.message}); start it "
                "or point nachbar-ai at it with --db-host/--db-port, then retry"
            ) from None

    def _binding(self, store: str) -> tuple[db_pb2.StoreInfo, bind.StoreBinding]:
        info = self._db_call(("GetStore", db_pb2.GetStoreRequest(store=store), lambda r: r.store))
        binding = bind.StoreBinding.from_store_metadata(info.store_metadata)
        if binding is None:
            raise RequestError(
                f"store {store!r} was created on nachbar-db directly and has no models; "
                "use the db service for it, or create a store through nachbar-ai"
            )
        return info, binding

    def _store_info(self, info: db_pb2.StoreInfo, binding: bind.StoreBinding) -> ai_pb2.AIStoreInfo:
        return ai_pb2.AIStoreInfo(
            name=info.name,
            query_model=binding.query_model,
            index_model=binding.index_model,
            store_original=binding.store_original,
            db_store=info,
        )

    def _embedding_spec(self, name: str, role: str) -> ModelSpec:
        if not name:
            raise RequestError(f"{role} is required; `nachbar models list` shows the choices")
        spec = self._models.spec(name)
        if spec.kind != "embedding":
            raise RequestError(
                f"{role} {name!r} is a {spec.kind.replace('_', '-')}, not an embedding model; "
                "pick an embedding model (see ListModels)"
            )
        return spec

    def _entry(self, proto: db_pb2.Entry | db_pb2.Match) -> tuple[Metadata, ai_pb2.Input | None]:
        user, original = bind.split_original(metadata_from_proto(proto.metadata))
        return user, (_input(original) if original is not None else None)

    def _ai_entry(self, proto: db_pb2.Entry) -> ai_pb2.AIEntry:
        user, original = self._entry(proto)
        out = ai_pb2.AIEntry(id=proto.id, metadata=metadata_to_proto(user))
        if original is not None:
            out.original.CopyFrom(original)
        return out

    # -- stores ---------------------------------------------------------------------------------

    def CreateStore(
        self, request: ai_pb2.CreateStoreRequest, context: grpc.ServicerContext
    ) -> ai_pb2.CreateStoreResponse:
        query = self._embedding_spec(request.query_model, "query_model")
        index = self._embedding_spec(request.index_model or request.query_model, "index_model")
        if query.space != index.space or query.dimension != index.dimension:
            raise IncompatibleModelsError(
                f"query model {query.name!r} (space {query.space!r}) and index model "
                f"{index.name!r} (space {index.space!r}) do not share an embedding space, so "
                "their vectors cannot be compared; pick two models of one space"
            )
        binding = bind.StoreBinding(query.name, index.name, request.store_original, index.space)
        db_request = db_pb2.CreateStoreRequest(
            store=request.store,
            dimension=index.dimension,
            metric=request.metric or common_pb2.METRIC_COSINE,
            index=request.index,
            predicate_indexes=list(request.predicate_indexes),
            store_metadata=binding.to_store_metadata(),
            if_not_exists=request.if_not_exists,
        )
        response = self._db_call(("CreateStore", db_request, lambda r: r))
        existing = bind.StoreBinding.from_store_metadata(response.store.store_metadata)
        if not response.created and existing != binding:
            raise RequestError(
                f"store {request.store!r} already exists with other models or options "
                f"({existing}); drop it first or use another name"
            )
        return ai_pb2.CreateStoreResponse(
            store=self._store_info(response.store, binding), created=response.created
        )

    def DropStore(
        self, request: ai_pb2.DropStoreRequest, context: grpc.ServicerContext
    ) -> ai_pb2.DropStoreResponse:
        if not request.missing_ok:
            self._binding(request.store)  # refuse to drop stores nachbar-ai does not own
        dropped = self._db_call(db_calls.drop_store(request.store, request.missing_ok))
        return ai_pb2.DropStoreResponse(dropped=dropped)

    def ListStores(
        self, request: ai_pb2.ListStoresRequest, context: grpc.ServicerContext
    ) -> ai_pb2.ListStoresResponse:
        stores = self._db_call(("ListStores", db_pb2.ListStoresRequest(), lambda r: r.stores))
        out = []
        for info in stores:
            binding = bind.StoreBinding.from_store_metadata(info.store_metadata)
            if binding is not None:
                out.append(self._store_info(info, binding))
        return ai_pb2.ListStoresResponse(stores=out)

    def GetStore(
        self, request: ai_pb2.GetStoreRequest, context: grpc.ServicerContext
    ) -> ai_pb2.GetStoreResponse:
        return ai_pb2.GetStoreResponse(store=self._store_info(*self._binding(request.store)))

    # -- data -----------------------------------------------------------------------------------

    def Upsert(
        self, request: ai_pb2.UpsertRequest, context: grpc.ServicerContext
    ) -> ai_pb2.UpsertResponse:
        _, binding = self._binding(request.store)
        if not request.entries:
            raise RequestError(f"upsert into {request.store!r} has no entries; send at least one")
        payloads = [_payload(e.input, f"entries[{i}]") for i, e in enumerate(request.entries)]
        metadata: list[Metadata] = []
        for i, e in enumerate(request.entries):
            user = metadata_from_proto(e.metadata)
            bind.check_user_metadata(user, f"entries[{i}]")
            metadata.append(user)
        vectors = self._models.embed(
            binding.index_model, payloads, truncation=_truncation(request.truncation)
        )
        ids = [e.id or bind.content_id(p) for e, p in zip(request.entries, payloads, strict=True)]
        db_request = db_pb2.UpsertRequest(store=request.store)
        for entry_id, vector, user, payload in zip(ids, vectors, metadata, payloads, strict=True):
            if binding.store_original:
                key = bind.ORIGINAL_TEXT if isinstance(payload, str) else bind.ORIGINAL_IMAGE
                user = {**user, key: payload}
            db_request.entries.append(
                db_pb2.Entry(id=entry_id, vector=vector.tolist(), metadata=metadata_to_proto(user))
            )
        result = self._db_call(("Upsert", db_request, lambda r: r))
        return ai_pb2.UpsertResponse(inserted=result.inserted, updated=result.updated, ids=ids)

    def GetSimN(
        self, request: ai_pb2.GetSimNRequest, context: grpc.ServicerContext
    ) -> ai_pb2.GetSimNResponse:
        _, binding = self._binding(request.store)
        if request.k <= 0:
            raise RequestError(f"k must be at least 1 (got {request.k})")
        query_model = binding.query_model
        if request.query_model_override:
            override = self._embedding_spec(request.query_model_override, "query_model_override")
            if override.space != binding.space:
                raise IncompatibleModelsError(
                    f"query_model_override {override.name!r} (space {override.space!r}) does "
                    f"not share store {request.store!r}'s space {binding.space!r}"
                )
            query_model = override.name
        query = _payload(request.query, "query")
        truncation = _truncation(request.truncation)
        vector = self._models.embed(query_model, [query], truncation=truncation)[0]
        rerank = request.rerank if request.HasField("rerank") else None
        fetch = request.k
        if rerank is not None:
            fetch = rerank.candidates or max(request.k, DEFAULT_RERANK_CANDIDATES)
            if fetch < request.k:
                raise RequestError(f"rerank.candidates ({fetch}) must be at least k ({request.k})")
        db_request = db_pb2.GetSimNRequest(
            store=request.store, query=vector.tolist(), k=fetch, mode=request.mode, ef=request.ef
        )
        if request.HasField("filter"):
            db_request.filter.CopyFrom(request.filter)
        result = self._db_call(("GetSimN", db_request, lambda r: r))
        matches = []
        for m in result.matches:
            user, original = self._entry(m)
            match = ai_pb2.AIMatch(id=m.id, similarity=m.score, metadata=metadata_to_proto(user))
            if original is not None:
                match.original.CopyFrom(original)
            matches.append(match)
        if rerank is not None:
            matches = self._rerank_matches(
                request.store, binding, query, matches, rerank, truncation
            )
        return ai_pb2.GetSimNResponse(matches=matches[: request.k], plan=result.plan)

    def _rerank_matches(
        self,
        store: str,
        binding: bind.StoreBinding,
        query: str | bytes,
        matches: list[ai_pb2.AIMatch],
        rerank: ai_pb2.RerankOptions,
        truncation: Truncation,
    ) -> list[ai_pb2.AIMatch]:
        if not isinstance(query, str):
            raise InvalidInputError(
                "reranking needs a text query: cross-encoders read (query text, document text) "
                "pairs; drop `rerank` for image queries"
            )
        source = rerank.WhichOneof("text_source") or "original_text"
        documents: list[str] = []
        for m in matches:
            if source == "metadata_field":
                value = metadata_from_proto(m.metadata).get(rerank.metadata_field)
                where = f"metadata field {rerank.metadata_field!r}"
            else:
                if not binding.store_original:
                    raise RequestError(
                        f"store {store!r} does not keep original inputs (store_original=false), "
                        "so there is no text to rerank; rerank from a metadata field instead"
                    )
                value = m.original.text if m.original.WhichOneof("kind") == "text" else None
                where = "stored original text"
            if not isinstance(value, str) or not value:
                raise RequestError(
                    f"entry {m.id!r} in store {store!r} has no text in its {where}; rerank "
                    "needs text for every candidate (choose another text source)"
                )
            documents.append(value)
        if not documents:
            return matches
        scores = self._models.rerank(
            rerank.model, query, documents, truncation=truncation, sigmoid=rerank.sigmoid
        )
        for match, score in zip(matches, scores, strict=True):
            match.rerank_score = float(score)
        order = np.argsort(-np.asarray(scores), kind="stable")
        return [matches[i] for i in order]

    def GetKey(
        self, request: ai_pb2.GetKeyRequest, context: grpc.ServicerContext
    ) -> ai_pb2.GetKeyResponse:
        self._binding(request.store)
        response = self._db_call(
            (
                "GetKey",
                db_pb2.GetKeyRequest(store=request.store, ids=list(request.ids)),
                lambda r: r,
            )
        )
        return ai_pb2.GetKeyResponse(
            entries=[self._ai_entry(e) for e in response.entries],
            missing_ids=list(response.missing_ids),
        )

    def GetByPredicate(
        self, request: ai_pb2.GetByPredicateRequest, context: grpc.ServicerContext
    ) -> ai_pb2.GetByPredicateResponse:
        self._binding(request.store)
        db_request = db_pb2.GetByPredicateRequest(
            store=request.store, limit=request.limit, page_token=request.page_token
        )
        if request.HasField("filter"):
            db_request.filter.CopyFrom(request.filter)
        response = self._db_call(("GetByPredicate", db_request, lambda r: r))
        return ai_pb2.GetByPredicateResponse(
            entries=[self._ai_entry(e) for e in response.entries],
            next_page_token=response.next_page_token,
        )

    def DeleteKeys(
        self, request: ai_pb2.DeleteKeysRequest, context: grpc.ServicerContext
    ) -> db_pb2.DeleteResponse:
        self._binding(request.store)
        deleted = self._db_call(db_calls.delete_keys(request.store, request.ids))
        return db_pb2.DeleteResponse(deleted=deleted)

    def DeleteByPredicate(
        self, request: ai_pb2.DeleteByPredicateRequest, context: grpc.ServicerContext
    ) -> db_pb2.DeleteResponse:
        self._binding(request.store)
        db_request = db_pb2.DeleteByPredicateRequest(store=request.store)
        if request.HasField("filter"):
            db_request.filter.CopyFrom(request.filter)
        return self._db_call(("DeleteByPredicate", db_request, lambda r: r))  # type: ignore[no-any-return]

    # -- models ---------------------------------------------------------------------------------

    def Embed(
        self, request: ai_pb2.EmbedRequest, context: grpc.ServicerContext
    ) -> ai_pb2.EmbedResponse:
        spec = self._embedding_spec(request.model, "model")
        payloads = [_payload(x, f"inputs[{i}]") for i, x in enumerate(request.inputs)]
        if not payloads:
            raise RequestError("Embed got no inputs; send at least one text or image")
        vectors = self._models.embed(
            spec.name, payloads, truncation=_truncation(request.truncation)
        )
        return ai_pb2.EmbedResponse(
            embeddings=[ai_pb2.Embedding(values=v.tolist()) for v in vectors],
            dimension=spec.dimension,
        )

    def Rerank(
        self, request: ai_pb2.RerankRequest, context: grpc.ServicerContext
    ) -> ai_pb2.RerankResponse:
        if not request.documents:
            raise RequestError("Rerank got no documents; send at least one")
        scores = self._models.rerank(
            request.model,
            request.query,
            list(request.documents),
            truncation=_truncation(request.truncation),
            sigmoid=request.sigmoid,
        )
        order = np.argsort(-np.asarray(scores), kind="stable")
        if request.top_k:
            order = order[: request.top_k]
        return ai_pb2.RerankResponse(
            results=[ai_pb2.RerankResult(index=int(i), score=float(scores[i])) for i in order]
        )

    def ListModels(
        self, request: ai_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> ai_pb2.ListModelsResponse:
        return ai_pb2.ListModelsResponse(models=[model_info(s) for s in self._models.list_models()])

    def Info(
        self, request: ai_pb2.InfoRequest, context: grpc.ServicerContext
    ) -> ai_pb2.InfoResponse:
        return ai_pb2.InfoResponse(
            version=version("nachbar"),
            loaded_models=[s.spec.name for s in self._models.list_models() if s.loaded],
            db_address=self._db.address,
            db_reachable=self.db_reachable(),
            max_message_bytes=self._max_message_bytes,
        )

    def Ping(
        self, request: ai_pb2.PingRequest, context: grpc.ServicerContext
    ) -> ai_pb2.PingResponse:
        return ai_pb2.PingResponse()

    def db_reachable(self) -> bool:
        try:
            self._db.ping(timeout=2.0)
        except NachbarError:
            return False
        return True


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
