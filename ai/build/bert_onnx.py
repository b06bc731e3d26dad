"""Build a BERT encoder as an ONNX graph from numpy weights in Hugging Face naming.

The graph has the signature of the hub's ONNX exports of BERT-family sentence encoders
(e.g. `onnx/model.onnx` of all-MiniLM-L6-v2):

    inputs   input_ids, attention_mask, token_type_ids   int64  [batch, sequence]
    output   last_hidden_state                           float  [batch, sequence, hidden]

so the model runtime treats a built model and a downloaded one alike. With
`head="sequence_classification"` the graph ends in the `BertForSequenceClassification` head
instead (see `build_bert_encoder`) and outputs `logits` [batch, num_labels], the signature of
hub cross-encoder exports.

Weights use the names of `transformers.BertModel.state_dict()`
(`embeddings.word_embeddings.weight`, `encoder.layer.0.attention.self.query.weight`, ...).
The `bert.` prefix that `BertForSequenceClassification` checkpoints put before the encoder and
pooler is accepted and dropped. The math follows `BertModel` in eval mode: exact (erf) GELU,
absolute position embeddings, post-layer-norm residual blocks, masked positions pushed to the
float32 minimum before the softmax.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnx

from nachbar.ai.build.onnx_graph import FLOAT, INT64, GraphBuilder

__all__ = [
    "BertConfig",
    "BertHead",
    "BertWeightsError",
    "build_bert_encoder",
]

Array = npt.NDArray[Any]
BertHead = Literal["sequence_classification"]

_CHECKPOINT_PREFIX = "bert."
# Buffers that some checkpoints carry and the graph computes itself.
_IGNORED_WEIGHTS = frozenset({"embeddings.position_ids"})


class BertWeightsError(ValueError):
    """The weight dict does not match the configuration (missing or mis-shaped tensors)."""


@dataclass(frozen=True, slots=True)
class BertConfig:
    """The fields of a Hugging Face BERT `config.json` that shape the graph."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    position_embedding_type: str = "absolute"

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_act != "gelu":
            raise ValueError(
                f"hidden_act {self.hidden_act!r} is not supported: only BERT's exact 'gelu' is"
            )
        if self.position_embedding_type != "absolute":
            raise ValueError(
                f"position_embedding_type {self.position_embedding_type!r} is not supported: "
                "only 'absolute' is"
            )

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, raw: Mapping[str, object]) -> BertConfig:
        """Read the known keys of a `config.json` mapping; other keys are ignored."""
        if raw.get("model_type", "bert") != "bert":
            raise ValueError(f"config describes a {raw.get('model_type')!r} model, not 'bert'")
        known = {name: raw[name] for name in cls.__dataclass_fields__ if name in raw}
        try:
            return cls(**known)  # type: ignore[arg-type]
        except TypeError as exc:
            raise ValueError(f"config.json lacks a required BERT field: {exc}") from exc

    @classmethod
    def from_json_file(cls, path: Path) -> BertConfig:
        loaded = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(loaded, dict):
            raise ValueError(f"{path} does not hold a JSON object")
        return cls.from_dict(loaded)


def build_bert_encoder(
    weights: Mapping[str, Array],
    config: BertConfig,
    *,
    head: BertHead | None = None,
    graph_name: str = "bert",
) -> onnx.ModelProto:
    """Return a BERT ONNX model (opset 17) computed from `weights`.

    `head=None` outputs `last_hidden_state` [batch, sequence, hidden_size].

    `head="sequence_classification"` adds the `BertForSequenceClassification` head and outputs
    `logits` [batch, num_labels] instead:

        pooled = tanh(last_hidden_state[:, 0] @ pooler.dense.weight.T + pooler.dense.bias)
        logits = pooled @ classifier.weight.T + classifier.bias

    It needs the extra weights `pooler.dense.{weight,bias}` ([hidden, hidden], [hidden]) and
    `classifier.{weight,bias}` ([num_labels, hidden], [num_labels]); `num_labels` is read from
    `classifier.weight`. Raises `BertWeightsError` naming every missing or mis-shaped tensor.
    """
    named = _strip_prefix(weights)
    _check_shapes(named, _expected_shapes(config, named, head))

    g = GraphBuilder(graph_name)
    dims = ["batch", "sequence"]
    input_ids = g.input("input_ids", INT64, dims)
    attention_mask = g.input("attention_mask", INT64, dims)
    token_type_ids = g.input("token_type_ids", INT64, dims)

    hidden = _embeddings(g, named, config, input_ids, token_type_ids)
    mask_bias = _attention_mask_bias(g, attention_mask)
    for index in range(config.num_hidden_layers):
        hidden = _layer(g, named, config, f"encoder.layer.{index}", hidden, mask_bias)

    if head is None:
        g.output(hidden, "last_hidden_state", FLOAT, ["batch", "sequence", config.hidden_size])
        return g.model("BERT encoder: last_hidden_state")
    if head == "sequence_classification":
        num_labels = int(named["classifier.weight"].shape[0])
        cls_vector = g.add("Gather", [hidden, g.scalar(0, np.int64)], axis=1, name="pooler/cls")
        pooled = g.add(
            "Tanh",
            [
                g.linear(
                    cls_vector,
                    named["pooler.dense.weight"],
                    named["pooler.dense.bias"],
                    "pooler.dense",
                )
            ],
            name="pooler/Tanh",
        )
        logits = g.linear(
            pooled, named["classifier.weight"], named["classifier.bias"], "classifier"
        )
        g.output(logits, "logits", FLOAT, ["batch", num_labels])
        return g.model("BERT sequence classification: logits")
    raise ValueError(f"unknown head {head!r}: use None or 'sequence_classification'")


def _strip_prefix(weights: Mapping[str, Array]) -> dict[str, Array]:
    named: dict[str, Array] = {}
    for name, value in weights.items():
        key = name.removeprefix(_CHECKPOINT_PREFIX)
        if key in named:
            raise BertWeightsError(f"weight {key!r} appears both with and without 'bert.' prefix")
        named[key] = value
    return named


def _expected_shapes(
    config: BertConfig, named: Mapping[str, Array], head: BertHead | None
) -> dict[str, tuple[int, ...]]:
    h, i = config.hidden_size, config.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (config.vocab_size, h),
        "embeddings.position_embeddings.weight": (config.max_position_embeddings, h),
        "embeddings.token_type_embeddings.weight": (config.type_vocab_size, h),
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
    }
    for index in range(config.num_hidden_layers):
        p = f"encoder.layer.{index}"
        for proj in ("query", "key", "value"):
            shapes[f"{p}.attention.self.{proj}.weight"] = (h, h)
            shapes[f"{p}.attention.self.{proj}.bias"] = (h,)
        shapes[f"{p}.attention.output.dense.weight"] = (h, h)
        shapes[f"{p}.attention.output.dense.bias"] = (h,)
        shapes[f"{p}.attention.output.LayerNorm.weight"] = (h,)
        shapes[f"{p}.attention.output.LayerNorm.bias"] = (h,)
        shapes[f"{p}.intermediate.dense.weight"] = (i, h)
        shapes[f"{p}.intermediate.dense.bias"] = (i,)
        shapes[f"{p}.output.dense.weight"] = (h, i)
        shapes[f"{p}.output.dense.bias"] = (h,)
        shapes[f"{p}.output.LayerNorm.weight"] = (h,)
        shapes[f"{p}.output.LayerNorm.bias"] = (h,)
    if head == "sequence_classification":
        classifier = named.get("classifier.weight")
        num_labels = (
            int(classifier.shape[0]) if classifier is not None and classifier.ndim == 2 else 1
        )
        shapes["pooler.dense.weight"] = (h, h)
        shapes["pooler.dense.bias"] = (h,)
        shapes["classifier.weight"] = (num_labels, h)
        shapes["classifier.bias"] = (num_labels,)
    return shapes


def _check_shapes(named: Mapping[str, Array], expected: Mapping[str, tuple[int, ...]]) -> None:
    problems = [f"missing {name} {shape}" for name, shape in expected.items() if name not in named]
    problems += [
        f"{name} has shape {tuple(named[name].shape)}, expected {shape}"
        for name, shape in expected.items()
        if name in named and tuple(named[name].shape) != shape
    ]
    if problems:
        listed = "; ".join(problems[:8]) + ("; ..." if len(problems) > 8 else "")
        raise BertWeightsError(
            f"the BERT weights do not match the config ({len(problems)} problems): {listed}. "
            "Check that the checkpoint and config.json belong to the same model."
        )


def _layer_norm(
    g: GraphBuilder, x: str, named: Mapping[str, Array], prefix: str, eps: float
) -> str:
    scale = g.constant(f"{prefix}.weight", named[f"{prefix}.weight"].astype(np.float32))
    bias = g.constant(f"{prefix}.bias", named[f"{prefix}.bias"].astype(np.float32))
    return g.add(
        "LayerNormalization", [x, scale, bias], axis=-1, epsilon=eps, name=f"{prefix}/LayerNorm"
    )


def _linear(g: GraphBuilder, x: str, named: Mapping[str, Array], prefix: str) -> str:
    return g.linear(x, named[f"{prefix}.weight"], named[f"{prefix}.bias"], prefix)


def _embeddings(
    g: GraphBuilder,
    named: Mapping[str, Array],
    config: BertConfig,
    input_ids: str,
    token_type_ids: str,
) -> str:
    def table(name: str) -> str:
        return g.constant(
            f"embeddings.{name}.weight", named[f"embeddings.{name}.weight"].astype(np.float32)
        )

    words = g.add("Gather", [table("word_embeddings"), input_ids], name="embeddings/words")
    types = g.add(
        "Gather", [table("token_type_embeddings"), token_type_ids], name="embeddings/types"
    )
    # positions = arange(sequence); sequences longer than max_position_embeddings fail in Gather.
    shape = g.add("Shape", [input_ids], name="embeddings/shape")
    length = g.add("Gather", [shape, g.scalar(1, np.int64)], axis=0, name="embeddings/length")
    positions = g.add(
        "Range", [g.scalar(0, np.int64), length, g.scalar(1, np.int64)], name="embeddings/positions"
    )
    place = g.add("Gather", [table("position_embeddings"), positions], name="embeddings/places")
    summed = g.add("Add", [g.add("Add", [words, types]), place], name="embeddings/sum")
    return _layer_norm(g, summed, named, "embeddings.LayerNorm", config.layer_norm_eps)


def _attention_mask_bias(g: GraphBuilder, attention_mask: str) -> str:
    """[batch, sequence] 0/1 mask -> [batch, 1, 1, sequence] additive bias (0 or float32 min)."""
    keep = g.add("Cast", [attention_mask], to=FLOAT, name="mask/float")
    dropped = g.add("Sub", [g.scalar(1.0), keep], name="mask/dropped")
    bias = g.add("Mul", [dropped, g.scalar(float(np.finfo(np.float32).min))], name="mask/bias")
    return g.add("Unsqueeze", [bias, g.ints([1, 2])], name="mask/unsqueeze")


def _layer(
    g: GraphBuilder,
    named: Mapping[str, Array],
    config: BertConfig,
    prefix: str,
    hidden: str,
    mask_bias: str,
) -> str:
    heads, size = config.num_attention_heads, config.head_size
    split_heads = g.ints([0, 0, heads, size])

    def project(kind: str, perm: list[int]) -> str:
        linear = _linear(g, hidden, named, f"{prefix}.attention.self.{kind}")
        split = g.add("Reshape", [linear, split_heads], name=f"{prefix}/{kind}/split")
        return g.add("Transpose", [split], perm=perm, name=f"{prefix}/{kind}/heads")

    query = project("query", [0, 2, 1, 3])  # [batch, heads, sequence, size]
    key = project("key", [0, 2, 3, 1])  # [batch, heads, size, sequence]
    value = project("value", [0, 2, 1, 3])
    scores = g.add("MatMul", [query, key], name=f"{prefix}/scores")
    scaled = g.add("Mul", [scores, g.scalar(1.0 / math.sqrt(size))], name=f"{prefix}/scaled")
    masked = g.add("Add", [scaled, mask_bias], name=f"{prefix}/masked")
    probs = g.add("Softmax", [masked], axis=-1, name=f"{prefix}/probs")
    context = g.add("MatMul", [probs, value], name=f"{prefix}/context")
    merged = g.add("Transpose", [context], perm=[0, 2, 1, 3], name=f"{prefix}/context/merge")
    flat = g.add(
        "Reshape", [merged, g.ints([0, 0, config.hidden_size])], name=f"{prefix}/context/flat"
    )

    attended = _linear(g, flat, named, f"{prefix}.attention.output.dense")
    attended = g.add("Add", [attended, hidden], name=f"{prefix}/attention/residual")
    attended = _layer_norm(
        g, attended, named, f"{prefix}.attention.output.LayerNorm", config.layer_norm_eps
    )

    inner = _gelu(g, _linear(g, attended, named, f"{prefix}.intermediate.dense"), prefix)
    out = _linear(g, inner, named, f"{prefix}.output.dense")
    out = g.add("Add", [out, attended], name=f"{prefix}/output/residual")
    return _layer_norm(g, out, named, f"{prefix}.output.LayerNorm", config.layer_norm_eps)


def _gelu(g: GraphBuilder, x: str, prefix: str) -> str:
    """Exact GELU, x * 0.5 * (1 + erf(x / sqrt(2))); onnxruntime fuses it into one kernel."""
    erf = g.add("Erf", [g.add("Div", [x, g.scalar(math.sqrt(2.0))])], name=f"{prefix}/gelu/erf")
    half = g.add("Mul", [x, g.scalar(0.5)], name=f"{prefix}/gelu/half")
    return g.add("Mul", [half, g.add("Add", [erf, g.scalar(1.0)])], name=f"{prefix}/gelu")
