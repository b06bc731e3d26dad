"""Filtered similarity search: exact result counts and recall at every selectivity, the planner.

One store of 20,000 clustered 64-d vectors is shared by the module. Its "bucket" metadata is a
permutation of 0..19999 taken mod 10,000, so `bucket < 10000 * s` selects a fraction s. The
Milvus engine gets the same checks on a smaller corpus of the same kind (milvus-lite evaluates
filters in Python, about 25 us an entry).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from nachbar.db import store as store_module
from nachbar.db.engine import Database
from nachbar.db.filters import AllOf, Condition, Filter, Op
from nachbar.db.hnsw import HnswGraph
from nachbar.db.interface import Engine
from nachbar.db.milvus_engine import MilvusEngine, MilvusSettings
from nachbar.db.types import Entry, SearchMode, StoreSpec
from tests.db.data import embedding_like

N, DIM, K, QUERIES = 20_000, 64, 10, 20
SELECTIVITIES = (0.0001, 0.001, 0.01, 0.1, 0.5, 1.0)


class Corpus:
    def __init__(self, db: Engine, vectors: np.ndarray, buckets: np.ndarray, queries: np.ndarray):
        self.db = db
        self.vectors = vectors
        self.buckets = buckets
        self.queries = queries

    def truth(self, query: np.ndarray, allowed: np.ndarray) -> list[int]:
        scores = self.vectors.astype(np.float64) @ query.astype(np.float64)
        scores[~allowed] = -np.inf
        want = min(K, int(allowed.sum()))
        return [int(i) for i in np.argsort(-scores, kind="stable")[:want]]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    rng = np.random.default_rng(7)
    everything = embedding_like(N + QUERIES, DIM, rng)
    vectors, queries = everything[:N], everything[N:]
    buckets = rng.permutation(N) % 10_000
    path: Path = tmp_path_factory.mktemp("search")
    db = Database.open(path, fsync="off", checkpoint_seconds=0)
    db.create_store(StoreSpec("c", DIM, predicate_indexes=("bucket",)))
    for start in range(0, N, 5000):
        db.upsert(
            "c",
            [
                Entry(f"e{n}", vectors[n], {"bucket": int(buckets[n]), "copy": int(buckets[n])})
                for n in range(start, start + 5000)
            ],
        )
    yield Corpus(db, vectors, buckets, queries)
    db.close()


def fill(db: Engine, n: int, dim: int, queries: int, seed: int) -> Corpus:
    rng = np.random.default_rng(seed)
    everything = embedding_like(n + queries, dim, rng)
    vectors = everything[:n]
    buckets = rng.permutation(n) % 10_000 if n > 10_000 else rng.permutation(n) * 10_000 // n
    db.create_store(StoreSpec("c", dim, predicate_indexes=("bucket",)))
    for start in range(0, n, 5000):
        db.upsert(
            "c",
            [
                Entry(f"e{i}", vectors[i], {"bucket": int(buckets[i]), "copy": int(buckets[i])})
                for i in range(start, min(n, start + 5000))
            ],
        )
    return Corpus(db, vectors, buckets, everything[n:])


@pytest.fixture(scope="module")
def milvus_corpus(milvus_settings: MilvusSettings) -> Iterator[Corpus]:
    engine = MilvusEngine.open(milvus_settings)
    engine.drop_store("c", missing_ok=True)
    yield fill(engine, 2500, 32, 5, seed=8)
    engine.drop_store("c", missing_ok=True)
    engine.close()


def selection(corpus: Corpus, fraction: float, field: str = "bucket") -> tuple[Filter, np.ndarray]:
    cut = int(10_000 * fraction)
    return Condition(field, Op.LT, cut), corpus.buckets < cut


def recall_and_counts(
    corpus: Corpus, flt: Filter | None, allowed: np.ndarray, mode: SearchMode
) -> tuple[float, set[str]]:
    recalls = []
    plans = set()
    for query in corpus.queries:
        result = corpus.db.get_sim_n("c", query, K, filter=flt, mode=mode)
        assert result.matches or not allowed.any(), "nothing found"
        truth = corpus.truth(query, allowed)
        got = [int(m.id[1:]) for m in result.matches]
        assert len(got) == len(truth), f"{mode}: {len(got)} results, expected {len(truth)}"
        assert allowed[got].all(), "a result outside the filter"
        assert len(set(got)) == len(got), "a result twice"
        scores = [m.score for m in result.matches]
        assert scores == sorted(scores, reverse=True)
        recalls.append(len(set(got) & set(truth)) / len(truth))
        plans.add(result.plan)
    return float(np.mean(recalls)), plans


@pytest.mark.parametrize("fraction", SELECTIVITIES)
@pytest.mark.parametrize("mode", [SearchMode.AUTO, SearchMode.HNSW, SearchMode.EXACT])
def test_filtered_search_count_and_recall(
    corpus: Corpus, fraction: float, mode: SearchMode
) -> None:
    flt, allowed = selection(corpus, fraction)
    assert allowed.sum() == round(N * fraction)
    recall, plans = recall_and_counts(corpus, flt, allowed, mode)
    if mode == SearchMode.EXACT:
        assert recall == 1.0 and plans == {"exact"}
    if mode == SearchMode.HNSW:
        assert plans == {"hnsw"}  # the graph found them all, no fallback was needed
    assert recall >= 0.95, f"recall@{K} {recall:.3f} at selectivity {fraction}"


@pytest.mark.parametrize("fraction", (0.0004, 0.01, 0.1, 0.5, 1.0))
@pytest.mark.parametrize("mode", [SearchMode.AUTO, SearchMode.HNSW, SearchMode.EXACT])
def test_milvus_filtered_search_count_and_recall(
    milvus_corpus: Corpus, fraction: float, mode: SearchMode
) -> None:
    corpus = milvus_corpus
    flt, allowed = selection(corpus, fraction)
    assert allowed.sum() == round(len(corpus.vectors) * fraction)
    recall, plans = recall_and_counts(corpus, flt, allowed, mode)
    if mode == SearchMode.EXACT:
        assert recall == 1.0 and plans == {"exact"}
    if mode == SearchMode.AUTO:  # few matches are scored exactly, many go to Milvus's HNSW
        assert plans == ({"exact"} if allowed.sum() <= 1000 else {"hnsw"})
    assert recall >= 0.95, f"recall@{K} {recall:.3f} at selectivity {fraction}"


def test_milvus_unfiltered_search(milvus_corpus: Corpus) -> None:
    everything = np.ones(len(milvus_corpus.vectors), dtype=bool)
    for mode in SearchMode:
        recall, plans = recall_and_counts(milvus_corpus, None, everything, mode)
        assert recall >= 0.95 and plans == {"exact" if mode == SearchMode.EXACT else "hnsw"}


def test_unfiltered_search(corpus: Corpus) -> None:
    allowed = np.ones(N, dtype=bool)
    for mode in SearchMode:
        recall, _ = recall_and_counts(corpus, None, allowed, mode)
        assert recall >= 0.95


def test_unindexed_filter_gives_the_same_results(corpus: Corpus) -> None:
    # "copy" holds the same values as "bucket" but has no predicate index.
    for fraction in (0.001, 0.1):
        indexed, _ = selection(corpus, fraction)
        plain, _ = selection(corpus, fraction, field="copy")
        for query in corpus.queries[:3]:
            a = corpus.db.get_sim_n("c", query, K, filter=indexed, mode=SearchMode.EXACT)
            b = corpus.db.get_sim_n("c", query, K, filter=plain, mode=SearchMode.EXACT)
            assert [m.id for m in a.matches] == [m.id for m in b.matches]


def test_planner_scans_small_subsets_and_walks_the_graph_for_large_ones(
    corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With this budget the planner scans up to 1,000 matching entries exactly.
    monkeypatch.setattr(store_module, "EXACT_SCAN_BUDGET", 1000 * DIM)
    query = corpus.queries[0]
    for fraction, plan in ((0.0001, "exact"), (0.01, "exact"), (0.1, "hnsw"), (1.0, "hnsw")):
        flt, _ = selection(corpus, fraction)
        assert corpus.db.get_sim_n("c", query, K, filter=flt).plan == plan
    assert corpus.db.get_sim_n("c", query, K).plan == "hnsw"
    # An explicit mode overrides the planner.
    flt, _ = selection(corpus, 0.001)
    assert corpus.db.get_sim_n("c", query, K, filter=flt, mode=SearchMode.HNSW).plan == "hnsw"
    flt, _ = selection(corpus, 1.0)
    assert corpus.db.get_sim_n("c", query, K, filter=flt, mode=SearchMode.EXACT).plan == "exact"


def test_planner_scans_a_narrow_filter_when_the_filtered_walk_costs_more(
    corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Over the scan budget, a 1% filter is too narrow for post-filtering (2,000 candidates for
    # 10 results): the planner weighs the scan of its 200 entries against the filtered walk.
    monkeypatch.setattr(store_module, "EXACT_SCAN_BUDGET", 10 * DIM)
    flt, allowed = selection(corpus, 0.01)
    query = corpus.queries[5]
    result = corpus.db.get_sim_n("c", query, K, filter=flt)
    assert result.plan == "exact"
    assert [int(m.id[1:]) for m in result.matches] == corpus.truth(query, allowed)
    # A 10% filter is post-filtered on the graph whatever a walk would cost.
    broad, _ = selection(corpus, 0.1)
    assert corpus.db.get_sim_n("c", query, K, filter=broad).plan == "hnsw"
    # Were graph visits free, the walk would win.
    monkeypatch.setattr(store_module, "WALK_VISIT_FLOATS", 0)
    assert corpus.db.get_sim_n("c", query, K, filter=flt).plan == "hnsw"


def test_exact_scans_gather_in_blocks(corpus: Corpus, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "SCAN_BLOCK_ROWS", 7)  # blocks that split the matches
    flt, allowed = selection(corpus, 0.05)
    for query in corpus.queries[:3]:
        result = corpus.db.get_sim_n("c", query, K, filter=flt, mode=SearchMode.EXACT)
        assert [int(m.id[1:]) for m in result.matches] == corpus.truth(query, allowed)


def test_graph_shortfall_falls_back_to_an_exact_scan(
    corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = HnswGraph.search

    def short(self: HnswGraph, query: np.ndarray, count: int, allowed: object) -> object:
        found = original(self, query, count, allowed)  # type: ignore[arg-type]
        assert found is not None
        return found[0][:2], found[1][:2]  # as if the graph had found only two

    monkeypatch.setattr(HnswGraph, "search", short)
    flt, allowed = selection(corpus, 0.5)
    query = corpus.queries[1]
    result = corpus.db.get_sim_n("c", query, K, filter=flt, mode=SearchMode.HNSW)
    assert result.plan == "exact"
    assert [int(m.id[1:]) for m in result.matches] == corpus.truth(query, allowed)


def record_graph_searches(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Spy on HnswGraph.search: one entry per call, True when it walked with a filter."""
    calls: list[bool] = []
    original = HnswGraph.search

    def spy(self: HnswGraph, query: np.ndarray, count: int, allowed: object) -> object:
        calls.append(allowed is not None)
        return original(self, query, count, allowed)  # type: ignore[arg-type]

    monkeypatch.setattr(HnswGraph, "search", spy)
    return calls


def test_broad_filter_far_from_the_query_walks_the_graph_filtered(
    corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On the graph, a broad filter is first answered from the unfiltered nearest candidates;
    # when the matching entries all lie far from the query, too few candidates match and the
    # search walks the graph with the filter instead.
    query = corpus.queries[3]
    farthest = np.argsort(corpus.vectors @ query)[: N // 10]
    chosen = sorted({int(b) for b in corpus.buckets[farthest]})
    allowed = np.isin(corpus.buckets, chosen)
    flt = Condition("bucket", Op.IN, values=tuple(chosen))
    calls = record_graph_searches(monkeypatch)
    result = corpus.db.get_sim_n("c", query, K, filter=flt, mode=SearchMode.HNSW)
    assert calls == [False, True] and result.plan == "hnsw"
    got = [int(m.id[1:]) for m in result.matches]
    truth = corpus.truth(query, allowed)
    assert allowed[got].all() and len(got) == K
    assert len(set(got) & set(truth)) / K >= 0.9


def test_broad_filter_near_the_query_needs_no_filtered_walk(
    corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = record_graph_searches(monkeypatch)
    flt, allowed = selection(corpus, 0.5)
    query = corpus.queries[4]
    result = corpus.db.get_sim_n("c", query, K, filter=flt, mode=SearchMode.HNSW)
    assert calls == [False] and result.plan == "hnsw"
    got = [int(m.id[1:]) for m in result.matches]
    assert got == corpus.truth(query, allowed)


def test_small_stores_are_scanned_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    vectors = embedding_like(300, DIM, rng)
    with Database.open(tmp_path, fsync="off", checkpoint_seconds=0) as db:
        db.create_store(StoreSpec("small", DIM))
        db.upsert("small", [Entry(f"e{n}", vectors[n], {"half": n % 2}) for n in range(300)])
        assert db.get_sim_n("small", vectors[0], K).plan == "exact"
        flt = Condition("half", Op.EQ, 0)
        assert db.get_sim_n("small", vectors[0], K, filter=flt).plan == "exact"


def test_small_ef_is_raised_to_k(corpus: Corpus) -> None:
    result = corpus.db.get_sim_n("c", corpus.queries[2], 50, ef=1, mode=SearchMode.HNSW)
    assert result.plan == "hnsw" and len(result.matches) == 50


def test_filter_combining_indexed_and_unindexed_fields(corpus: Corpus) -> None:
    flt = AllOf((Condition("bucket", Op.LT, 3000), Condition("copy", Op.GTE, 2990)))
    allowed = (corpus.buckets < 3000) & (corpus.buckets >= 2990)
    for mode in SearchMode:
        result = corpus.db.get_sim_n("c", corpus.queries[3], K, filter=flt, mode=mode)
        assert [int(m.id[1:]) for m in result.matches] == corpus.truth(corpus.queries[3], allowed)
