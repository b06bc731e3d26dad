"""Query adapters: a learned linear map W applied to query vectors before a frozen index.

The stored (document) vectors never change; only the query side moves, so an adapter is cheap
to train (no re-embedding) and to serve (one d x d product per query). Training is in-batch
contrastive (InfoNCE): each training query should score its relevant entry above the other
queries' relevant entries and a sample of the store's vectors, with W pulled toward the
identity so that few examples cannot wander far from the frozen model. Numpy only, and
deterministic for a seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

#: Cut-off of the ranking metrics reported before and after training.
METRIC_CUTOFF = 10


class TrainingCancelledError(Exception):
    """The training was cancelled (its adapter or store was dropped)."""


@dataclass(frozen=True)
class RankingMetrics:
    """Over held-out queries: mean reciprocal rank of the first relevant entry within the top
    METRIC_CUTOFF (0 when none is there), and the share of relevant entries found there."""

    mrr: float
    recall: float
    queries: int


@dataclass(frozen=True)
class AdapterSettings:
    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 1e-3
    # Weight of ||W - I||^2: larger keeps W nearer the frozen query tower.
    identity_weight: float = 1e-2
    temperature: float = 0.05
    # Store vectors sampled as extra negatives for each batch.
    sampled_negatives: int = 512
    # Share of the examples held out to decide early stopping and report the metrics.
    held_out: float = 0.2
    # Epochs without a held-out gain before training stops.
    patience: int = 5
    seed: int = 0


@dataclass(frozen=True)
class Examples:
    """Training queries as vectors of the store's query model and, per query, the indexes of
    its relevant (and irrelevant) entries in `corpus`, the store's vectors (one per row)."""

    queries: FloatArray
    relevant: Sequence[Sequence[int]]
    corpus: FloatArray
    irrelevant: Sequence[Sequence[int]] = field(default_factory=tuple)


@dataclass(frozen=True)
class Split:
    train: list[int]
    held_out: list[int]


@dataclass(frozen=True)
class AdapterFit:
    weight: FloatArray
    before: RankingMetrics
    after: RankingMetrics
    epochs: int
    # The held-out metric improved on the frozen baseline: safe to recommend.
    improved: bool


Progress = Callable[[float, str], None]


def normalize(vectors: FloatArray) -> FloatArray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    out: FloatArray = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return out


def adapt(weight: FloatArray, queries: FloatArray, *, renormalize: bool) -> FloatArray:
    """W q for each query (a row); unit length again for cosine stores."""
    adapted: FloatArray = (queries @ weight.T).astype(np.float32)
    return normalize(adapted) if renormalize else adapted


def split(count: int, share: float, seed: int) -> Split:
    """A seeded shuffle: at least one held-out and one training example."""
    order = np.random.default_rng(seed).permutation(count).tolist()
    held = min(count - 1, max(1, round(count * share)))
    return Split(sorted(order[held:]), sorted(order[:held]))


def ranking_metrics(
    queries: FloatArray,
    relevant: Sequence[Sequence[int]],
    corpus: FloatArray,
    *,
    cutoff: int = METRIC_CUTOFF,
    chunk: int = 256,
) -> RankingMetrics:
    """MRR@cutoff and recall@cutoff of an exact search of `corpus` by inner product."""
    if len(queries) == 0:
        return RankingMetrics(0.0, 0.0, 0)
    reciprocal = 0.0
    recall = 0.0
    top_n = min(cutoff, len(corpus))
    for start in range(0, len(queries), chunk):
        scores = queries[start : start + chunk] @ corpus.T
        top = np.argpartition(-scores, top_n - 1, axis=1)[:, :top_n]
        rows = np.arange(len(top))[:, None]
        top = top[rows, np.argsort(-scores[rows, top], axis=1, kind="stable")]
        for row, ranked in enumerate(top.tolist()):
            wanted = set(relevant[start + row])
            ranks = [rank for rank, index in enumerate(ranked) if index in wanted]
            if ranks:
                reciprocal += 1.0 / (ranks[0] + 1)
            recall += len(ranks) / len(wanted)
    return RankingMetrics(reciprocal / len(queries), recall / len(queries), len(queries))


def fit_adapter(
    examples: Examples,
    settings: AdapterSettings = AdapterSettings(),
    *,
    renormalize: bool = True,
    progress: Progress | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> AdapterFit:
    """Fit W (d x d) from the identity with Adam; keep the epoch with the best held-out MRR.

    The identity (the frozen model) is epoch 0, so the result is never worse on the held-out
    queries than not adapting; `improved` says whether it is better."""
    queries = normalize(examples.queries) if renormalize else examples.queries
    corpus = examples.corpus
    dim = corpus.shape[1]
    rng = np.random.default_rng(settings.seed)
    parts = split(len(queries), settings.held_out, settings.seed)
    held_queries = queries[parts.held_out]
    held_relevant = [examples.relevant[i] for i in parts.held_out]
    irrelevant = examples.irrelevant or [()] * len(queries)

    def score(weight: FloatArray) -> RankingMetrics:
        return ranking_metrics(
            adapt(weight, held_queries, renormalize=renormalize), held_relevant, corpus
        )

    weight: FloatArray = np.eye(dim, dtype=np.float32)
    before = score(weight)
    best, best_weight, best_epoch = before, weight.copy(), 0
    first: FloatArray = np.zeros_like(weight)
    second: FloatArray = np.zeros_like(weight)
    step = 0
    identity = np.eye(dim, dtype=np.float32)
    epochs_run = 0
    for epoch in range(1, settings.epochs + 1):
        epochs_run = epoch
        order = rng.permutation(parts.train)
        for start in range(0, len(order), settings.batch_size):
            if cancelled():
                raise TrainingCancelledError("training cancelled")
            batch = order[start : start + settings.batch_size].tolist()
            gradient = _batch_gradient(
                weight, queries, examples, irrelevant, batch, rng, settings, renormalize
            )
            gradient += 2.0 * settings.identity_weight * (weight - identity)
            step += 1
            first = 0.9 * first + 0.1 * gradient
            second = 0.999 * second + 0.001 * gradient * gradient
            corrected = first / (1 - 0.9**step)
            scale = np.sqrt(second / (1 - 0.999**step)) + 1e-8
            weight = (weight - settings.learning_rate * corrected / scale).astype(np.float32)
        metrics = score(weight)
        if metrics.mrr > best.mrr:
            best, best_weight, best_epoch = metrics, weight.copy(), epoch
        if progress is not None:
            progress(
                epoch / settings.epochs,
                f"epoch {epoch}/{settings.epochs}: held-out MRR@{METRIC_CUTOFF} "
                f"{metrics.mrr:.4f} (frozen {before.mrr:.4f})",
            )
        if epoch - best_epoch >= settings.patience:
            break
    return AdapterFit(best_weight, before, best, epochs_run, best.mrr > before.mrr)


def _batch_gradient(
    weight: FloatArray,
    queries: FloatArray,
    examples: Examples,
    irrelevant: Sequence[Sequence[int]],
    batch: list[int],
    rng: np.random.Generator,
    settings: AdapterSettings,
    renormalize: bool,
) -> FloatArray:
    """d loss / d W of InfoNCE over the batch's targets, hard negatives and sampled entries."""
    corpus = examples.corpus
    targets = [int(rng.choice(examples.relevant[i])) for i in batch]
    sampled = rng.choice(len(corpus), min(settings.sampled_negatives, len(corpus)), replace=False)
    extra = [j for i in batch for j in irrelevant[i]]
    candidates = list(dict.fromkeys([*targets, *extra, *sampled.tolist()]))
    position = {index: p for p, index in enumerate(candidates)}
    matrix = corpus[candidates]
    q = queries[batch]
    raw = q @ weight.T
    norms = np.linalg.norm(raw, axis=1, keepdims=True) if renormalize else np.ones((len(batch), 1))
    norms = np.maximum(norms, 1e-12)
    z = raw / norms
    logits = z @ matrix.T / settings.temperature
    # Other relevant entries of a query are not its negatives.
    for row, i in enumerate(batch):
        for index in examples.relevant[i]:
            p = position.get(index)
            if p is not None and index != targets[row]:
                logits[row, p] = -np.inf
    logits -= logits.max(axis=1, keepdims=True)
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    for row, target in enumerate(targets):
        probabilities[row, position[target]] -= 1.0
    d_logits = probabilities / len(batch)
    d_z = d_logits @ matrix / settings.temperature
    # Through the renormalization: the gradient's component along z does not move z.
    d_raw = (d_z - z * np.sum(d_z * z, axis=1, keepdims=True)) / norms if renormalize else d_z
    gradient: FloatArray = (d_raw.T @ q).astype(np.float32)
    return gradient
