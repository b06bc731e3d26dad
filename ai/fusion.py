"""Fusing two scorings of one candidate list (vector similarity and a reranker's score).

A reranker's order alone throws away what the first stage knew; on sets where the reranker is
weak (or was trained for another task) fusing keeps the first stage's answer from being lost.
Two common ways, both over the same candidates:

* reciprocal rank fusion (Cormack, Clarke and Büttcher, 2009): each candidate scores
  sum over scorings of weight / (k + rank), rank 1 being the best. Only the orders count, so
  scores on different scales mix safely; k = 60 is the paper's constant.
* a weighted blend of min-max normalized scores: each scoring is mapped to [0, 1] over the
  candidates, then mixed by weight. It keeps how far apart candidates are, which RRF drops.

Both return one fused score per candidate (higher is better), in the candidates' order.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
#: One score per candidate.
Scores = Sequence[float] | npt.NDArray[np.floating[Any]]

#: The constant of Cormack et al.; it damps the weight of the very first ranks.
RRF_K = 60.0


class Fusion(StrEnum):
    """How a rerank orders its candidates: by the reranker alone, or fused with the vector
    similarities (equal weights)."""

    NONE = "none"
    RRF = "rrf"
    BLEND = "blend"


def fuse(fusion: Fusion, similarities: Scores, rerank_scores: Scores) -> FloatArray | None:
    """The fused score of each candidate, or None for Fusion.NONE."""
    if fusion is Fusion.RRF:
        return reciprocal_rank_fusion([similarities, rerank_scores])
    if fusion is Fusion.BLEND:
        return weighted_blend([similarities, rerank_scores])
    return None


def _checked(scorings: Sequence[Scores], weights: Sequence[float] | None) -> FloatArray:
    if not scorings:
        raise ValueError("fusion needs at least one scoring")
    rows = np.asarray([np.asarray(s, dtype=np.float64) for s in scorings])
    if rows.ndim != 2 or rows.shape[1] == 0:
        raise ValueError("every scoring must score the same, non-empty list of candidates")
    if not np.all(np.isfinite(rows)):
        raise ValueError("scores must be finite")
    if weights is not None and (
        len(weights) != len(scorings) or any(not np.isfinite(w) or w < 0 for w in weights)
    ):
        raise ValueError("give one finite, non-negative weight per scoring")
    return rows


def ranks(scores: Scores) -> npt.NDArray[np.int64]:
    """1-based rank of each candidate, best (highest score) first; ties keep list order."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    result = np.empty(len(order), dtype=np.int64)
    result[order] = np.arange(1, len(order) + 1)
    return result


def reciprocal_rank_fusion(
    scorings: Sequence[Scores],
    *,
    weights: Sequence[float] | None = None,
    k: float = RRF_K,
) -> FloatArray:
    """sum_i weight_i / (k + rank_i) per candidate; weights default to 1."""
    rows = _checked(scorings, weights)
    if k < 0:
        raise ValueError("k must be >= 0")
    factors = np.ones(len(rows)) if weights is None else np.asarray(weights, dtype=np.float64)
    fused: FloatArray = sum(
        (w / (k + ranks(row)) for w, row in zip(factors, rows, strict=True)),
        start=np.zeros(rows.shape[1]),
    )
    return fused


def min_max(scores: Scores) -> FloatArray:
    """Scores mapped to [0, 1]; all equal scores map to 0.5 (they say nothing)."""
    values = np.asarray(scores, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    if high == low:
        return np.full(values.shape, 0.5)
    normalized: FloatArray = (values - low) / (high - low)
    return normalized


def weighted_blend(
    scorings: Sequence[Scores], weights: Sequence[float] | None = None
) -> FloatArray:
    """sum_i weight_i * min_max(scores_i) per candidate; weights default to equal."""
    rows = _checked(scorings, weights)
    factors = np.ones(len(rows)) if weights is None else np.asarray(weights, dtype=np.float64)
    blended: FloatArray = sum(
        (w * min_max(row) for w, row in zip(factors, rows, strict=True)),
        start=np.zeros(rows.shape[1]),
    )
    return blended
