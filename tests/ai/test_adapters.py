"""Query adapters and re-scorers as numpy code: training, metrics, storage layout, ONNX export."""

from __future__ import annotations

import numpy as np
import pytest

from nachbar.ai import adapters, rescorers
from nachbar.ai.adapters import AdapterSettings, Examples, TrainingCancelledError
from nachbar.ai.rescorers import RescorerSettings
from nachbar.ai.tailoring import (
    Kind,
    State,
    TrainedInfo,
    info_from_metadata,
    info_metadata,
    pack,
    unpack,
)


def distorted_task(
    seed: int = 1, dim: int = 32, docs: int = 1500, queries: int = 300
) -> tuple[Examples, np.ndarray]:
    """Queries are a fixed linear distortion of their document plus noise, so the best map is
    (close to) the distortion's inverse, which the frozen identity is far from."""
    rng = np.random.default_rng(seed)
    corpus = adapters.normalize(rng.normal(size=(docs, dim)).astype(np.float32))
    distortion = 0.5 * np.eye(dim) + rng.normal(size=(dim, dim)) / np.sqrt(dim)
    relevant = rng.choice(docs, queries, replace=False)
    noise = 0.3 * rng.normal(size=(queries, dim)) / np.sqrt(dim)
    q = adapters.normalize((corpus[relevant] @ distortion.T + noise).astype(np.float32))
    return Examples(q, [[int(r)] for r in relevant], corpus), distortion


def test_metrics_by_hand() -> None:
    corpus = np.eye(4, dtype=np.float32)
    queries = np.asarray([[1, 0.5, 0, 0], [0.2, 1, 0.3, 0]], dtype=np.float32)
    # query 0: entry 0 first -> RR 1; query 1: entry 2 is second -> RR 1/2, entry 3 missed
    metrics = adapters.ranking_metrics(queries, [[0], [2, 3]], corpus, cutoff=2)
    assert metrics.mrr == pytest.approx((1 + 0.5) / 2)
    assert metrics.recall == pytest.approx((1 + 0.5) / 2)
    assert metrics.queries == 2


def test_identity_adapter_is_the_frozen_baseline_exactly() -> None:
    examples, _ = distorted_task()
    identity = np.eye(32, dtype=np.float32)
    adapted = adapters.adapt(identity, examples.queries, renormalize=True)
    np.testing.assert_array_equal(adapted, adapters.normalize(examples.queries))
    fit = adapters.fit_adapter(examples, AdapterSettings(epochs=1, learning_rate=1e-9))
    held = adapters.split(len(examples.queries), 0.2, 0).held_out
    frozen = adapters.ranking_metrics(
        examples.queries[held], [examples.relevant[i] for i in held], examples.corpus
    )
    assert fit.before == frozen


def test_adapter_learns_the_distortion_and_beats_the_frozen_baseline() -> None:
    examples, _ = distorted_task()
    progress: list[float] = []
    fit = adapters.fit_adapter(examples, progress=lambda share, _: progress.append(share))
    print(f"held-out MRR@10 {fit.before.mrr:.3f} -> {fit.after.mrr:.3f}")
    assert fit.improved
    assert fit.before.mrr < 0.5
    assert fit.after.mrr > fit.before.mrr + 0.3
    assert progress and progress == sorted(progress)
    # Deterministic for a seed.
    again = adapters.fit_adapter(examples)
    np.testing.assert_array_equal(again.weight, fit.weight)


def test_adapter_that_cannot_improve_is_not_improved() -> None:
    # Every query is its document: the frozen search is perfect already.
    rng = np.random.default_rng(3)
    corpus = adapters.normalize(rng.normal(size=(300, 16)).astype(np.float32))
    examples = Examples(corpus[:60].copy(), [[i] for i in range(60)], corpus)
    fit = adapters.fit_adapter(examples, AdapterSettings(epochs=3))
    assert fit.before.mrr == 1.0
    assert not fit.improved
    assert fit.after.mrr <= fit.before.mrr


def test_training_can_be_cancelled() -> None:
    examples, _ = distorted_task()
    with pytest.raises(TrainingCancelledError):
        adapters.fit_adapter(examples, cancelled=lambda: True)


def test_rescorer_reranks_better_and_onnx_equals_numpy() -> None:
    examples, _ = distorted_task(queries=200)
    # The synthetic distortion needs a larger correction than real data: a faster rate.
    fit = rescorers.fit_rescorer(examples, RescorerSettings(epochs=12, learning_rate=1e-2))
    print(f"held-out reranked MRR@10 {fit.before.mrr:.3f} -> {fit.after.mrr:.3f}")
    assert fit.improved and fit.after.mrr > fit.before.mrr
    session = rescorers.OnnxRescorer(fit.mlp)
    query = examples.queries[0]
    documents = examples.corpus[:50]
    np.testing.assert_allclose(
        session.score(query, documents),
        rescorers.score(fit.mlp, query, documents),
        rtol=1e-4,
        atol=1e-4,
    )
    # The default shape: concat -> 32 -> 1 (the article's 256 -> 128 -> 64 overfits).
    assert [w.shape for w in fit.mlp.weights] == [(97, 32), (32, 1)]


def test_rescorer_gradient_matches_finite_differences() -> None:
    examples, _ = distorted_task(dim=4, docs=30, queries=6)
    mlp = rescorers.initial(4, (5, 3), seed=2, zero_last=False)
    lists = [[0, 1, 2], [3, 4, 5]]
    batch = [0, 1]

    def loss(params: list[np.ndarray]) -> float:
        model = rescorers.Mlp.from_arrays(params)
        q = np.repeat(examples.queries[batch], 3, axis=0)
        d = examples.corpus[[j for row in lists for j in row]]
        s = rescorers.forward(model, rescorers.features(q, d)).reshape(2, 3).astype(np.float64)
        s -= s.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(s).sum(axis=1)) - s[:, 0]))

    params = [p.astype(np.float64) for p in mlp.arrays()]  # exact differences
    grads = rescorers._list_gradient(mlp, examples.queries, examples.corpus, batch, lists)
    for p, g in zip(params, grads, strict=True):
        index = np.unravel_index(np.argmax(np.abs(g)), g.shape)
        step = 1e-5
        p[index] += step
        up = loss(params)
        p[index] -= 2 * step
        down = loss(params)
        p[index] += step
        assert (up - down) / (2 * step) == pytest.approx(float(g[index]), rel=0.05, abs=1e-4)


def test_weights_pack_into_store_rows_and_back() -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(7, 5)).astype(np.float32), rng.normal(size=5).astype(np.float32)]
    rows, shapes = pack(arrays, 6)
    assert rows.shape == (7, 6)  # 40 floats in rows of 6, the last one padded
    for got, want in zip(unpack(rows, shapes), arrays, strict=True):
        np.testing.assert_array_equal(got, want)
    info = TrainedInfo("s", "a", Kind.ADAPTER, State.READY, progress=1.0, dimension=6)
    back, back_shapes = info_from_metadata(info_metadata(info, shapes))
    assert back == info and back_shapes == shapes


def test_untrained_rescorer_keeps_the_frozen_order() -> None:
    examples, _ = distorted_task(queries=20)
    mlp = rescorers.initial(32, (256, 128, 64), seed=0)
    query = examples.queries[0]
    documents = examples.corpus[:100]
    scores = rescorers.OnnxRescorer(mlp).score(query, documents)
    frozen = documents @ query
    assert np.argsort(-scores).tolist() == np.argsort(-frozen).tolist()
    np.testing.assert_allclose(scores, rescorers.SIMILARITY_SCALE * frozen, rtol=1e-5, atol=1e-5)


def test_rescorer_that_cannot_improve_keeps_the_frozen_order() -> None:
    # Every query is its document: the frozen order is perfect already.
    rng = np.random.default_rng(3)
    corpus = adapters.normalize(rng.normal(size=(300, 16)).astype(np.float32))
    examples = Examples(corpus[:60].copy(), [[i] for i in range(60)], corpus)
    fit = rescorers.fit_rescorer(examples, RescorerSettings(epochs=3, hidden=(8,)))
    assert fit.before.mrr == 1.0 and not fit.improved
    # What is kept is epoch 0, the untrained re-scorer, not the last epoch trained.
    assert not fit.mlp.weights[-1].any()
    scores = rescorers.score(fit.mlp, corpus[0], corpus)
    assert np.argsort(-scores)[:10].tolist() == np.argsort(-(corpus @ corpus[0]))[:10].tolist()


def test_rescorer_negatives_include_other_training_targets() -> None:
    """Other queries' relevant entries are negatives too, so the MLP cannot score a document up
    merely for having been a training target (which unseen queries' own targets never were)."""
    rng = np.random.default_rng(0)
    settings = RescorerSettings(negatives=15, target_negatives=4)
    targets = np.arange(1000, 1100, dtype=np.int64)
    top = list(range(50))
    for _ in range(20):
        row = rescorers._training_list(3, [1005], [], top, targets, 5000, rng, settings)
        assert row[0] == 1005 and 1005 not in row[1:]
        assert len(row) == 1 + settings.negatives
        assert sum(1000 <= j < 1100 for j in row[1:]) >= settings.target_negatives
    plain = RescorerSettings(negatives=15, target_negatives=0)
    row = rescorers._training_list(3, [1005], [], top, targets, 5000, rng, plain)
    assert sum(1000 <= j < 1100 for j in row[1:]) <= 2  # only what random picks happen to find


def test_rescorer_gain_within_noise_is_not_a_gain() -> None:
    """A network that only shuffles the candidates (random weights) moves some held-out
    queries up and others down: not a clear gain. The trained one on the distorted task is."""
    examples, _ = distorted_task(queries=200)
    queries, corpus = examples.queries, examples.corpus
    top = rescorers._frozen_top(queries, corpus, 50)
    which = list(range(100, 200))
    untrained = rescorers.initial(32, (32,), seed=0)
    shuffler = rescorers.initial(32, (32,), seed=3, zero_last=False)
    gains = [
        rescorers._reciprocal_rank(shuffler, queries[i], corpus, top[i], examples.relevant[i])
        - rescorers._reciprocal_rank(None, queries[i], corpus, top[i], examples.relevant[i])
        for i in which
    ]
    assert any(g > 0 for g in gains) and any(g < 0 for g in gains)
    assert not rescorers._clear_gain(
        untrained, shuffler, queries, corpus, top, examples.relevant, which
    )
    assert not rescorers._clear_gain(
        untrained, untrained, queries, corpus, top, examples.relevant, which
    )
    fit = rescorers.fit_rescorer(examples, RescorerSettings(epochs=12, learning_rate=1e-2))
    held_out = adapters.split(len(queries), 0.2, 0).held_out  # the fit's own held-out queries
    assert rescorers._clear_gain(
        untrained, fit.mlp, queries, corpus, top, examples.relevant, held_out
    )
