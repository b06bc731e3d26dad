"""Clients for nachbar-ai (AIService): `AIClient` (blocking) and `AsyncAIClient` (asyncio).

Example::

    from pathlib import Path
    from nachbar.client import AIClient

    with AIClient("127.0.0.1:1370") as ai:
        ai.create_store("photos", query_model="all-minilm-l6-v2",
                        index_model="imagenet-conse-minilm-l6", store_original=False)
        ai.upsert("photos", [Path("dog.jpg"), Path("cat.jpg")])       # paths are images
        for hit in ai.get_sim_n("photos", "a photo of a dog", k=1).matches:
            print(hit.id, hit.similarity)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Unpack

from nachbar.client import _ai_calls as calls
from nachbar.client._ai_calls import Example, InputLike, Item, TrainSettings
from nachbar.client._channel import DEFAULT_TIMEOUT, AsyncClient, ConnectionKwargs, SyncClient
from nachbar.client._db_calls import Explore
from nachbar.client.types import (
    AIGetKeyResult,
    AIInfo,
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
    UpsertResult,
)
from nachbar.client.values import FilterLike
from nachbar.v1 import ai_pb2_grpc, defaults

DEFAULT_AI_ADDRESS = defaults.AI_ADDRESS
UPSERT_BATCH = defaults.AI_UPSERT_BATCH
ItemLike = Item | InputLike | tuple[Any, ...]
DEFAULT_TRAIN_SETTINGS = TrainSettings()


class AIClient(SyncClient):
    """Blocking client. Inputs: `str` is text; `bytes`, `pathlib.Path`, a PIL image or
    `Image(...)` is an image. Every method takes `timeout` (seconds); errors raise
    NachbarError subclasses."""

    def __init__(
        self,
        address: str = DEFAULT_AI_ADDRESS,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        **connection: Unpack[ConnectionKwargs],
    ):
        """`connection`: api_key, tls, tls_ca, tls_client_cert, tls_client_key (see
        ConnectionKwargs); the key defaults to env NACHBAR_API_KEY."""
        super().__init__(address, ai_pb2_grpc.AIServiceStub, timeout, connection)

    def create_store(
        self,
        store: str,
        *,
        query_model: str,
        index_model: str = "",
        store_original: bool = defaults.STORE_ORIGINAL,
        predicate_indexes: Iterable[str] = (),
        index: Index | None = None,
        metric: Metric | str | None = None,
        if_not_exists: bool = False,
        keyword_index: Iterable[str] | None = None,
        timeout: float | None = None,
    ) -> CreatedAIStoreInfo:
        """index_model defaults to query_model. The result's `created` is False when
        `if_not_exists` found the store there already (with the same models)."""
        return self._caller.call(
            *calls.create_store(
                store,
                query_model,
                index_model or query_model,
                store_original,
                predicate_indexes,
                index,
                metric,
                if_not_exists,
                keyword_index,
            ),
            timeout,
        )

    def drop_store(
        self, store: str, *, missing_ok: bool = False, timeout: float | None = None
    ) -> bool:
        return self._caller.call(*calls.drop_store(store, missing_ok), timeout)

    def list_stores(self, *, timeout: float | None = None) -> list[AIStoreInfo]:
        return self._caller.call(*calls.list_stores(), timeout)

    def get_store(self, store: str, *, timeout: float | None = None) -> AIStoreInfo:
        return self._caller.call(*calls.get_store(store), timeout)

    def upsert(
        self,
        store: str,
        items: Iterable[ItemLike],
        *,
        truncation: str = defaults.TRUNCATION,
        batch_size: int = UPSERT_BATCH,
        timeout: float | None = None,
    ) -> UpsertResult:
        """Embed and store inputs. Items are inputs, `Item(input, id, metadata)` or
        `(input, id, metadata)` tuples; large iterables go in batches of `batch_size`."""
        inserted = updated = 0
        ids: list[str] = []
        for batch in calls.chunk_items(items, batch_size):
            result = self._caller.call(*calls.upsert(store, batch, truncation), timeout)
            inserted += result.inserted
            updated += result.updated
            ids.extend(result.ids)
        return UpsertResult(inserted, updated, ids)

    def get_sim_n(
        self,
        store: str,
        query: InputLike | None,
        k: int = 10,
        *,
        filter: FilterLike | None = None,
        truncation: str = defaults.TRUNCATION,
        rerank: str | None = None,
        rerank_candidates: int = 0,
        rerank_field: str | None = None,
        sigmoid: bool = False,
        rerank_fusion: str = "none",
        mode: SearchMode | str = SearchMode.AUTO,
        ef: int = 0,
        query_model: str = "",
        adapter: str = "",
        rescorer: str = "",
        mmr: float | None = None,
        mmr_candidates: int = 0,
        positive: Iterable[str] = (),
        negative: Iterable[str] = (),
        strategy: str = "average_vector",
        recommend_candidates: int = 0,
        hybrid: Hybrid | None = None,
        keywords: str = "",
        keyword_only: bool = False,
        timeout: float | None = None,
    ) -> AISearchResult:
        """k most similar entries. `rerank="<reranker>"` reorders the top `rerank_candidates`
        by a cross-encoder or late-interaction model, reading the stored original text or
        `rerank_field` from metadata; `rerank_fusion="rrf"` or `"blend"` orders them by the
        reranker's scores fused with the similarities instead of the reranker's alone.
        `adapter="<name>"` searches with the query vector mapped by that adapter of the store;
        `rescorer="<name>"` reranks the top `rerank_candidates` by that re-scorer of the store
        (stored vectors only, so it works for image stores queried with text).
        `mmr=<lambda in [0, 1]>` diversifies the results (maximal marginal relevance; not with
        rerank); `positive`/`negative` ids of stored entries recommend by examples, with or
        without a query (None), by `strategy` "average_vector" or "best_score".
        `hybrid`, `keywords` or `keyword_only` make it a hybrid search over the store's keyword
        index (keywords default to the query text); a rerank then reads the fused candidates.
        keyword_index on create_store: metadata fields to index, [] for the original text."""
        return self._caller.call(
            *calls.get_sim_n(
                store,
                query,
                k,
                filter,
                truncation,
                rerank,
                rerank_candidates,
                rerank_field,
                sigmoid,
                rerank_fusion,
                mode,
                ef,
                query_model,
                Explore(
                    mmr,
                    mmr_candidates,
                    tuple(positive),
                    tuple(negative),
                    strategy,
                    recommend_candidates,
                ),
                hybrid,
                keywords,
                keyword_only,
                adapter=adapter,
                rescorer=rescorer,
            ),
            timeout,
        )

    def get_key(
        self, store: str, ids: Iterable[str], *, timeout: float | None = None
    ) -> AIGetKeyResult:
        return self._caller.call(*calls.get_key(store, ids), timeout)

    def get_by_predicate(
        self,
        store: str,
        filter: FilterLike | None = None,
        *,
        limit: int = defaults.PAGE_LIMIT,
        page_token: str = "",
        timeout: float | None = None,
    ) -> AIPage:
        return self._caller.call(*calls.get_by_predicate(store, filter, limit, page_token), timeout)

    def delete_keys(self, store: str, ids: Iterable[str], *, timeout: float | None = None) -> int:
        return self._caller.call(*calls.delete_keys(store, ids), timeout)

    def delete_by_predicate(
        self, store: str, filter: FilterLike, *, timeout: float | None = None
    ) -> int:
        return self._caller.call(*calls.delete_by_predicate(store, filter), timeout)

    def embed(
        self,
        model: str,
        inputs: Iterable[InputLike],
        *,
        truncation: str = defaults.TRUNCATION,
        timeout: float | None = None,
    ) -> list[list[float]]:
        return self._caller.call(*calls.embed(model, inputs, truncation), timeout)

    def rerank(
        self,
        model: str,
        query: str,
        documents: Sequence[str],
        *,
        top_k: int = 0,
        truncation: str = defaults.TRUNCATION,
        sigmoid: bool = False,
        timeout: float | None = None,
    ) -> list[RerankResult]:
        return self._caller.call(
            *calls.rerank(model, query, documents, top_k, truncation, sigmoid), timeout
        )

    def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        return self._caller.call(*calls.list_models(), timeout)

    def info(self, *, timeout: float | None = None) -> AIInfo:
        return self._caller.call(*calls.info(), timeout)

    def ping(self, *, timeout: float | None = None) -> None:
        self._caller.call(*calls.ping(), timeout)

    # -- adapters and re-scorers --------------------------------------------------------------

    def train_adapter(
        self,
        store: str,
        name: str,
        examples: Iterable[Example | tuple[Any, ...]],
        *,
        settings: TrainSettings = DEFAULT_TRAIN_SETTINGS,
        timeout: float | None = None,
    ) -> TrainedInfo:
        """Start training a query adapter in the background; poll `get_adapter` for its state.
        Each example is an `Example(query, relevant_ids, irrelevant_ids)` or such a tuple."""
        return self._caller.call(*calls.train("adapter", store, name, examples, settings), timeout)

    def get_adapter(self, store: str, name: str, *, timeout: float | None = None) -> TrainedInfo:
        return self._caller.call(*calls.get_trained("adapter", store, name), timeout)

    def list_adapters(self, store: str, *, timeout: float | None = None) -> list[TrainedInfo]:
        return self._caller.call(*calls.list_trained("adapter", store), timeout)

    def drop_adapter(
        self, store: str, name: str, *, missing_ok: bool = False, timeout: float | None = None
    ) -> bool:
        return self._caller.call(*calls.drop_trained("adapter", store, name, missing_ok), timeout)

    def train_rescorer(
        self,
        store: str,
        name: str,
        examples: Iterable[Example | tuple[Any, ...]],
        *,
        settings: TrainSettings = DEFAULT_TRAIN_SETTINGS,
        timeout: float | None = None,
    ) -> TrainedInfo:
        """Start training a re-scorer in the background; poll `get_rescorer` for its state."""
        return self._caller.call(*calls.train("rescorer", store, name, examples, settings), timeout)

    def get_rescorer(self, store: str, name: str, *, timeout: float | None = None) -> TrainedInfo:
        return self._caller.call(*calls.get_trained("rescorer", store, name), timeout)

    def list_rescorers(self, store: str, *, timeout: float | None = None) -> list[TrainedInfo]:
        return self._caller.call(*calls.list_trained("rescorer", store), timeout)

    def drop_rescorer(
        self, store: str, name: str, *, missing_ok: bool = False, timeout: float | None = None
    ) -> bool:
        return self._caller.call(*calls.drop_trained("rescorer", store, name, missing_ok), timeout)


class AsyncAIClient(AsyncClient):
    """asyncio client with the same methods as AIClient, as coroutines."""

    def __init__(
        self,
        address: str = DEFAULT_AI_ADDRESS,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        **connection: Unpack[ConnectionKwargs],
    ):
        """`connection`: api_key, tls, tls_ca, tls_client_cert, tls_client_key (see
        ConnectionKwargs); the key defaults to env NACHBAR_API_KEY."""
        super().__init__(address, ai_pb2_grpc.AIServiceStub, timeout, connection)

    async def create_store(
        self,
        store: str,
        *,
        query_model: str,
        index_model: str = "",
        store_original: bool = defaults.STORE_ORIGINAL,
        predicate_indexes: Iterable[str] = (),
        index: Index | None = None,
        metric: Metric | str | None = None,
        if_not_exists: bool = False,
        keyword_index: Iterable[str] | None = None,
        timeout: float | None = None,
    ) -> CreatedAIStoreInfo:
        return await self._caller.call(
            *calls.create_store(
                store,
                query_model,
                index_model or query_model,
                store_original,
                predicate_indexes,
                index,
                metric,
                if_not_exists,
                keyword_index,
            ),
            timeout,
        )

    async def drop_store(
        self, store: str, *, missing_ok: bool = False, timeout: float | None = None
    ) -> bool:
        return await self._caller.call(*calls.drop_store(store, missing_ok), timeout)

    async def list_stores(self, *, timeout: float | None = None) -> list[AIStoreInfo]:
        return await self._caller.call(*calls.list_stores(), timeout)

    async def get_store(self, store: str, *, timeout: float | None = None) -> AIStoreInfo:
        return await self._caller.call(*calls.get_store(store), timeout)

    async def upsert(
        self,
        store: str,
        items: Iterable[ItemLike],
        *,
        truncation: str = defaults.TRUNCATION,
        batch_size: int = UPSERT_BATCH,
        timeout: float | None = None,
    ) -> UpsertResult:
        inserted = updated = 0
        ids: list[str] = []
        for batch in calls.chunk_items(items, batch_size):
            result = await self._caller.call(*calls.upsert(store, batch, truncation), timeout)
            inserted += result.inserted
            updated += result.updated
            ids.extend(result.ids)
        return UpsertResult(inserted, updated, ids)

    async def get_sim_n(
        self,
        store: str,
        query: InputLike | None,
        k: int = 10,
        *,
        filter: FilterLike | None = None,
        truncation: str = defaults.TRUNCATION,
        rerank: str | None = None,
        rerank_candidates: int = 0,
        rerank_field: str | None = None,
        sigmoid: bool = False,
        rerank_fusion: str = "none",
        mode: SearchMode | str = SearchMode.AUTO,
        ef: int = 0,
        query_model: str = "",
        adapter: str = "",
        rescorer: str = "",
        mmr: float | None = None,
        mmr_candidates: int = 0,
        positive: Iterable[str] = (),
        negative: Iterable[str] = (),
        strategy: str = "average_vector",
        recommend_candidates: int = 0,
        hybrid: Hybrid | None = None,
        keywords: str = "",
        keyword_only: bool = False,
        timeout: float | None = None,
    ) -> AISearchResult:
        return await self._caller.call(
            *calls.get_sim_n(
                store,
                query,
                k,
                filter,
                truncation,
                rerank,
                rerank_candidates,
                rerank_field,
                sigmoid,
                rerank_fusion,
                mode,
                ef,
                query_model,
                Explore(
                    mmr,
                    mmr_candidates,
                    tuple(positive),
                    tuple(negative),
                    strategy,
                    recommend_candidates,
                ),
                hybrid,
                keywords,
                keyword_only,
                adapter=adapter,
                rescorer=rescorer,
            ),
            timeout,
        )

    async def get_key(
        self, store: str, ids: Iterable[str], *, timeout: float | None = None
    ) -> AIGetKeyResult:
        return await self._caller.call(*calls.get_key(store, ids), timeout)

    async def get_by_predicate(
        self,
        store: str,
        filter: FilterLike | None = None,
        *,
        limit: int = defaults.PAGE_LIMIT,
        page_token: str = "",
        timeout: float | None = None,
    ) -> AIPage:
        return await self._caller.call(
            *calls.get_by_predicate(store, filter, limit, page_token), timeout
        )

    async def delete_keys(
        self, store: str, ids: Iterable[str], *, timeout: float | None = None
    ) -> int:
        return await self._caller.call(*calls.delete_keys(store, ids), timeout)

    async def delete_by_predicate(
        self, store: str, filter: FilterLike, *, timeout: float | None = None
    ) -> int:
        return await self._caller.call(*calls.delete_by_predicate(store, filter), timeout)

    async def embed(
        self,
        model: str,
        inputs: Iterable[InputLike],
        *,
        truncation: str = defaults.TRUNCATION,
        timeout: float | None = None,
    ) -> list[list[float]]:
        return await self._caller.call(*calls.embed(model, inputs, truncation), timeout)

    async def rerank(
        self,
        model: str,
        query: str,
        documents: Sequence[str],
        *,
        top_k: int = 0,
        truncation: str = defaults.TRUNCATION,
        sigmoid: bool = False,
        timeout: float | None = None,
    ) -> list[RerankResult]:
        return await self._caller.call(
            *calls.rerank(model, query, documents, top_k, truncation, sigmoid), timeout
        )

    async def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        return await self._caller.call(*calls.list_models(), timeout)

    async def info(self, *, timeout: float | None = None) -> AIInfo:
        return await self._caller.call(*calls.info(), timeout)

    async def ping(self, *, timeout: float | None = None) -> None:
        await self._caller.call(*calls.ping(), timeout)

    # -- adapters and re-scorers --------------------------------------------------------------

    async def train_adapter(
        self,
        store: str,
        name: str,
        examples: Iterable[Example | tuple[Any, ...]],
        *,
        settings: TrainSettings = DEFAULT_TRAIN_SETTINGS,
        timeout: float | None = None,
    ) -> TrainedInfo:
        """Start training a query adapter in the background; poll `get_adapter` for its state.
        Each example is an `Example(query, relevant_ids, irrelevant_ids)` or such a tuple."""
        return await self._caller.call(
            *calls.train("adapter", store, name, examples, settings), timeout
        )

    async def get_adapter(
        self, store: str, name: str, *, timeout: float | None = None
    ) -> TrainedInfo:
        return await self._caller.call(*calls.get_trained("adapter", store, name), timeout)

    async def list_adapters(self, store: str, *, timeout: float | None = None) -> list[TrainedInfo]:
        return await self._caller.call(*calls.list_trained("adapter", store), timeout)

    async def drop_adapter(
        self, store: str, name: str, *, missing_ok: bool = False, timeout: float | None = None
    ) -> bool:
        return await self._caller.call(
            *calls.drop_trained("adapter", store, name, missing_ok), timeout
        )

    async def train_rescorer(
        self,
        store: str,
        name: str,
        examples: Iterable[Example | tuple[Any, ...]],
        *,
        settings: TrainSettings = DEFAULT_TRAIN_SETTINGS,
        timeout: float | None = None,
    ) -> TrainedInfo:
        """Start training a re-scorer in the background; poll `get_rescorer` for its state."""
        return await self._caller.call(
            *calls.train("rescorer", store, name, examples, settings), timeout
        )

    async def get_rescorer(
        self, store: str, name: str, *, timeout: float | None = None
    ) -> TrainedInfo:
        return await self._caller.call(*calls.get_trained("rescorer", store, name), timeout)

    async def list_rescorers(
        self, store: str, *, timeout: float | None = None
    ) -> list[TrainedInfo]:
        return await self._caller.call(*calls.list_trained("rescorer", store), timeout)

    async def drop_rescorer(
        self, store: str, name: str, *, missing_ok: bool = False, timeout: float | None = None
    ) -> bool:
        return await self._caller.call(
            *calls.drop_trained("rescorer", store, name, missing_ok), timeout
        )
