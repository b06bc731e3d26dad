"""A tiny random BERT (HF BertModel naming) for graph-builder tests."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from nachbar.ai.build.bert_onnx import BertConfig

Array = npt.NDArray[Any]

TINY = BertConfig(
    vocab_size=50,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=24,
    max_position_embeddings=32,
    type_vocab_size=2,
    layer_norm_eps=1e-12,
)


def tiny_weights(config: BertConfig, *, num_labels: int | None = None) -> dict[str, Array]:
    rng = np.random.default_rng(7)

    def r(*shape: int) -> Array:
        return rng.normal(0, 0.4, shape).astype(np.float32)

    h, i = config.hidden_size, config.intermediate_size
    w = {
        "embeddings.word_embeddings.weight": r(config.vocab_size, h),
        "embeddings.position_embeddings.weight": r(config.max_position_embeddings, h),
        "embeddings.token_type_embeddings.weight": r(config.type_vocab_size, h),
        "embeddings.LayerNorm.weight": 1 + r(h),
        "embeddings.LayerNorm.bias": r(h),
        "embeddings.position_ids": np.arange(config.max_position_embeddings)[None],
    }
    for n in range(config.num_hidden_layers):
        p = f"encoder.layer.{n}"
        for name, shape in {
            "attention.self.query": (h, h),
            "attention.self.key": (h, h),
            "attention.self.value": (h, h),
            "attention.output.dense": (h, h),
            "intermediate.dense": (i, h),
            "output.dense": (h, i),
        }.items():
            w[f"{p}.{name}.weight"] = r(*shape)
            w[f"{p}.{name}.bias"] = r(shape[0])
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[f"{p}.{norm}.weight"] = 1 + r(h)
            w[f"{p}.{norm}.bias"] = r(h)
    if num_labels is not None:
        w["pooler.dense.weight"] = r(h, h)
        w["pooler.dense.bias"] = r(h)
        w["classifier.weight"] = r(num_labels, h)
        w["classifier.bias"] = r(num_labels)
    return w
