from __future__ import annotations

import numpy as np
import pytest

from nachbar.ai.fusion import RRF_K, min_max, ranks, reciprocal_rank_fusion, weighted_blend


def test_ranks_are_one_based_best_first_and_ties_keep_list_order() -> None:
    assert ranks([0.1, 0.9, 0.5]).tolist() == [3, 1, 2]
    assert ranks([2.0, 2.0, 3.0]).tolist() == [2, 3, 1]


def test_rrf_sums_reciprocal_ranks() -> None:
    vector = [0.9, 0.8, 0.1]  # ranks 1, 2, 3
    rerank = [-5.0, 7.0, 3.0]  # ranks 3, 1, 2
    fused = reciprocal_rank_fusion([vector, rerank])
    expected = [1 / 61 + 1 / 63, 1 / 62 + 1 / 61, 1 / 63 + 1 / 62]
    np.testing.assert_allclose(fused, expected)
    # The candidate that both scorings put high wins.
    assert int(np.argmax(fused)) == 1


def test_rrf_uses_only_the_order_so_scales_do_not_matter() -> None:
    vector = [0.9, 0.8, 0.1]
    rerank = [-5.0, 7.0, 3.0]
    scaled = [1000 * x + 3 for x in rerank]
    np.testing.assert_allclose(
        reciprocal_rank_fusion([vector, rerank]), reciprocal_rank_fusion([vector, scaled])
    )


def test_rrf_weights_and_k() -> None:
    fused = reciprocal_rank_fusion([[1.0, 0.0], [0.0, 1.0]], weights=[3.0, 1.0], k=0.0)
    np.testing.assert_allclose(fused, [3 / 1 + 1 / 2, 3 / 2 + 1 / 1])
    assert RRF_K == 60.0


def test_min_max_maps_to_the_unit_interval_and_constant_lists_to_the_middle() -> None:
    np.testing.assert_allclose(min_max([2.0, 4.0, 3.0]), [0.0, 1.0, 0.5])
    np.testing.assert_allclose(min_max([7.0, 7.0]), [0.5, 0.5])


def test_blend_keeps_distances_that_rrf_drops() -> None:
    vector = [0.90, 0.89, 0.10]
    rerank = [0.0, 1.0, 0.9]
    blended = weighted_blend([vector, rerank])
    # min_max(vector) = [1, 0.9875, 0], min_max(rerank) = [0, 1, 0.9]
    np.testing.assert_allclose(blended, [1.0, 1.9875, 0.9])
    weighted = weighted_blend([vector, rerank], weights=[1.0, 0.0])
    np.testing.assert_allclose(weighted, min_max(vector))


@pytest.mark.parametrize(
    ("scorings", "weights"),
    [
        ([], None),
        ([[1.0, 2.0], [1.0]], None),
        ([[]], None),
        ([[1.0, float("nan")]], None),
        ([[1.0, 2.0]], [1.0, 1.0]),
        ([[1.0, 2.0]], [-1.0]),
    ],
)
def test_bad_inputs_are_refused(scorings: list[list[float]], weights: list[float] | None) -> None:
    with pytest.raises(ValueError):
        reciprocal_rank_fusion(scorings, weights=weights)
    with pytest.raises(ValueError):
        weighted_blend(scorings, weights)
