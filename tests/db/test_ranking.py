"""Result order: best score first, equal scores by id, whichever path ranks them."""

from __future__ import annotations

import numpy as np
import pytest

from nachbar.db.interface import Engine
from nachbar.db.types import Entry, ExactConfig, HnswConfig, Metric, SearchMode, StoreSpec


@pytest.mark.parametrize("mode", [SearchMode.EXACT, SearchMode.HNSW])
def test_equal_scores_rank_by_id(db: Engine, mode: SearchMode) -> None:
    db.create_store(StoreSpec(name="s", dimension=3, index=HnswConfig()))
    # Inserted out of id order, so slot order cannot pass for id order.
    ids = ["d", "b", "e", "a", "c"]
    db.upsert("s", [Entry(id=i, vector=np.array([1.0, 2.0, 3.0])) for i in ids])
    db.upsert("s", [Entry(id="far", vector=np.array([-1.0, 0.5, 0.0]))])
    # k covers every tied entry: which of several tied entries fill the last places is not
    # specified, only their order.
    result = db.get_sim_n("s", np.array([1.0, 2.0, 3.0]), 6, mode=mode)
    assert [m.id for m in result.matches] == ["a", "b", "c", "d", "e", "far"]
    assert len({m.score for m in result.matches[:5]}) == 1


@pytest.mark.parametrize("metric", list(Metric))
def test_order_and_scores_match_a_float64_reference(db: Engine, metric: Metric) -> None:
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(300, 16)).astype(np.float32)
    vectors[150:160] = vectors[10]  # some exact ties among the candidates
    ids = [f"id-{(i * 37) % 300:03d}" for i in range(300)]
    db.create_store(StoreSpec(name="s", dimension=16, metric=metric, index=ExactConfig()))
    db.upsert("s", [Entry(id=i, vector=v) for i, v in zip(ids, vectors, strict=True)])
    stored = vectors.astype(np.float64)
    for query in [vectors[10], rng.normal(size=16).astype(np.float32)]:
        q = query.astype(np.float64)
        if metric == Metric.L2:
            reference = -((stored - q) ** 2).sum(axis=1)
        else:
            reference = stored @ q
            if metric == Metric.COSINE:
                reference = reference / (np.linalg.norm(stored, axis=1) * np.linalg.norm(q))
        expected = sorted(range(300), key=lambda i: (-round(reference[i], 9), ids[i]))[:25]
        result = db.get_sim_n("s", query, 25, mode=SearchMode.EXACT)
        assert [m.id for m in result.matches] == [ids[i] for i in expected]
        np.testing.assert_allclose(
            [m.score for m in result.matches], reference[expected], rtol=1e-9, atol=1e-9
        )
