"""Clients for nachbar-db (DBService): `DBClient` (blocking) and `AsyncDBClient` (asyncio).

Example::

    from nachbar.client import DBClient, Field

    with DBClient("127.0.0.1:1369") as db:
        db.create_store("docs", dimension=3)
        db.upsert("docs", [("a", [1, 0, 0], {"lang": "en"}), ("b", [0, 1, 0], {"lang": "de"})])
        hits = db.get_sim_n("docs", [1, 0.1, 0], k=1, filter=Field("lang") == "en")
        print(hits.matches[0].id)  # "a"
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import islice
from typing import Any, Unpack

from nachbar.client import _db_calls as calls
from nachbar.client._channel import DEFAULT_TIMEOUT, AsyncClient, ConnectionKwargs, SyncClient
from nachbar.client.types import (
    CreatedStoreInfo,
    DBInfo,
    Entry,
    GetKeyResult,
    Hybrid,
    Index,
    KeywordIndexCreated,
    Metric,
    Page,
    SearchMode,
    SearchResult,
    StoreInfo,
    UpsertResult,
)
from nachbar.client.values import FilterLike
from nachbar.v1 import db_pb2_grpc, defaults

DEFAULT_DB_ADDRESS = defaults.DB_ADDRESS
UPSERT_BATCH = defaults.DB_UPSERT_BATCH


def _chunks(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    """Batches of `size`; an empty input still yields one empty batch, so the server (not the
    client) answers an empty upsert, with INVALID_ARGUMENT."""
    iterator = iter(items)
    chunk = list(islice(iterator, size))
    yield chunk
    while chunk := list(islice(iterator, size)):
        yield chunk


class DBClient(SyncClient):
    """Blocking client. Every method takes `timeout` (seconds); errors raise NachbarError
    subclasses (NotFound, InvalidArgument, ...)."""

    def __init__(
        self,
        address: str = DEFAULT_DB_ADDRESS,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        **connection: Unpack[ConnectionKwargs],
    ):
        """`connection`: api_key, tls, tls_ca, tls_client_cert, tls_client_key (see
        ConnectionKwargs); the key defaults to env NACHBAR_API_KEY."""
        super().__init__(address, db_pb2_grpc.DBServiceStub, timeout, connection)

    def create_store(
        self,
        store: str,
        dimension: int,
        *,
        metric: Metric | str | None = None,
        index: Index | None = None,
        predicate_indexes: Iterable[str] = (),
        store_metadata: Mapping[str, str] | None = None,
        if_not_exists: bool = False,
        keyword_fields: Iterable[str] | None = None,
        timeout: float | None = None,
    ) -> CreatedStoreInfo:
        """metric: unset takes the server's default, cosine. The result's `created` is False
        when `if_not_exists` found the store there already. keyword_fields: give the store a
        keyword index over these metadata fields (see create_keyword_index)."""
        return self._caller.call(
            *calls.create_store(
                store,
                dimension,
                metric,
                index,
                predicate_indexes,
                store_metadata,
                if_not_exists,
                keyword_fields,
            ),
            timeout,
        )

    def drop_store(
        self, store: str, *, missing_ok: bool = False, timeout: float | None = None
    ) -> bool:
        return self._caller.call(*calls.drop_store(store, missing_ok), timeout)

    def list_stores(self, *, timeout: float | None = None) -> list[StoreInfo]:
        return self._caller.call(*calls.list_stores(), timeout)

    def get_store(self, store: str, *, timeout: float | None = None) -> StoreInfo:
        return self._caller.call(*calls.get_store(store), timeout)

    def upsert(
        self,
        store: str,
        entries: Iterable[tuple[Any, ...]],
        *,
        batch_size: int = UPSERT_BATCH,
        timeout: float | None = None,
    ) -> UpsertResult:
        """Upsert (id, vector) or (id, vector, metadata) tuples. Each batch of `batch_size`
        is atomic on the server; a long iterable is sent as several batches."""
        inserted = updated = 0
        for chunk in _chunks(entries, batch_size):
            result = self._caller.call(*calls.upsert(store, chunk), timeout)
            inserted += result.inserted
            updated += result.updated
        return UpsertResult(inserted, updated)

    def get_key(
        self,
        store: str,
        ids: Iterable[str],
        *,
        include_vectors: bool = False,
        include_metadata: bool = True,
        exclude_metadata_keys: Iterable[str] = (),
        max_metadata_value_bytes: int = 0,
        timeout: float | None = None,
    ) -> GetKeyResult:
        """Entries by id, in request order, and the ids not found. When the entries do not
        fit into one response they come in several (each with `timeout`).

        include_metadata=False returns no metadata; exclude_metadata_keys leaves those fields
        out and max_metadata_value_bytes leaves out str, bytes and list values larger than that
        (each entry's omitted_metadata_keys names what was left out)."""
        selection = calls.Selection(
            include_metadata, tuple(exclude_metadata_keys), max_metadata_value_bytes
        )
        entries: list[Entry] = []
        missing: list[str] = []
        pending = list(ids)
        while True:
            part, pending = self._caller.call(
                *calls.get_key(store, pending, include_vectors, selection), timeout
            )
            entries += part.entries
            missing += part.missing_ids
            if not pending:
                return GetKeyResult(entries, missing)

    def get_by_predicate(
        self,
        store: str,
        filter: FilterLike | None = None,
        *,
        limit: int = defaults.PAGE_LIMIT,
        page_token: str = "",
        include_vectors: bool = False,
        include_metadata: bool = True,
        exclude_metadata_keys: Iterable[str] = (),
        max_metadata_value_bytes: int = 0,
        timeout: float | None = None,
    ) -> Page:
        """One page of entries matching the filter, in id order; follow next_page_token. A page
        holds fewer than `limit` entries when more would not fit into one response. The
        metadata options are those of get_key."""
        selection = calls.Selection(
            include_metadata, tuple(exclude_metadata_keys), max_metadata_value_bytes
        )
        return self._caller.call(
            *calls.get_by_predicate(store, filter, limit, page_token, include_vectors, selection),
            timeout,
        )

    def get_sim_n(
        self,
        store: str,
        query: calls.VectorLike | None,
        k: int = 10,
        *,
        filter: FilterLike | None = None,
        mode: SearchMode | str = SearchMode.AUTO,
        ef: int = 0,
        include_vectors: bool = False,
        include_metadata: bool = True,
        exclude_metadata_keys: Iterable[str] = (),
        max_metadata_value_bytes: int = 0,
        mmr: float | None = None,
        mmr_candidates: int = 0,
        positive: Iterable[str] = (),
        negative: Iterable[str] = (),
        strategy: str = "average_vector",
        recommend_candidates: int = 0,
        keywords: str = "",
        hybrid: Hybrid | None = None,
        timeout: float | None = None,
    ) -> SearchResult:
        """The k entries most similar to `query`, best first. The metadata options are those
        of get_key; when the k matches would not fit into one response the call raises
        ResourceExhausted, saying how many fit. `mmr=<lambda in [0, 1]>` diversifies the k
        results by maximal marginal relevance over the best `mmr_candidates` (0: max(4k, 20));
        `positive`/`negative` entry ids recommend by examples (with or without a query, which
        may then be None), by `strategy` "average_vector" or "best_score". keywords: a hybrid
        search with the store's keyword index, fused as `hybrid` says (default: a blend); with
        query=None, keyword-only. Each match then carries vector_score, keyword_score and
        hybrid_score. Keywords do not combine with mmr or examples."""
        selection = calls.Selection(
            include_metadata, tuple(exclude_metadata_keys), max_metadata_value_bytes
        )
        return self._caller.call(
            *calls.get_sim_n(
                store,
                query,
                k,
                filter,
                mode,
                ef,
                include_vectors,
                selection,
                calls.Explore(
                    mmr,
                    mmr_candidates,
                    tuple(positive),
                    tuple(negative),
                    strategy,
                    recommend_candidates,
                ),
                keywords,
                hybrid,
            ),
            timeout,
        )

    def delete_keys(self, store: str, ids: Iterable[str], *, timeout: float | None = None) -> int:
        return self._caller.call(*calls.delete_keys(store, ids), timeout)

    def delete_by_predicate(
        self, store: str, filter: FilterLike, *, timeout: float | None = None
    ) -> int:
        return self._caller.call(*calls.delete_by_predicate(store, filter), timeout)

    def create_pred_index(
        self, store: str, fields: Iterable[str], *, timeout: float | None = None
    ) -> int:
        return self._caller.call(*calls.create_pred_index(store, fields), timeout)

    def drop_pred_index(
        self,
        store: str,
        fields: Iterable[str],
        *,
        missing_ok: bool = False,
        timeout: float | None = None,
    ) -> int:
        return self._caller.call(*calls.drop_pred_index(store, fields, missing_ok), timeout)

    def create_keyword_index(
        self, store: str, fields: Iterable[str], *, timeout: float | None = None
    ) -> KeywordIndexCreated:
        """A keyword (BM25) index over these metadata text fields, filled from the entries
        already in the store and kept with every write."""
        return self._caller.call(*calls.create_keyword_index(store, fields), timeout)

    def drop_keyword_index(
        self, store: str, *, missing_ok: bool = False, timeout: float | None = None
    ) -> bool:
        return self._caller.call(*calls.drop_keyword_index(store, missing_ok), timeout)

    def info(self, *, timeout: float | None = None) -> DBInfo:
        return self._caller.call(*calls.info(), timeout)

    def ping(self, *, timeout: float | None = None) -> None:
        self._caller.call(*calls.ping(), timeout)


class AsyncDBClient(AsyncClient):
    """asyncio client with the same methods as DBClient, as coroutines."""

    def __init__(
        self,
        address: str = DEFAULT_DB_ADDRESS,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        **connection: Unpack[ConnectionKwargs],
    ):
        """`connection`: api_key, tls, tls_ca, tls_client_cert, tls_client_key (see
        ConnectionKwargs); the key defaults to env NACHBAR_API_KEY."""
        super().__init__(address, db_pb2_grpc.DBServiceStub, timeout, connection)

    async def create_store(
        self,
        store: str,
        dimension: int,
        *,
        metric: Metric | str | None = None,
        index: Index | None = None,
        predicate_indexes: Iterable[str] = (),
        store_metadata: Mapping[str, str] | None = None,
        if_not_exists: bool = False,
        keyword_fields: Iterable[str] | None = None,
        timeout: float | None = None,
    ) -> CreatedStoreInfo:
        return await self._caller.call(
            *calls.create_store(
                store,
                dimension,
                metric,
                index,
                predicate_indexes,
                store_metadata,
                if_not_exists,
                keyword_fields,
            ),
            timeout,
        )

    async def drop_store(
        self, store: str, *, missing_ok: bool = False, timeout: float | None = None
    ) -> bool:
        return await self._caller.call(*calls.drop_store(store, missing_ok), timeout)

    async def list_stores(self, *, timeout: float | None = None) -> list[StoreInfo]:
        return await self._caller.call(*calls.list_stores(), timeout)

    async def get_store(self, store: str, *, timeout: float | None = None) -> StoreInfo:
        return await self._caller.call(*calls.get_store(store), timeout)

    async def upsert(
        self,
        store: str,
        entries: Iterable[tuple[Any, ...]],
        *,
        batch_size: int = UPSERT_BATCH,
        timeout: float | None = None,
    ) -> UpsertResult:
        inserted = updated = 0
        for chunk in _chunks(entries, batch_size):
            result = await self._caller.call(*calls.upsert(store, chunk), timeout)
            inserted += result.inserted
            updated += result.updated
        return UpsertResult(inserted, updated)

    async def get_key(
        self,
        store: str,
        ids: Iterable[str],
        *,
        include_vectors: bool = False,
        include_metadata: bool = True,
        exclude_metadata_keys: Iterable[str] = (),
        max_metadata_value_bytes: int = 0,
        timeout: float | None = None,
    ) -> GetKeyResult:
        """Entries by id, in request order, and the ids not found. When the entries do not
        fit into one response they come in several (each with `timeout`).

        include_metadata=False returns no metadata; exclude_metadata_keys leaves those fields
        out and max_metadata_value_bytes leaves out str, bytes and list values larger than that
        (each entry's omitted_metadata_keys names what was left out)."""
        selection = calls.Selection(
            include_metadata, tuple(exclude_metadata_keys), max_metadata_value_bytes
        )
        entries: list[Entry] = []
        missing: list[str] = []
        pending = list(ids)
        while True:
            part, pending = await self._caller.call(
                *calls.get_key(store, pending, include_vectors, selection), timeout
            )
            entries += part.entries
            missing += part.missing_ids
            if not pending:
                return GetKeyResult(entries, missing)

    async def get_by_predicate(
        self,
        store: str,
        filter: FilterLike | None = None,
        *,
        limit: int = defaults.PAGE_LIMIT,
        page_token: str = "",
        include_vectors: bool = False,
        include_metadata: bool = True,
        exclude_metadata_keys: Iterable[str] = (),
        max_metadata_value_bytes: int = 0,
        timeout: float | None = None,
    ) -> Page:
        """One page of entries matching the filter, in id order; follow next_page_token. A page
        holds fewer than `limit` entries when more would not fit into one response. The
        metadata options are those of get_key."""
        selection = calls.Selection(
            include_metadata, tuple(exclude_metadata_keys), max_metadata_value_bytes
        )
        return await self._caller.call(
            *calls.get_by_predicate(store, filter, limit, page_token, include_vectors, selection),
            timeout,
        )

    async def get_sim_n(
        self,
        store: str,
        query: calls.VectorLike | None,
        k: int = 10,
        *,
        filter: FilterLike | None = None,
        mode: SearchMode | str = SearchMode.AUTO,
        ef: int = 0,
        include_vectors: bool = False,
        include_metadata: bool = True,
        exclude_metadata_keys: Iterable[str] = (),
        max_metadata_value_bytes: int = 0,
        mmr: float | None = None,
        mmr_candidates: int = 0,
        positive: Iterable[str] = (),
        negative: Iterable[str] = (),
        strategy: str = "average_vector",
        recommend_candidates: int = 0,
        keywords: str = "",
        hybrid: Hybrid | None = None,
        timeout: float | None = None,
    ) -> SearchResult:
        """The k entries most similar to `query`, best first. The metadata options are those
        of get_key; when the k matches would not fit into one response the call raises
        ResourceExhausted, saying how many fit. `mmr=<lambda in [0, 1]>` diversifies the k
        results by maximal marginal relevance over the best `mmr_candidates` (0: max(4k, 20));
        `positive`/`negative` entry ids recommend by examples (with or without a query, which
        may then be None), by `strategy` "average_vector" or "best_score". keywords: a hybrid
        search with the store's keyword index, fused as `hybrid` says (default: a blend); with
        query=None, keyword-only. Each match then carries vector_score, keyword_score and
        hybrid_score. Keywords do not combine with mmr or examples."""
        selection = calls.Selection(
            include_metadata, tuple(exclude_metadata_keys), max_metadata_value_bytes
        )
        return await self._caller.call(
            *calls.get_sim_n(
                store,
                query,
                k,
                filter,
                mode,
                ef,
                include_vectors,
                selection,
                calls.Explore(
                    mmr,
                    mmr_candidates,
                    tuple(positive),
                    tuple(negative),
                    strategy,
                    recommend_candidates,
                ),
                keywords,
                hybrid,
            ),
            timeout,
        )

    async def delete_keys(
        self, store: str, ids: Iterable[str], *, timeout: float | None = None
    ) -> int:
        return await self._caller.call(*calls.delete_keys(store, ids), timeout)

    async def delete_by_predicate(
        self, store: str, filter: FilterLike, *, timeout: float | None = None
    ) -> int:
        return await self._caller.call(*calls.delete_by_predicate(store, filter), timeout)

    async def create_pred_index(
        self, store: str, fields: Iterable[str], *, timeout: float | None = None
    ) -> int:
        return await self._caller.call(*calls.create_pred_index(store, fields), timeout)

    async def drop_pred_index(
        self,
        store: str,
        fields: Iterable[str],
        *,
        missing_ok: bool = False,
        timeout: float | None = None,
    ) -> int:
        return await self._caller.call(*calls.drop_pred_index(store, fields, missing_ok), timeout)

    async def create_keyword_index(
        self, store: str, fields: Iterable[str], *, timeout: float | None = None
    ) -> KeywordIndexCreated:
        return await self._caller.call(*calls.create_keyword_index(store, fields), timeout)

    async def drop_keyword_index(
        self, store: str, *, missing_ok: bool = False, timeout: float | None = None
    ) -> bool:
        return await self._caller.call(*calls.drop_keyword_index(store, missing_ok), timeout)

    async def info(self, *, timeout: float | None = None) -> DBInfo:
        return await self._caller.call(*calls.info(), timeout)

    async def ping(self, *, timeout: float | None = None) -> None:
        await self._caller.call(*calls.ping(), timeout)
