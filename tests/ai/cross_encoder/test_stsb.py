"""STS-B loading and the Spearman metric used to measure the cross-encoder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from nachbar.ai.build import stsb


@pytest.mark.parametrize(
    ("split", "size", "first"),
    [
        ("train", 5749, ("A plane is taking off.", "An air plane is taking off.", 5.0)),
        (
            "dev",
            1500,
            ("A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.", 5.0),
        ),
        ("test", 1379, ("A girl is styling her hair.", "A girl is brushing her hair.", 2.5)),
    ],
)
def test_splits_have_the_standard_sizes_and_order(
    split: stsb.Split, size: int, first: tuple[str, str, float]
) -> None:
    pairs = stsb.load_split(split)
    assert len(pairs) == size
    assert pairs[0] == stsb.StsPair(*first)
    assert all(0.0 <= p.score <= 5.0 for p in pairs)
    assert all(p.sentence1 and p.sentence2 for p in pairs)


def test_lines_with_source_columns_keep_only_the_sentences() -> None:
    # The first 2016 headlines line of train carries two extra source columns.
    pair = next(
        p
        for p in stsb.load_split("train")
        if p.sentence1 == "Driver backs into stroller with child, drives off"
    )
    assert pair == stsb.StsPair(
        "Driver backs into stroller with child, drives off",
        "Driver backs into mom, stroller with child then drives off",
        4.0,
    )


def test_quotes_are_kept_literally() -> None:
    sentences = [s for p in stsb.load_split("train") for s in (p.sentence1, p.sentence2)]
    assert any('"' in s for s in sentences)


def test_splits_are_distinct() -> None:
    dev = {(p.sentence1, p.sentence2) for p in stsb.load_split("dev")}
    test = {(p.sentence1, p.sentence2) for p in stsb.load_split("test")}
    assert len(dev & test) < 5  # STS-B repeats a handful of generic pairs across splits


def test_unknown_split_is_refused() -> None:
    with pytest.raises(ValueError, match="train, dev, test"):
        stsb.load_split("validation")  # type: ignore[arg-type]


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(stsb.StsbDataMissingError, match="sts-dev.csv"):
        stsb.load_split("dev", data_dir=tmp_path)


def test_malformed_lines_are_reported_with_their_line_number(tmp_path: Path) -> None:
    good = "g\tf\t2012\t0001\t3.5\tOne.\tTwo.\n"
    (tmp_path / "sts-dev.csv").write_text(good + "g\tf\t2012\t0002\tsimilar\tOne.\tTwo.\n")
    with pytest.raises(stsb.StsbFormatError, match=r"sts-dev.csv:2: score 'similar'"):
        stsb.load_split("dev", data_dir=tmp_path)
    (tmp_path / "sts-dev.csv").write_text(good + "g\tf\t2012\t0002\t7.0\tOne.\tTwo.\n")
    with pytest.raises(stsb.StsbFormatError, match=r"sts-dev.csv:2: score 7.0 is outside"):
        stsb.load_split("dev", data_dir=tmp_path)
    (tmp_path / "sts-dev.csv").write_text("only\tfour\tfields\there\n")
    with pytest.raises(stsb.StsbFormatError, match="found 4"):
        stsb.load_split("dev", data_dir=tmp_path)
    (tmp_path / "sts-dev.csv").write_text(good)
    assert stsb.load_split("dev", data_dir=tmp_path) == (stsb.StsPair("One.", "Two.", 3.5),)


def test_average_ranks_share_ranks_between_ties() -> None:
    ranks = stsb.average_ranks([10.0, 30.0, 20.0, 30.0, 10.0, 30.0])
    np.testing.assert_array_equal(ranks, [1.5, 5.0, 3.0, 5.0, 1.5, 5.0])


def test_spearman_with_ties_matches_the_hand_computed_value() -> None:
    # ranks a = [1, 2.5, 2.5, 4], ranks b = [1, 3, 2, 4]
    # centred: [-1.5, 0, 0, 1.5] and [-1.5, 0.5, -0.5, 1.5] -> 4.5 / sqrt(4.5 * 5)
    assert stsb.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / np.sqrt(22.5))


def test_spearman_without_ties_matches_the_textbook_formula() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=50), rng.normal(size=50)
    d = stsb.average_ranks(a) - stsb.average_ranks(b)
    textbook = 1 - 6 * float(np.sum(d**2)) / (50 * (50**2 - 1))
    assert stsb.spearman(a, b) == pytest.approx(textbook)


def test_spearman_depends_only_on_order() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=40), rng.normal(size=40)
    assert stsb.spearman(np.exp(a), b**3) == pytest.approx(stsb.spearman(a, b))
    assert stsb.spearman(a, a * 2 + 1) == pytest.approx(1.0)
    assert stsb.spearman(a, -a) == pytest.approx(-1.0)


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        ([1, 2, 3], [1, 2], "equal length"),
        ([1], [1], "at least 2"),
        ([1, 1, 1], [1, 2, 3], "all values of one list are equal"),
        ([1, float("nan"), 3], [1, 2, 3], "NaN"),
    ],
)
def test_spearman_refuses_undefined_inputs(a: list[float], b: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        stsb.spearman(a, b)


def test_evaluate_scores_every_pair_in_order() -> None:
    pairs = stsb.load_split("dev")[:200]
    seen: list[Sequence[tuple[str, str]]] = []

    def gold(batch: Sequence[tuple[str, str]]) -> list[float]:
        seen.append(batch)
        by_text = {(p.sentence1, p.sentence2): p.score for p in pairs}
        return [by_text[pair] for pair in batch]

    assert stsb.evaluate(gold, pairs) == pytest.approx(1.0)
    assert seen == [[(p.sentence1, p.sentence2) for p in pairs]]

    # Word overlap is a weak but real similarity signal; reversed, it anti-correlates.
    def overlap(batch: Sequence[tuple[str, str]]) -> list[float]:
        return [
            len(set(a.lower().split()) & set(b.lower().split()))
            / len(set(a.lower().split()) | set(b.lower().split()))
            for a, b in batch
        ]

    assert 0.3 < stsb.evaluate(overlap, pairs) < 0.9
    assert stsb.evaluate(lambda batch: [-s for s in overlap(batch)], pairs) < -0.3


def test_evaluate_refuses_a_wrong_number_of_scores() -> None:
    pairs = stsb.load_split("dev")[:10]
    with pytest.raises(ValueError, match="one score per pair"):
        stsb.evaluate(lambda batch: [0.0] * (len(batch) - 1), pairs)
    with pytest.raises(ValueError, match="at least one"):
        stsb.evaluate(lambda batch: [], [])
