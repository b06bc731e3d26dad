"""MMR and recommend by examples (nachbar.db.explore) on every engine, against numpy references.

The references below are written from the definitions (module docstring of nachbar.db.explore),
not from its code: brute force over every entry in float64, in exact mode.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from nachbar.db import explore
from nachbar.db.errors import InvalidArgumentError, NotFoundError, StoreChangedError
from nachbar.db.filters import Condition, Op
from nachbar.db.interface import Engine
from nachbar.db.types import (
    Entry,
    Metric,
    MmrOptions,
    RecommendOptions,
    RecommendStrategy,
    SearchMode,
    StoreSpec,
)

N, DIM = 240, 12
EXACT = SearchMode.EXACT


def sim(metric: Metric, rows: np.ndarray, target: np.ndarray) -> np.ndarray:
    rows = rows.astype(np.float64)
    target = target.astype(np.float64)
    if metric == Metric.L2:
        return np.array([-float(np.sum((r - target) ** 2)) for r in rows])
    if metric == Metric.COSINE:
        return np.array(
            [float(r @ target) / (np.linalg.norm(r) * np.linalg.norm(target)) for r in rows]
        )
    dots: np.ndarray = rows @ target
    return dots


def ranked(scores: np.ndarray, allowed: np.ndarray, ids: list[str]) -> list[int]:
    order = sorted(
        (i for i in range(len(scores)) if allowed[i]), key=lambda i: (-scores[i], ids[i])
    )
    return order


def reference_mmr(
    vectors: np.ndarray, metric: Metric, relevance: np.ndarray, pool: list[int], lam: float, k: int
) -> list[int]:
    chosen: list[int] = []
    left = list(pool)
    while left and len(chosen) < k:
        best, best_value = left[0], -math.inf
        for i in left:
            penalty = (
                max(float(sim(metric, vectors[[j]], vectors[i])[0]) for j in chosen)
                if chosen
                else 0.0
            )
            value = relevance[i] if not chosen else lam * relevance[i] - (1 - lam) * penalty
            if value > best_value:
                best, best_value = i, value
        chosen.append(best)
        left.remove(best)
    return chosen


def make_store(db: Engine, metric: Metric, vectors: np.ndarray, name: str = "s") -> list[str]:
    db.create_store(StoreSpec(name=name, dimension=vectors.shape[1], metric=metric))
    ids = [f"e{i:04d}" for i in range(len(vectors))]
    db.upsert(
        name,
        [Entry(i, v, {"group": n % 3}) for n, (i, v) in enumerate(zip(ids, vectors, strict=True))],
    )
    return ids


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(11)


METRICS = (Metric.COSINE, Metric.L2, Metric.INNER_PRODUCT)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("lam", [0.0, 0.3, 0.7])
def test_mmr_matches_brute_force(
    db: Engine, metric: Metric, lam: float, rng: np.random.Generator
) -> None:
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    ids = make_store(db, metric, vectors)
    query = rng.standard_normal(DIM).astype(np.float32)
    k = 7
    result = explore.get_sim_n(db, "s", query, k, mmr=MmrOptions(lam), mode=EXACT)
    relevance = sim(metric, vectors, query)
    pool = ranked(relevance, np.ones(N, bool), ids)[: explore.default_candidates(k)]
    expected = reference_mmr(vectors, metric, relevance, pool, lam, k)
    assert [m.id for m in result.matches] == [ids[i] for i in expected]
    # Each result keeps its similarity to the query.
    for match, i in zip(result.matches, expected, strict=True):
        assert match.score == pytest.approx(relevance[i], rel=1e-5, abs=1e-5)
        assert match.vector is None


def test_mmr_lambda_one_is_plain_search(db: Engine, rng: np.random.Generator) -> None:
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    make_store(db, Metric.COSINE, vectors)
    query = rng.standard_normal(DIM).astype(np.float32)
    plain = db.get_sim_n("s", query, 10, mode=EXACT)
    mmr = explore.get_sim_n(db, "s", query, 10, mmr=MmrOptions(1.0), mode=EXACT)
    assert [(m.id, m.score) for m in mmr.matches] == [(m.id, m.score) for m in plain.matches]


def test_mmr_lambda_zero_picks_least_similar_next(db: Engine, rng: np.random.Generator) -> None:
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    ids = make_store(db, Metric.COSINE, vectors)
    query = rng.standard_normal(DIM).astype(np.float32)
    result = explore.get_sim_n(db, "s", query, 2, mmr=MmrOptions(0.0, candidates=30), mode=EXACT)
    pool = ranked(sim(Metric.COSINE, vectors, query), np.ones(N, bool), ids)[:30]
    first = pool[0]
    others = pool[1:]
    least = others[int(np.argmin(sim(Metric.COSINE, vectors[others], vectors[first])))]
    assert [m.id for m in result.matches] == [ids[first], ids[least]]


def clustered(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Eight tight clusters of 30 near-duplicates; cluster 0 sits closest to the query."""
    centres = rng.standard_normal((8, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(8), 30)
    vectors = centres[labels] + 0.02 * rng.standard_normal((len(labels), DIM))
    return vectors.astype(np.float32), labels


def test_mmr_diversifies_clustered_data(db: Engine, rng: np.random.Generator) -> None:
    vectors, labels = clustered(rng)
    make_store(db, Metric.COSINE, vectors)
    query = (vectors[labels == 0].mean(axis=0) + 0.6 * vectors[labels == 1].mean(axis=0)).astype(
        np.float32
    )
    k = 6

    def picked(mmr: MmrOptions | None) -> tuple[int, float]:
        found = explore.get_sim_n(db, "s", query, k, mmr=mmr, mode=EXACT, include_vectors=True)
        rows = [int(m.id[1:]) for m in found.matches]
        unit = np.array([m.vector for m in found.matches], dtype=np.float64)
        unit /= np.linalg.norm(unit, axis=1, keepdims=True)
        pairs = unit @ unit.T
        mean_pair = float((pairs.sum() - k) / (k * (k - 1)))
        return len(set(labels[rows].tolist())), mean_pair

    plain_clusters, plain_similarity = picked(None)
    mmr_clusters, mmr_similarity = picked(MmrOptions(0.5, candidates=200))
    assert plain_clusters == 1
    assert mmr_clusters >= 3
    assert mmr_similarity < plain_similarity - 0.3


def test_mmr_honours_filter_and_counts(db: Engine, rng: np.random.Generator) -> None:
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    make_store(db, Metric.COSINE, vectors)
    query = rng.standard_normal(DIM).astype(np.float32)
    only = Condition("group", Op.EQ, 1)
    for mode in (SearchMode.AUTO, SearchMode.EXACT, SearchMode.HNSW):
        found = explore.get_sim_n(
            db, "s", query, 9, mmr=MmrOptions(0.5), filter=only, mode=mode, ef=50
        )
        assert len(found.matches) == 9
        assert all(m.metadata["group"] == 1 for m in found.matches)
    rare = Condition("group", Op.EQ, 2)
    db.delete_by_predicate("s", Condition("group", Op.EQ, 2))
    db.upsert("s", [Entry("lone", vectors[0], {"group": 2})])
    found = explore.get_sim_n(db, "s", query, 9, mmr=MmrOptions(0.5), filter=rare)
    assert [m.id for m in found.matches] == ["lone"]


def reference_average(metric: Metric, positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    def unit(rows: np.ndarray) -> np.ndarray:
        rows = rows.astype(np.float64)
        if metric != Metric.COSINE:
            return rows
        scaled: np.ndarray = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        return scaled

    average: np.ndarray = unit(positives).mean(axis=0)
    if len(negatives):
        combined: np.ndarray = average + (average - unit(negatives).mean(axis=0))
        return combined
    return average


@pytest.mark.parametrize("metric", METRICS)
def test_recommend_average_vector(db: Engine, metric: Metric, rng: np.random.Generator) -> None:
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    ids = make_store(db, metric, vectors)
    pos, neg = [3, 50, 77], [10, 11]
    examples = RecommendOptions(
        positive_ids=tuple(ids[i] for i in pos), negative_ids=tuple(ids[i] for i in neg)
    )
    found = explore.get_sim_n(db, "s", None, 8, recommend=examples, mode=EXACT)
    target = reference_average(metric, vectors[pos], vectors[neg])
    scores = sim(metric, vectors, target)
    allowed = np.ones(N, bool)
    allowed[pos + neg] = False
    expected = ranked(scores, allowed, ids)[:8]
    assert [m.id for m in found.matches] == [ids[i] for i in expected]
    for match, i in zip(found.matches, expected, strict=True):
        assert match.score == pytest.approx(scores[i], rel=1e-4, abs=1e-4)

    # With a query: the query is one more positive; negatives alone need the query.
    query = rng.standard_normal(DIM).astype(np.float32)
    found = explore.get_sim_n(
        db, "s", query, 5, recommend=RecommendOptions(negative_ids=(ids[10],)), mode=EXACT
    )
    target = reference_average(metric, query[None, :], vectors[[10]])
    allowed = np.ones(N, bool)
    allowed[10] = False
    expected = ranked(sim(metric, vectors, target), allowed, ids)[:5]
    assert [m.id for m in found.matches] == [ids[i] for i in expected]


def reference_best_score(
    metric: Metric, vectors: np.ndarray, positives: np.ndarray, negatives: np.ndarray
) -> tuple[list[tuple[int, float, float]], np.ndarray]:
    best_pos = np.max(np.column_stack([sim(metric, vectors, p) for p in positives]), axis=1)
    best_neg = np.full(len(vectors), -np.inf)
    if len(negatives):
        best_neg = np.max(np.column_stack([sim(metric, vectors, n) for n in negatives]), axis=1)
    keys = [
        (0, -best_pos[i], 0.0) if best_pos[i] > best_neg[i] else (1, best_neg[i], 0.0)
        for i in range(len(vectors))
    ]
    return keys, best_pos


@pytest.mark.parametrize("metric", METRICS)
def test_recommend_best_score(db: Engine, metric: Metric, rng: np.random.Generator) -> None:
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    ids = make_store(db, metric, vectors)
    pos, neg = [5, 6, 120], [7, 8, 9]
    examples = RecommendOptions(
        positive_ids=tuple(ids[i] for i in pos),
        negative_ids=tuple(ids[i] for i in neg),
        strategy=RecommendStrategy.BEST_SCORE,
        candidates=N,  # every entry: the reference is brute force
    )
    found = explore.get_sim_n(db, "s", None, 12, recommend=examples, mode=EXACT)
    keys, best_pos = reference_best_score(metric, vectors, vectors[pos], vectors[neg])
    rest = [i for i in range(N) if i not in pos + neg]
    expected = sorted(rest, key=lambda i: (keys[i][0], keys[i][1], ids[i]))[:12]
    assert [m.id for m in found.matches] == [ids[i] for i in expected]
    for match, i in zip(found.matches, expected, strict=True):
        assert match.score == pytest.approx(best_pos[i], rel=1e-5, abs=1e-5)
    # Negatives that win push entries to the end: all-negative-winning entries rank last.
    tiers = [keys[i][0] for i in expected]
    assert tiers == sorted(tiers)


def test_best_score_with_query_and_default_pool(db: Engine, rng: np.random.Generator) -> None:
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    ids = make_store(db, Metric.COSINE, vectors)
    query = rng.standard_normal(DIM).astype(np.float32)
    examples = RecommendOptions(
        positive_ids=(ids[1],), negative_ids=(ids[2],), strategy=RecommendStrategy.BEST_SCORE
    )
    found = explore.get_sim_n(db, "s", query, 6, recommend=examples, mode=EXACT)
    positives = np.vstack([vectors[1], query])
    keys, _ = reference_best_score(Metric.COSINE, vectors, positives, vectors[[2]])
    # The default pool holds the 24 nearest of each positive; the reference restricted to it.
    pool: set[int] = set()
    for p in positives:
        pool.update(ranked(sim(Metric.COSINE, vectors, p), np.ones(N, bool), ids)[:26])
    pool -= {1, 2}
    expected = sorted(pool, key=lambda i: (keys[i][0], keys[i][1], ids[i]))[:6]
    assert [m.id for m in found.matches] == [ids[i] for i in expected]


def test_recommend_honours_filter_and_excludes_examples(
    db: Engine, rng: np.random.Generator
) -> None:
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    ids = make_store(db, Metric.COSINE, vectors)
    # Near-duplicates of the positive, in the filtered group: without exclusion it would win.
    only = Condition("group", Op.EQ, 0)
    for strategy in RecommendStrategy:
        examples = RecommendOptions(positive_ids=(ids[0], ids[3]), strategy=strategy)
        found = explore.get_sim_n(db, "s", None, 10, recommend=examples, filter=only)
        got = [m.id for m in found.matches]
        assert len(got) == 10
        assert ids[0] not in got and ids[3] not in got
        assert all(m.metadata["group"] == 0 for m in found.matches)
    # Exactly min(k, matches less the examples).
    count = sum(1 for n in range(N) if n % 3 == 0)
    found = explore.get_sim_n(
        db,
        "s",
        None,
        500,
        recommend=RecommendOptions(positive_ids=(ids[0],)),
        filter=only,
    )
    assert len(found.matches) == count - 1


def test_mmr_over_average_vector_recommend(db: Engine, rng: np.random.Generator) -> None:
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    ids = make_store(db, Metric.COSINE, vectors)
    examples = RecommendOptions(positive_ids=(ids[4], ids[40]))
    found = explore.get_sim_n(db, "s", None, 6, recommend=examples, mmr=MmrOptions(0.4), mode=EXACT)
    target = reference_average(Metric.COSINE, vectors[[4, 40]], vectors[[]])
    relevance = sim(Metric.COSINE, vectors, target)
    allowed = np.ones(N, bool)
    allowed[[4, 40]] = False
    pool = ranked(relevance, allowed, ids)[: explore.default_candidates(6)]
    expected = reference_mmr(vectors, Metric.COSINE, relevance, pool, 0.4, 6)
    assert [m.id for m in found.matches] == [ids[i] for i in expected]


def test_bad_requests(db: Engine, rng: np.random.Generator) -> None:
    vectors = rng.standard_normal((30, DIM)).astype(np.float32)
    ids = make_store(db, Metric.COSINE, vectors)
    query = vectors[0]
    for lam in (-0.1, 1.5, math.nan, math.inf):
        with pytest.raises(InvalidArgumentError, match="mmr lambda .* out of range; use 0"):
            explore.get_sim_n(db, "s", query, 3, mmr=MmrOptions(lam))
    with pytest.raises(InvalidArgumentError, match=r"mmr candidates \(2\) must be at least k"):
        explore.get_sim_n(db, "s", query, 3, mmr=MmrOptions(0.5, candidates=2))
    with pytest.raises(InvalidArgumentError, match="more than 1000"):
        explore.get_sim_n(db, "s", query, 3, mmr=MmrOptions(0.5, candidates=1001))
    with pytest.raises(NotFoundError, match="'nope', 'gone'") as raised:
        explore.get_sim_n(db, "s", None, 3, recommend=RecommendOptions(("nope", ids[1]), ("gone",)))
    assert "give ids of stored entries" in str(raised.value)
    many = tuple(f"x{i}" for i in range(explore.MAX_EXAMPLES + 1))
    with pytest.raises(InvalidArgumentError, match="65 examples are more than 64"):
        explore.get_sim_n(db, "s", None, 3, recommend=RecommendOptions(many))
    with pytest.raises(InvalidArgumentError, match="give a query vector or positive example ids"):
        explore.get_sim_n(db, "s", None, 3, recommend=RecommendOptions((), (ids[1],)))
    with pytest.raises(InvalidArgumentError, match="give a query vector or positive example ids"):
        explore.get_sim_n(db, "s", None, 3, mmr=MmrOptions(0.5))
    with pytest.raises(InvalidArgumentError, match="both a positive and a negative"):
        explore.get_sim_n(db, "s", None, 3, recommend=RecommendOptions((ids[1],), (ids[1],)))
    with pytest.raises(InvalidArgumentError, match="average_vector recommend strategy only"):
        explore.get_sim_n(
            db,
            "s",
            None,
            3,
            mmr=MmrOptions(0.5),
            recommend=RecommendOptions((ids[1],), strategy=RecommendStrategy.BEST_SCORE),
        )
    with pytest.raises(InvalidArgumentError, match="unknown recommend strategy"):
        explore.get_sim_n(
            db,
            "s",
            None,
            3,
            recommend=RecommendOptions((ids[1],), strategy="worst"),  # type: ignore[arg-type]
        )
    # Opposite examples cancel out under cosine.
    db.upsert(
        "s", [Entry("up", np.ones(DIM, np.float32)), Entry("down", -np.ones(DIM, np.float32))]
    )
    with pytest.raises(InvalidArgumentError, match="cancel out"):
        explore.get_sim_n(
            db, "s", -np.ones(DIM, np.float32), 3, recommend=RecommendOptions(("up",))
        )
    info = db.get_store("s")
    with pytest.raises(StoreChangedError):
        explore.get_sim_n(
            db, "s", query, 3, mmr=MmrOptions(0.5), expected_store_id=info.store_id + 1
        )
    # Still serving.
    assert len(explore.get_sim_n(db, "s", query, 3, mmr=MmrOptions(0.5)).matches) == 3
