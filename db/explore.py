"""More ways to ask GetSimN, on top of any engine: MMR diversity and recommend by examples.

Both run above the `Engine` protocol (nachbar.db.interface), so the embedded and the Milvus
engine give the same answers: they only ask the engine for plain searches (with the request's
filter, mode and ef) and for example entries' vectors, and score in float64 here.

- Recommend by examples: positive and negative entry ids, instead of or with a query vector.
  AVERAGE_VECTOR searches once with 2 x mean(positives and the query) - mean(negatives) (the mean
  of the positives alone without negatives); under the cosine metric every example is first
  scaled to unit length, as only directions count there. BEST_SCORE pools the `candidates`
  nearest entries of each positive (and the query), then orders them: entries more similar to
  some positive than to every negative first, by that best positive similarity; then the others,
  least similar to a negative first. The example entries never appear in the results.
- MMR: from the pool of the `candidates` best results, pick k greedily, each time the entry
  maximizing lambda x sim(query, d) - (1 - lambda) x max sim(d, picked so far), where sim is
  the store's metric in nachbar's direction (higher is more similar). Results come in the
  order picked; each keeps its similarity to the query, which therefore need not decrease.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from nachbar.db import filters, validation
from nachbar.db.errors import InvalidArgumentError, NotFoundError, StoreChangedError
from nachbar.db.interface import Engine
from nachbar.db.types import (
    ALL_METADATA,
    Match,
    MetadataSelection,
    Metric,
    MmrOptions,
    RecommendOptions,
    RecommendStrategy,
    SearchMode,
    SearchResult,
)

# The largest candidate pool MMR or BEST_SCORE takes from the engine per search: MMR compares
# each pick against the whole pool, and the pool travels with its vectors.
MAX_CANDIDATES = 1000
# Positive and negative examples together; BEST_SCORE runs one search per positive.
MAX_EXAMPLES = 64


# A plain search with the request's filter, mode and ef: (target, limit, with vectors).
_Search = Callable[[np.ndarray, int, bool], SearchResult]


def default_candidates(k: int) -> int:
    """The pool MMR and BEST_SCORE take when the request leaves it at 0: max(4k, 20), within
    [k, MAX_CANDIDATES]."""
    return max(k, min(MAX_CANDIDATES, max(4 * k, 20)))


def get_sim_n(
    engine: Engine,
    name: str,
    query: np.ndarray | None,
    k: int,
    *,
    mmr: MmrOptions | None = None,
    recommend: RecommendOptions | None = None,
    filter: filters.Filter | None = None,
    mode: SearchMode = SearchMode.AUTO,
    ef: int = 0,
    include_vectors: bool = False,
    metadata: MetadataSelection = ALL_METADATA,
    expected_store_id: int = 0,
    keywords: bool = False,
) -> SearchResult:
    """GetSimN with MMR and/or examples: exactly min(k, matching entries that are not
    examples) results. `query` may be None when `recommend` has positive examples.
    `keywords`: the request also asked for a keyword or hybrid search, which is refused."""
    if keywords:
        raise InvalidArgumentError(
            f"store {name!r}: MMR and recommend by examples do not combine with keyword or "
            "hybrid search; send them in separate GetSimN requests"
        )
    k, ef, mode = validation.search_args(name, k, ef, mode)
    info = engine.get_store(name)
    if expected_store_id and info.store_id != expected_store_id:
        raise StoreChangedError(name, expected_store_id, info.store_id)
    store_id = info.store_id
    examples = _checked_examples(name, recommend) if recommend is not None else None
    if query is not None:
        query = validation.vector(
            query, store=name, dimension=info.dimension, metric=info.metric, what="the query"
        )
    elif examples is None or not examples.positive_ids:
        raise InvalidArgumentError(
            f"store {name!r}: give a query vector or positive example ids (or both)"
        )
    lambda_, pool = (None, k) if mmr is None else _checked_mmr(name, mmr, k)
    if (
        examples is not None
        and examples.strategy == RecommendStrategy.BEST_SCORE
        and lambda_ is not None
    ):
        raise InvalidArgumentError(
            f"store {name!r}: MMR combines with the average_vector recommend strategy only "
            "(best_score has no single query to be relevant to); drop mmr or use average_vector"
        )
    excluded: set[str] = set()
    if examples is not None:
        excluded = set(examples.positive_ids) | set(examples.negative_ids)
    fetch = pool + len(excluded)
    if fetch > validation.MAX_K:
        raise InvalidArgumentError(
            f"store {name!r}: k (or the candidate pool) plus {len(excluded)} examples is more "
            f"than {validation.MAX_K}; ask for fewer results"
        )
    need_vectors = include_vectors or lambda_ is not None

    def search(target: np.ndarray, limit: int, vectors: bool) -> SearchResult:
        return engine.get_sim_n(
            name,
            target,
            limit,
            filter=filter,
            mode=mode,
            ef=ef,
            include_vectors=vectors,
            metadata=metadata,
            expected_store_id=store_id,
        )

    if examples is None:
        assert query is not None
        found = search(query, pool, need_vectors)
        matches, plan = found.matches, found.plan
    else:
        positives, negatives = _example_vectors(engine, name, examples, store_id, info.dimension)
        if query is not None:
            positives = np.vstack([positives, query.astype(np.float64)])
        if examples.strategy == RecommendStrategy.BEST_SCORE:
            per_example = examples.candidates or default_candidates(k)
            per_example = _checked_pool(name, "recommend candidates", per_example, k)
            matches, plan = _best_score(
                search, info.metric, positives, negatives, per_example + len(excluded), excluded
            )
            matches = matches[:k]
        else:
            target = average_vector(name, info.metric, positives, negatives)
            found = search(target.astype(np.float32), fetch, need_vectors)
            matches = [m for m in found.matches if m.id not in excluded][:pool]
            plan = found.plan
    matches = matches[:k] if lambda_ is None else _mmr_order(matches, info.metric, lambda_, k)
    if not include_vectors:
        matches = [_without_vector(m) for m in matches]
    return SearchResult(matches=matches, plan=plan)


def _checked_mmr(name: str, mmr: MmrOptions, k: int) -> tuple[float, int]:
    lambda_ = mmr.lambda_
    if (
        isinstance(lambda_, bool)
        or not isinstance(lambda_, int | float)
        or not math.isfinite(lambda_)
        or not 0.0 <= lambda_ <= 1.0
    ):
        raise InvalidArgumentError(
            f"store {name!r}: mmr lambda {lambda_!r} is out of range; use 0 (most diverse) to "
            "1 (most relevant, a plain search)"
        )
    pool = mmr.candidates or default_candidates(k)
    return float(lambda_), _checked_pool(name, "mmr candidates", pool, k)


def _checked_pool(name: str, what: str, pool: object, k: int) -> int:
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 0:
        raise InvalidArgumentError(f"store {name!r}: {what} is {pool!r}; use 0 (default) or more")
    if k > MAX_CANDIDATES:
        raise InvalidArgumentError(
            f"store {name!r}: k {k} is more than {MAX_CANDIDATES}, the most MMR and best_score "
            "recommend choose among; ask for fewer results"
        )
    if pool < k:
        raise InvalidArgumentError(
            f"store {name!r}: {what} ({pool}) must be at least k ({k}); raise it or leave it "
            "0 for max(4k, 20)"
        )
    if pool > MAX_CANDIDATES:
        raise InvalidArgumentError(
            f"store {name!r}: {what} {pool} is more than {MAX_CANDIDATES}; ask for fewer"
        )
    return pool


def _checked_examples(name: str, recommend: RecommendOptions) -> RecommendOptions:
    where = f"store {name!r}: example"
    positives = list(dict.fromkeys(validation.entry_id(i, where) for i in recommend.positive_ids))
    negatives = list(dict.fromkeys(validation.entry_id(i, where) for i in recommend.negative_ids))
    both = sorted(set(positives) & set(negatives))
    if both:
        raise InvalidArgumentError(
            f"store {name!r}: {', '.join(map(repr, both[:5]))} cannot be both a positive and a "
            "negative example; name each example once"
        )
    if len(positives) + len(negatives) > MAX_EXAMPLES:
        raise InvalidArgumentError(
            f"store {name!r}: {len(positives) + len(negatives)} examples are more than "
            f"{MAX_EXAMPLES}; give fewer positive and negative ids"
        )
    try:
        strategy = RecommendStrategy(recommend.strategy)
    except ValueError:
        raise InvalidArgumentError(
            f"store {name!r}: unknown recommend strategy {recommend.strategy!r}; use "
            "average_vector or best_score"
        ) from None
    if not positives and not negatives:
        raise InvalidArgumentError(
            f"store {name!r}: recommend needs at least one positive or negative example id"
        )
    return RecommendOptions(tuple(positives), tuple(negatives), strategy, recommend.candidates)


def _example_vectors(
    engine: Engine, name: str, examples: RecommendOptions, store_id: int, dimension: int
) -> tuple[np.ndarray, np.ndarray]:
    """The positive and negative examples' stored vectors as float64 rows."""
    wanted = [*examples.positive_ids, *examples.negative_ids]
    found, missing = engine.get_keys(
        name,
        wanted,
        include_vectors=True,
        metadata=MetadataSelection(include=False),
        expected_store_id=store_id,
    )
    if missing:
        shown = ", ".join(repr(i) for i in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise NotFoundError(
            f"store {name!r} has no entries {shown}{more} given as examples; give ids of "
            "stored entries"
        )
    by_id = {entry.id: entry.vector for entry in found}

    def rows(ids: Sequence[str]) -> np.ndarray:
        if not ids:
            return np.empty((0, dimension), dtype=np.float64)
        return np.vstack([np.asarray(by_id[i], dtype=np.float64) for i in ids])

    return rows(examples.positive_ids), rows(examples.negative_ids)


def average_vector(
    name: str, metric: Metric, positives: np.ndarray, negatives: np.ndarray
) -> np.ndarray:
    """2 x mean(positives) - mean(negatives), or mean(positives) without negatives (rows unit
    length first under cosine). Needs at least one positive row."""
    if metric == Metric.COSINE:
        positives = _unit_rows(positives)
        negatives = _unit_rows(negatives)
    if not len(positives):
        # Negatives with a query are handled by the caller adding the query as a positive.
        raise InvalidArgumentError(
            f"store {name!r}: give a query vector or positive example ids (or both)"
        )
    mean_positive = positives.mean(axis=0)
    target = mean_positive if not len(negatives) else 2 * mean_positive - negatives.mean(axis=0)
    if not np.isfinite(target).all() or (metric == Metric.COSINE and not np.any(target)):
        raise InvalidArgumentError(
            f"store {name!r}: the examples cancel out (their average vector is zero or not "
            "finite); give other examples, or a query"
        )
    result: np.ndarray = target
    return result


def _unit_rows(rows: np.ndarray) -> np.ndarray:
    norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))
    unit: np.ndarray = rows / norms[:, None]
    return unit


def similarities(metric: Metric, rows: np.ndarray, target: np.ndarray) -> np.ndarray:
    """float64 similarity of each row to `target` in nachbar's direction (higher is more
    similar): cosine similarity, -squared Euclidean distance or dot product."""
    rows = np.asarray(rows, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if metric == Metric.L2:
        diff = rows - target
        out: np.ndarray = -np.einsum("ij,ij->i", diff, diff)
        return out
    dots: np.ndarray = np.einsum("ij,j->i", rows, target)
    if metric == Metric.COSINE:
        norms = np.sqrt(np.einsum("ij,ij->i", rows, rows)) * math.sqrt(float(target @ target))
        dots = dots / norms
    return dots


def _best_score(
    search: _Search,
    metric: Metric,
    positives: np.ndarray,
    negatives: np.ndarray,
    per_example: int,
    excluded: set[str],
) -> tuple[list[Match], str]:
    """The candidates near any positive, ordered by best_score (module docstring); each
    match's score is its similarity to the most similar positive."""
    pool: dict[str, Match] = {}
    plans: set[str] = set()
    for positive in positives:
        found = search(positive.astype(np.float32), per_example, True)
        plans.add(found.plan)
        for match in found.matches:
            if match.id not in excluded:
                pool.setdefault(match.id, match)
    if not pool:
        return [], "exact" if not plans or plans == {"exact"} else "hnsw"
    matches = list(pool.values())
    vectors = np.vstack([np.asarray(m.vector, dtype=np.float64) for m in matches])
    best_positive = np.max(
        np.column_stack([similarities(metric, vectors, p) for p in positives]), axis=1
    )
    best_negative = np.full(len(matches), -np.inf)
    if len(negatives):
        best_negative = np.max(
            np.column_stack([similarities(metric, vectors, n) for n in negatives]), axis=1
        )
    wins = best_positive > best_negative

    def key(i: int) -> tuple[int, float, str]:
        if wins[i]:
            return (0, -float(best_positive[i]), matches[i].id)
        return (1, float(best_negative[i]), matches[i].id)

    order = sorted(range(len(matches)), key=key)
    ranked = [_rescored(matches[i], float(best_positive[i])) for i in order]
    return ranked, "hnsw" if "hnsw" in plans else "exact"


def _mmr_order(matches: list[Match], metric: Metric, lambda_: float, k: int) -> list[Match]:
    """Up to k of `matches` (best first, with vectors) in MMR order (module docstring); ties
    go to the earlier, more relevant candidate."""
    if not matches:
        return []
    relevance = np.array([m.score for m in matches], dtype=np.float64)
    vectors = np.vstack([np.asarray(m.vector, dtype=np.float64) for m in matches])
    available = np.ones(len(matches), dtype=bool)
    closest = np.zeros(len(matches), dtype=np.float64)  # max sim to the picked ones
    picked: list[int] = []
    for _ in range(min(k, len(matches))):
        objective = relevance if not picked else lambda_ * relevance - (1 - lambda_) * closest
        objective = np.where(available, objective, -np.inf)
        choice = int(np.argmax(objective))
        picked.append(choice)
        available[choice] = False
        sims = similarities(metric, vectors, vectors[choice])
        closest = sims if len(picked) == 1 else np.maximum(closest, sims)
    return [matches[i] for i in picked]


def _rescored(match: Match, score: float) -> Match:
    return Match(
        id=match.id,
        score=score,
        metadata=match.metadata,
        vector=match.vector,
        omitted_keys=match.omitted_keys,
        stored_bytes=match.stored_bytes,
    )


def _without_vector(match: Match) -> Match:
    if match.vector is None:
        return match
    return Match(
        id=match.id,
        score=match.score,
        metadata=match.metadata,
        vector=None,
        omitted_keys=match.omitted_keys,
        stored_bytes=match.stored_bytes,
    )
