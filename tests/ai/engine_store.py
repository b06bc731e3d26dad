"""nachbar.db's engine, in this process, as the vector store of nachbar-ai's pipeline.

Only the tests use it: the pipeline's unit tests run against the real store semantics (filters,
validation, dimension checks) without starting a server.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

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
from nachbar.db import errors as db_errors
from nachbar.db import explore as db_explore
from nachbar.db.engine import Database
from nachbar.db.filters import Filter
from nachbar.db.types import (
    Entry,
    ExactConfig,
    HnswConfig,
    HybridFusion,
    HybridOptions,
    Metric,
    MmrOptions,
    RecommendOptions,
    RecommendStrategy,
    SearchMode,
    StoreInfo,
    StoreSpec,
)


@dataclass(frozen=True)
class EngineOptions:
    metric: Metric = Metric.COSINE
    index: HnswConfig | ExactConfig = field(default_factory=ExactConfig)
    predicate_indexes: tuple[str, ...] = ()
    keyword_fields: tuple[str, ...] | None = None


@dataclass
class EngineStore:
    """Also counts the calls it gets, so tests can see what the pipeline asked for."""

    db: Database
    calls: list[tuple[str, str]] = field(default_factory=list)
    last_k: int = 0
    last_keywords: KeywordSearch | None = None

    def create_store(
        self,
        name: str,
        dimension: int,
        store_metadata: Mapping[str, str],
        options: EngineOptions,
        *,
        if_not_exists: bool,
    ) -> tuple[StoreRecord[StoreInfo], bool]:
        self.calls.append(("create_store", name))
        spec = StoreSpec(
            name,
            dimension,
            metric=options.metric,
            index=options.index,
            predicate_indexes=options.predicate_indexes,
            store_metadata=dict(store_metadata),
            keyword_fields=options.keyword_fields,
        )
        info, created = self.db.create_store(spec, if_not_exists=if_not_exists)
        return _record(info), created

    def get_store(self, name: str) -> StoreRecord[StoreInfo]:
        self.calls.append(("get_store", name))
        with _translated():
            return _record(self.db.get_store(name))

    def list_stores(self) -> list[StoreRecord[StoreInfo]]:
        self.calls.append(("list_stores", ""))
        return [_record(info) for info in self.db.list_stores()]

    def drop_store(self, name: str, *, missing_ok: bool, expected_store_id: int) -> bool:
        self.calls.append(("drop_store", name))
        with _translated():
            return self.db.drop_store(
                name, missing_ok=missing_ok, expected_store_id=expected_store_id
            )

    def upsert(
        self, store: str, entries: Sequence[VectorEntry], *, expected_store_id: int
    ) -> WriteCounts:
        self.calls.append(("upsert", store))
        with _translated():
            result = self.db.upsert(
                store,
                [Entry(e.id, np.asarray(e.vector), dict(e.metadata)) for e in entries],
                expected_store_id=expected_store_id,
            )
        return WriteCounts(result.inserted, result.updated)

    def search(
        self,
        store: str,
        vector: FloatArray | None,
        k: int,
        *,
        filter: Filter | None,
        mode: str,
        ef: int,
        expected_store_id: int,
        explore: Explore = NO_EXPLORE,
        keywords: KeywordSearch | None = None,
    ) -> Hits:
        self.calls.append(("search", store))
        self.last_k = k
        self.last_keywords = keywords
        fusion = HybridOptions()
        if keywords is not None:
            fusion = HybridOptions(
                fusion=HybridFusion(keywords.fusion),
                rrf_k=keywords.rrf_k,
                vector_weight=0.5 if keywords.vector_weight is None else keywords.vector_weight,
                candidates=keywords.candidates,
            )
        with _translated():
            if explore == NO_EXPLORE:
                result = self.db.get_sim_n(
                    store,
                    vector,
                    k,
                    filter=filter,
                    mode=SearchMode(mode),
                    ef=ef,
                    expected_store_id=expected_store_id,
                    keywords=keywords.text if keywords is not None else "",
                    fusion=fusion,
                )
            else:
                result = db_explore.get_sim_n(
                    self.db,
                    store,
                    vector,
                    k,
                    mmr=None
                    if explore.mmr_lambda is None
                    else MmrOptions(explore.mmr_lambda, explore.mmr_candidates),
                    recommend=RecommendOptions(
                        explore.positive_ids,
                        explore.negative_ids,
                        RecommendStrategy(explore.strategy),
                        explore.recommend_candidates,
                    )
                    if explore.has_examples
                    else None,
                    filter=filter,
                    mode=SearchMode(mode),
                    ef=ef,
                    expected_store_id=expected_store_id,
                )
        return Hits(
            [
                StoredMatch(
                    m.id, m.score, m.metadata, m.vector_score, m.keyword_score, m.hybrid_score
                )
                for m in result.matches
            ],
            result.plan,
        )

    def get(
        self, store: str, ids: Sequence[str], *, expected_store_id: int
    ) -> tuple[list[StoredEntry], list[str]]:
        self.calls.append(("get", store))
        with _translated():
            found, missing = self.db.get_keys(store, list(ids), expected_store_id=expected_store_id)
        return [StoredEntry(e.id, e.metadata) for e in found], missing

    def get_by_filter(
        self,
        store: str,
        filter: Filter | None,
        *,
        limit: int,
        page_token: str,
        expected_store_id: int,
    ) -> StoredPage:
        self.calls.append(("get_by_filter", store))
        with _translated():
            page = self.db.get_by_predicate(
                store,
                filter,
                limit=limit or 100,
                page_token=page_token,
                expected_store_id=expected_store_id,
            )
        return StoredPage(
            [StoredEntry(e.id, e.metadata) for e in page.entries], page.next_page_token
        )

    def delete(self, store: str, ids: Sequence[str], *, expected_store_id: int) -> int:
        self.calls.append(("delete", store))
        with _translated():
            return self.db.delete_keys(store, list(ids), expected_store_id=expected_store_id)

    def delete_by_filter(self, store: str, filter: Filter | None, *, expected_store_id: int) -> int:
        self.calls.append(("delete_by_filter", store))
        assert filter is not None
        with _translated():
            return self.db.delete_by_predicate(store, filter, expected_store_id=expected_store_id)


def _record(info: StoreInfo) -> StoreRecord[StoreInfo]:
    return StoreRecord(info.name, info.store_id, info.dimension, info.store_metadata, info)


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except db_errors.StoreNotFoundError as error:
        raise StoreNotFoundError(str(error)) from None
    except db_errors.StoreChangedError as error:
        raise StoreChangedError(str(error)) from None
