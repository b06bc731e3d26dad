"""The offline STS-B cross-encoder: artifact integrity, ONNX signature, torch parity, quality."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from tokenizers import Tokenizer

from nachbar.ai.build import stsb
from nachbar.ai.build.bert_onnx import BertConfig
from nachbar.ai.build.cross_encoder import (
    ARTIFACT_DIR,
    ARTIFACT_SHA256,
    ArtifactChecksumError,
    ArtifactError,
    build_cross_encoder,
    pair_scorer,
    verify_artifact,
)
from nachbar.ai.build.torch_free import load_safetensors
from nachbar.ai.errors import ModelUnavailableError

# Logits of the torch training code (scripts/dev/train_cross_encoder.py) on the committed fp16
# weights, one pair per forward pass.
TORCH_LOGITS = Path(__file__).parent / "fixtures" / "torch_logits.json"
QUALITY_SAMPLE_SIZE = 400
MIN_TEST_SPEARMAN = 0.80


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stsb-minilm-l6-cross-encoder")
    build_cross_encoder(out)
    return out


def _signature(values: list[onnx.ValueInfoProto]) -> dict[str, tuple[int, list[str | int]]]:
    return {
        value.name: (
            value.type.tensor_type.elem_type,
            [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim],
        )
        for value in values
    }


def test_build_has_the_signature_of_hub_cross_encoders(built: Path) -> None:
    written = sorted(path.name for path in built.iterdir())
    assert written == ["config.json", "model.onnx", "tokenizer.json"]
    model = onnx.load(str(built / "model.onnx"))
    onnx.checker.check_model(model)
    assert _signature(list(model.graph.input)) == {
        "input_ids": (TensorProto.INT64, ["batch", "sequence"]),
        "attention_mask": (TensorProto.INT64, ["batch", "sequence"]),
        "token_type_ids": (TensorProto.INT64, ["batch", "sequence"]),
    }
    assert _signature(list(model.graph.output)) == {"logits": (TensorProto.FLOAT, ["batch", 1])}


def test_logits_match_the_torch_reference(built: Path) -> None:
    fixture = json.loads(TORCH_LOGITS.read_text())["pairs"]
    pairs = [(item["query"], item["document"]) for item in fixture]
    expected = np.array([item["logit"] for item in fixture])
    assert len(pairs) >= 10 and np.ptp(expected) > 2.0  # a real spread, not a constant model
    score = pair_scorer(built / "model.onnx", built / "tokenizer.json", threads=1)
    # Scored together the pairs are padded to a common length, which exercises the mask.
    np.testing.assert_allclose(score(pairs), expected, atol=1e-3, rtol=0)
    alone = np.array([score([pair])[0] for pair in pairs[:3]])
    np.testing.assert_allclose(alone, expected[:3], atol=1e-3, rtol=0)


def test_ranks_sts_b_test_pairs_like_the_gold_scores(built: Path) -> None:
    test = stsb.load_split("test")
    rows = np.random.default_rng(0).choice(len(test), QUALITY_SAMPLE_SIZE, replace=False)
    sample = [test[i] for i in sorted(rows)]
    score = pair_scorer(built / "model.onnx", built / "tokenizer.json", threads=1)
    assert stsb.evaluate(score, sample) >= MIN_TEST_SPEARMAN


def test_built_tokenizer_encodes_pairs_with_segment_ids(built: Path) -> None:
    tokenizer = Tokenizer.from_file(str(built / "tokenizer.json"))
    assert tokenizer.padding is None and tokenizer.truncation is None
    encoding = tokenizer.encode("Capital of France?", "Paris is the capital.")
    assert encoding.tokens == [
        "[CLS]", "capital", "of", "france", "?", "[SEP]",
        "paris", "is", "the", "capital", ".", "[SEP]",
    ]  # fmt: skip
    assert encoding.type_ids == [0] * 6 + [1] * 6


def test_config_describes_a_single_logit_bert_classifier(built: Path) -> None:
    raw = json.loads((built / "config.json").read_text())
    assert raw["architectures"] == ["BertForSequenceClassification"]
    assert raw["num_labels"] == 1
    config = BertConfig.from_json_file(built / "config.json")
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (384, 6, 30522)


def test_committed_artifact_is_intact_and_small() -> None:
    verify_artifact()
    weights = load_safetensors(ARTIFACT_DIR / "model.safetensors")
    assert {value.dtype for value in weights.values()} == {np.dtype(np.float16)}
    assert not any("word_embeddings" in name for name in weights)
    assert {"classifier.weight", "classifier.bias", "bert.pooler.dense.weight"} <= set(weights)
    total = sum(path.stat().st_size for path in ARTIFACT_DIR.iterdir())
    assert total <= 25_000_000


def _copy_artifact(tmp_path: Path) -> Path:
    copy = tmp_path / "artifact"
    shutil.copytree(ARTIFACT_DIR, copy)
    return copy


@pytest.mark.parametrize("name", sorted(ARTIFACT_SHA256))
def test_a_tampered_artifact_is_refused_before_anything_is_written(
    tmp_path: Path, name: str
) -> None:
    artifact = _copy_artifact(tmp_path)
    data = bytearray((artifact / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (artifact / name).write_bytes(bytes(data))

    mismatch = rf"{name} has SHA-256 [0-9a-f]{{64}}, expected"
    with pytest.raises(ArtifactChecksumError, match=mismatch):
        verify_artifact(artifact)
    out = tmp_path / "out"
    with pytest.raises(ModelUnavailableError, match="damaged or was changed"):
        build_cross_encoder(out, artifact_dir=artifact)
    assert not out.exists()


def test_a_missing_artifact_file_is_named(tmp_path: Path) -> None:
    artifact = _copy_artifact(tmp_path)
    (artifact / "config.json").unlink()
    with pytest.raises(ArtifactError, match=r"incomplete: .*config.json is missing"):
        verify_artifact(artifact)
