"""The runtime on the real offline models, when they have been built.

Each test skips (with the reason) unless `<model_dir>/built/<name>` exists, where model_dir is
NACHBAR_TEST_MODEL_DIR, NACHBAR_MODEL_DIR, /tmp/nachbar-test-models-<uid> or
~/.cache/nachbar/models, the first that holds the model. `nachbar models build` makes them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from nachbar.ai.models import ModelManager

MINILM = "all-minilm-l6-v2"
MINILM_INT8 = "all-minilm-l6-v2-int8"
CROSS_ENCODER = "stsb-minilm-l6-cross-encoder"
CROSS_ENCODER_INT8 = "stsb-minilm-l6-cross-encoder-int8"


def _candidate_dirs() -> list[Path]:
    dirs = [os.environ.get("NACHBAR_TEST_MODEL_DIR"), os.environ.get("NACHBAR_MODEL_DIR")]
    found = [Path(d) for d in dirs if d]
    if hasattr(os, "getuid"):
        found.append(Path(f"/tmp/nachbar-test-models-{os.getuid()}"))
    found.append(Path.home() / ".cache" / "nachbar" / "models")
    return found


def built_dir_with(*names: str) -> Path:
    for directory in _candidate_dirs():
        if all((directory / "built" / name / "model.onnx").is_file() for name in names):
            return directory
    pytest.skip(
        f"built model(s) {', '.join(names)} not found under "
        f"{', '.join(str(d) for d in _candidate_dirs())}; run `nachbar models build`"
    )


@pytest.fixture
def manager_with(request: pytest.FixtureRequest) -> Iterator[ModelManager]:
    names: tuple[str, ...] = request.param
    with ModelManager(built_dir_with(*names), offline=True) as manager:
        yield manager


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("manager_with", [(MINILM,)], indirect=True)
def test_minilm_matches_the_published_anchor(manager_with: ModelManager) -> None:
    # fastembed's canonical all-MiniLM-L6-v2 vector for "hello world" starts with these values.
    vector = manager_with.embed(MINILM, ["hello world"])[0]
    np.testing.assert_allclose(vector[:5], [-0.0345, 0.031, 0.0067, 0.0261, -0.0394], atol=1e-3)
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5


@pytest.mark.parametrize("manager_with", [(MINILM,)], indirect=True)
def test_minilm_ranks_paraphrases_first(manager_with: ModelManager) -> None:
    query, paraphrase, unrelated = manager_with.embed(
        MINILM,
        [
            "A cat is sleeping on the sofa.",
            "A kitten naps on the couch.",
            "Stock markets fell sharply on Tuesday.",
        ],
    )
    assert cosine(query, paraphrase) > cosine(query, unrelated) + 0.3


@pytest.mark.parametrize("manager_with", [(MINILM, MINILM_INT8)], indirect=True)
def test_int8_twin_stays_close_to_fp32(manager_with: ModelManager) -> None:
    sentences = [
        "hello world",
        "The quick brown fox jumps over the lazy dog.",
        "Vector databases index embeddings for similarity search.",
    ]
    fp32 = manager_with.embed(MINILM, sentences)
    int8 = manager_with.embed(MINILM_INT8, sentences)
    # The runtime serves the twin in the fp32 space; the quantization accuracy bar itself is
    # tested where the twin is built (tests/ai/build).
    for a, b in zip(fp32, int8, strict=True):
        assert cosine(a, b) >= 0.97


@pytest.mark.parametrize("manager_with", [(CROSS_ENCODER,)], indirect=True)
def test_cross_encoder_scores_similar_pairs_higher(manager_with: ModelManager) -> None:
    scores = manager_with.rerank(
        CROSS_ENCODER,
        "A man is playing a guitar.",
        ["A person plays the guitar.", "A chef is cooking pasta in a kitchen."],
        sigmoid=True,
    )
    assert scores[0] > scores[1]
    assert ((scores > 0) & (scores < 1)).all()
