"""Learned re-scorers: a small MLP over (query vector, document vector) pairs.

A re-scorer reads only vectors: the query's (from the store's query model) and each candidate's
stored one, so it reranks any modality, text queries over an image store included, without
embedding anything again. Features per pair: [q, d, q * d, q . d] (unit vectors for cosine
stores), then Linear-ReLU layers down to one score (32 -> 1 by default), added to
the frozen similarity: score = SIMILARITY_SCALE * q . d + MLP(features). The last layer starts
at zero, so an untrained re-scorer ranks exactly as the frozen vectors do and training learns
corrections to it.

Trained with numpy (manual backprop, Adam) on listwise softmax cross-entropy: each training
query's relevant entry against hard negatives from its frozen top candidates, other training
queries' relevant entries and random store vectors. Kept only when it beats the frozen order
on held-out queries by more than the noise. Served as an ONNX graph written with the
project's own GraphBuilder and run by onnxruntime, as every other model.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort

from nachbar.ai.adapters import (
    METRIC_CUTOFF,
    Examples,
    Progress,
    RankingMetrics,
    TrainingCancelledError,
    normalize,
    split,
)
from nachbar.ai.build.onnx_graph import FLOAT, GraphBuilder
from nachbar.ai.onnx_model import available_cpus

FloatArray = npt.NDArray[np.float32]

INPUT_QUERY = "query"
INPUT_DOCUMENTS = "documents"
OUTPUT_SCORE = "score"
#: The frozen similarity's weight in the score: 1 / the usual contrastive temperature, so that
#: cosines span the range of logits the MLP learns to add to.
SIMILARITY_SCALE = 20.0


@dataclass(frozen=True)
class RescorerSettings:
    # Small and strongly decayed: with hundreds to a few thousand training queries the article's
    # 256 -> 128 -> 64 fit the training queries and lost to the frozen order on unseen ones
    # (bench/RESULTS.md, tailoring sections).
    hidden: tuple[int, ...] = (32,)
    epochs: int = 30
    batch_size: int = 32
    # Higher than the adapter's: the last layer starts at zero and has far to go.
    learning_rate: float = 3e-3
    # Frozen top candidates per training query, where hard negatives come from; also how many
    # candidates the held-out evaluation reranks.
    candidates: int = 50
    negatives: int = 15
    # Of the negatives, how many are relevant entries of other training queries: without them
    # the MLP can learn "was a training target" from the document vector alone, which ranks
    # the training targets above an unseen query's own.
    target_negatives: int = 4
    weight_decay: float = 1e-2
    held_out: float = 0.2
    patience: int = 8
    seed: int = 0


@dataclass(frozen=True)
class Mlp:
    """Layer i maps x to x @ weights[i] + biases[i]; ReLU between layers."""

    weights: tuple[FloatArray, ...]
    biases: tuple[FloatArray, ...]

    @property
    def dimension(self) -> int:
        return (int(self.weights[0].shape[0]) - 1) // 3

    def arrays(self) -> list[FloatArray]:
        return [a for pair in zip(self.weights, self.biases, strict=True) for a in pair]

    @staticmethod
    def from_arrays(arrays: Sequence[FloatArray]) -> Mlp:
        return Mlp(tuple(arrays[0::2]), tuple(arrays[1::2]))


@dataclass(frozen=True)
class RescorerFit:
    mlp: Mlp
    before: RankingMetrics
    after: RankingMetrics
    epochs: int
    improved: bool


def features(queries: FloatArray, documents: FloatArray) -> FloatArray:
    """One row per (query row, document row) pair: [q, d, q * d, q . d]."""
    product = queries * documents
    out: FloatArray = np.concatenate(
        [queries, documents, product, product.sum(axis=1, keepdims=True)], axis=1
    ).astype(np.float32)
    return out


def forward(mlp: Mlp, x: FloatArray) -> FloatArray:
    """Scores of feature rows: the scaled frozen similarity (the last feature) plus the MLP."""
    similarity = x[:, -1]
    for i, (weight, bias) in enumerate(zip(mlp.weights, mlp.biases, strict=True)):
        x = x @ weight + bias
        if i < len(mlp.weights) - 1:
            x = np.maximum(x, 0.0)
    # float32 features and weights give float32; the gradient test runs float64 weights.
    out: FloatArray = SIMILARITY_SCALE * similarity + x[:, 0]
    return out


def score(mlp: Mlp, query: FloatArray, documents: FloatArray) -> FloatArray:
    """Numpy scores of documents (rows) for one query vector, both as stored (not normalized)."""
    q = np.broadcast_to(query, documents.shape)
    return forward(mlp, features(q, documents))


def initial(dimension: int, hidden: Sequence[int], seed: int, *, zero_last: bool = True) -> Mlp:
    """He-initialized layers; with `zero_last` the MLP adds nothing yet (the frozen order)."""
    rng = np.random.default_rng(seed)
    sizes = [3 * dimension + 1, *hidden, 1]
    weights = tuple(
        (
            rng.normal(size=(a, b)) * np.sqrt(2.0 / a) * (0.0 if zero_last and b == 1 else 1.0)
        ).astype(np.float32)
        for a, b in itertools.pairwise(sizes)
    )
    biases = tuple(np.zeros(b, dtype=np.float32) for b in sizes[1:])
    return Mlp(weights, biases)


def fit_rescorer(
    examples: Examples,
    settings: RescorerSettings = RescorerSettings(),
    *,
    renormalize: bool = True,
    progress: Progress | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> RescorerFit:
    """Train on the examples' training part; keep the epoch with the best held-out MRR of the
    reranked frozen top `candidates` (epoch 0 is the untrained re-scorer, which keeps the
    frozen order), and compare it with the frozen order of those. Unless it beats the frozen
    order by more than one standard error (per held-out query, paired), the untrained
    re-scorer is kept and not marked improved."""
    queries = normalize(examples.queries) if renormalize else examples.queries
    corpus = examples.corpus
    rng = np.random.default_rng(settings.seed)
    parts = split(len(queries), settings.held_out, settings.seed)
    top = _frozen_top(queries, corpus, settings.candidates)
    irrelevant = examples.irrelevant or [()] * len(queries)
    targets = np.array(sorted({j for i in parts.train for j in examples.relevant[i]}), np.int64)

    def evaluate(mlp: Mlp | None) -> RankingMetrics:
        return rerank_metrics(mlp, queries, corpus, top, examples.relevant, parts.held_out)

    before = evaluate(None)
    mlp = initial(corpus.shape[1], settings.hidden, settings.seed)
    # Copies: Adam updates them in place, and `mlp` stays the untrained epoch 0.
    params = [p.copy() for p in mlp.arrays()]
    first = [np.zeros_like(p) for p in params]
    second = [np.zeros_like(p) for p in params]
    best: tuple[RankingMetrics, Mlp, int] = (before, mlp, 0)
    step = 0
    epochs_run = 0
    for epoch in range(1, settings.epochs + 1):
        epochs_run = epoch
        order = rng.permutation(parts.train)
        for start in range(0, len(order), settings.batch_size):
            if cancelled():
                raise TrainingCancelledError("training cancelled")
            batch = order[start : start + settings.batch_size].tolist()
            lists = [
                _training_list(
                    i,
                    examples.relevant[i],
                    irrelevant[i],
                    top[i],
                    targets,
                    len(corpus),
                    rng,
                    settings,
                )
                for i in batch
            ]
            grads = _list_gradient(Mlp.from_arrays(params), queries, corpus, batch, lists)
            step += 1
            for p, g, m, v in zip(params, grads, first, second, strict=True):
                g += settings.weight_decay * p
                m *= 0.9
                m += 0.1 * g
                v *= 0.999
                v += 0.001 * g * g
                p -= (
                    settings.learning_rate
                    * (m / (1 - 0.9**step))
                    / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
                ).astype(np.float32)
        current = Mlp.from_arrays([p.copy() for p in params])
        metrics = evaluate(current)
        if metrics.mrr > best[0].mrr:
            best = (metrics, current, epoch)
        if progress is not None:
            progress(
                epoch / settings.epochs,
                f"epoch {epoch}/{settings.epochs}: held-out MRR@{METRIC_CUTOFF} "
                f"{metrics.mrr:.4f} (frozen {before.mrr:.4f})",
            )
        if epoch - best[2] >= settings.patience:
            break
    after, kept, _ = best
    if not _clear_gain(mlp, kept, queries, corpus, top, examples.relevant, parts.held_out):
        # A gain within the noise of the held-out queries is no reason to leave the frozen
        # order: keep the untrained re-scorer, which ranks exactly as the frozen vectors.
        return RescorerFit(mlp, before, before, epochs_run, False)
    return RescorerFit(kept, before, after, epochs_run, True)


def _clear_gain(
    untrained: Mlp,
    trained: Mlp,
    queries: FloatArray,
    corpus: FloatArray,
    top: list[list[int]],
    relevant: Sequence[Sequence[int]],
    which: Sequence[int],
) -> bool:
    """Whether `trained` beats the frozen order on the held-out queries by more than one
    standard error of the per-query differences in reciprocal rank (paired)."""
    if trained is untrained or len(which) < 2:
        return False
    gains = np.array(
        [
            _reciprocal_rank(trained, queries[i], corpus, top[i], relevant[i])
            - _reciprocal_rank(None, queries[i], corpus, top[i], relevant[i])
            for i in which
        ]
    )
    return bool(gains.mean() > gains.std(ddof=1) / np.sqrt(len(gains)))


def _reciprocal_rank(
    mlp: Mlp | None,
    query: FloatArray,
    corpus: FloatArray,
    top: list[int],
    relevant: Sequence[int],
) -> float:
    ranked = top
    if mlp is not None:
        scores = score(mlp, query, corpus[ranked])
        ranked = [ranked[j] for j in np.argsort(-scores, kind="stable")]
    wanted = set(relevant)
    for rank, index in enumerate(ranked[:METRIC_CUTOFF]):
        if index in wanted:
            return 1.0 / (rank + 1)
    return 0.0


def rerank_metrics(
    mlp: Mlp | None,
    queries: FloatArray,
    corpus: FloatArray,
    top: list[list[int]],
    relevant: Sequence[Sequence[int]],
    which: Sequence[int],
) -> RankingMetrics:
    """MRR and recall at METRIC_CUTOFF of the frozen top candidates, reranked by `mlp` (None:
    in their frozen order)."""
    reciprocal = recall = 0.0
    for i in which:
        ranked = top[i]
        if mlp is not None:
            scores = score(mlp, queries[i], corpus[ranked])
            ranked = [ranked[j] for j in np.argsort(-scores, kind="stable")]
        wanted = set(relevant[i])
        ranks = [r for r, index in enumerate(ranked[:METRIC_CUTOFF]) if index in wanted]
        if ranks:
            reciprocal += 1.0 / (ranks[0] + 1)
        recall += len(ranks) / len(wanted)
    count = max(1, len(which))
    return RankingMetrics(reciprocal / count, recall / count, len(which))


def _frozen_top(queries: FloatArray, corpus: FloatArray, count: int) -> list[list[int]]:
    count = min(count, len(corpus))
    out: list[list[int]] = []
    for start in range(0, len(queries), 256):
        scores = queries[start : start + 256] @ corpus.T
        part = np.argpartition(-scores, count - 1, axis=1)[:, :count]
        rows = np.arange(len(part))[:, None]
        out.extend(part[rows, np.argsort(-scores[rows, part], axis=1, kind="stable")].tolist())
    return out


def _training_list(
    query: int,
    relevant: Sequence[int],
    irrelevant: Sequence[int],
    top: list[int],
    targets: npt.NDArray[np.int64],
    corpus_size: int,
    rng: np.random.Generator,
    settings: RescorerSettings,
) -> list[int]:
    """[a relevant entry, then negatives]: hard ones from the frozen top, other training
    queries' relevant entries, then random ones."""
    wanted = set(relevant)
    hard = [j for j in [*irrelevant, *top] if j not in wanted]
    picked = [hard[j] for j in rng.permutation(len(hard))[: settings.negatives // 2 + 1]]
    picked += list(irrelevant)[: settings.negatives // 4]
    others = (
        [
            int(j)
            for j in rng.choice(
                targets, min(len(targets), 2 * settings.target_negatives), replace=False
            )
            if int(j) not in wanted
        ]
        if len(targets)
        else []
    )
    picked += others[: settings.target_negatives]
    while len(picked) < settings.negatives:
        j = int(rng.integers(corpus_size))
        if j not in wanted:
            picked.append(j)
    return [int(rng.choice(list(relevant))), *picked[: settings.negatives]]


def _list_gradient(
    mlp: Mlp, queries: FloatArray, corpus: FloatArray, batch: list[int], lists: list[list[int]]
) -> list[FloatArray]:
    """Gradients of softmax cross-entropy with the first of each list as the target."""
    size = len(lists[0])
    q = np.repeat(queries[batch], size, axis=0)
    d = corpus[[j for row in lists for j in row]]
    activations = [features(q, d)]
    for i, (weight, bias) in enumerate(zip(mlp.weights, mlp.biases, strict=True)):
        x = activations[-1] @ weight + bias
        activations.append(np.maximum(x, 0.0) if i < len(mlp.weights) - 1 else x)
    scores = activations[-1][:, 0] + SIMILARITY_SCALE * activations[0][:, -1]
    logits = scores.reshape(len(lists), size)
    logits = logits - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    probabilities[:, 0] -= 1.0
    upstream = (probabilities / len(lists)).reshape(-1, 1).astype(np.float32)
    grads: list[FloatArray] = []
    for i in range(len(mlp.weights) - 1, -1, -1):
        inputs = activations[i]
        grads.append(upstream.sum(axis=0).astype(np.float32))
        grads.append((inputs.T @ upstream).astype(np.float32))
        if i > 0:
            upstream = (upstream @ mlp.weights[i].T) * (activations[i] > 0)
    grads.reverse()
    return grads


def to_onnx(mlp: Mlp, name: str = "rescorer") -> onnx.ModelProto:
    """The MLP as an ONNX graph: query [N, d] and documents [N, d] (one query row per
    document) to score [N]."""
    dim = mlp.dimension
    graph = GraphBuilder(name)
    q = graph.input(INPUT_QUERY, FLOAT, ["pairs", dim])
    d = graph.input(INPUT_DOCUMENTS, FLOAT, ["pairs", dim])
    product = graph.add("Mul", [q, d])
    dot = graph.add("ReduceSum", [product, graph.ints([1])], keepdims=1)
    x = graph.add("Concat", [q, d, product, dot], axis=1)
    for i, (weight, bias) in enumerate(zip(mlp.weights, mlp.biases, strict=True)):
        x = graph.linear(x, weight.T, bias, f"layer{i}")
        if i < len(mlp.weights) - 1:
            x = graph.add("Relu", [x])
    x = graph.add("Add", [x, graph.add("Mul", [dot, graph.scalar(SIMILARITY_SCALE)])])
    graph.output(graph.add("Squeeze", [x, graph.ints([1])]), OUTPUT_SCORE, FLOAT, ["pairs"])
    return graph.model("nachbar re-scorer: [q, d, q*d, q.d] -> MLP -> score")


class OnnxRescorer:
    """An onnxruntime session of a re-scorer; thread-safe."""

    def __init__(self, mlp: Mlp, *, threads: int = 0) -> None:
        self.dimension = mlp.dimension
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or min(2, available_cpus())
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session: Any = ort.InferenceSession(
            to_onnx(mlp).SerializeToString(),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )

    def score(self, query: FloatArray, documents: FloatArray) -> FloatArray:
        feeds = {
            INPUT_QUERY: np.ascontiguousarray(np.broadcast_to(query, documents.shape), np.float32),
            INPUT_DOCUMENTS: np.ascontiguousarray(documents, np.float32),
        }
        out: FloatArray = self._session.run([OUTPUT_SCORE], feeds)[0]
        return out
