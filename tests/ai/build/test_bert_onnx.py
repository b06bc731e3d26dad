"""The BERT graph builder on a tiny random BERT, against a numpy forward pass written here."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import pytest

from nachbar.ai.build.bert_onnx import BertConfig, BertWeightsError, build_bert_encoder
from nachbar.ai.build.sentence_embedder import make_session
from tests.ai.build.tiny_bert import TINY, tiny_weights

Array = npt.NDArray[Any]


def _layer_norm(x: Array, w: dict[str, Array], prefix: str, eps: float) -> Array:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    scaled: Array = (x - mean) / np.sqrt(var + eps) * w[f"{prefix}.weight"]
    return scaled + w[f"{prefix}.bias"]


def _dense(x: Array, w: dict[str, Array], prefix: str) -> Array:
    return x @ w[f"{prefix}.weight"].T + w[f"{prefix}.bias"]


def numpy_bert(w: dict[str, Array], c: BertConfig, ids: Array, mask: Array, types: Array) -> Array:
    """BertModel.forward (eval) in float64 numpy: last_hidden_state."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    batch, length = ids.shape
    x = (
        w["embeddings.word_embeddings.weight"][ids]
        + w["embeddings.token_type_embeddings.weight"][types]
        + w["embeddings.position_embeddings.weight"][np.arange(length)]
    )
    x = _layer_norm(x, w, "embeddings.LayerNorm", c.layer_norm_eps)
    bias = (1.0 - mask[:, None, None, :]) * -1e30
    heads, size = c.num_attention_heads, c.hidden_size // c.num_attention_heads
    erf = np.vectorize(math.erf)
    for n in range(c.num_hidden_layers):
        p = f"encoder.layer.{n}"

        def split(t: Array) -> Array:
            return t.reshape(batch, length, heads, size).transpose(0, 2, 1, 3)

        q, k, v = (
            split(_dense(x, w, f"{p}.attention.self.{m}")) for m in ("query", "key", "value")
        )
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(size) + bias
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, length, c.hidden_size)
        x = _layer_norm(
            _dense(context, w, f"{p}.attention.output.dense") + x,
            w,
            f"{p}.attention.output.LayerNorm",
            c.layer_norm_eps,
        )
        inner = _dense(x, w, f"{p}.intermediate.dense")
        inner = 0.5 * inner * (1 + erf(inner / math.sqrt(2)))
        x = _layer_norm(
            _dense(inner, w, f"{p}.output.dense") + x, w, f"{p}.output.LayerNorm", c.layer_norm_eps
        )
    return x


def _inputs() -> dict[str, Array]:
    return {
        "input_ids": np.array([[1, 7, 9, 33, 2, 0, 0], [1, 4, 5, 6, 8, 10, 2]], dtype=np.int64),
        "attention_mask": np.array([[1, 1, 1, 1, 1, 0, 0], [1] * 7], dtype=np.int64),
        "token_type_ids": np.array([[0, 0, 0, 1, 1, 0, 0], [0] * 7], dtype=np.int64),
    }


def test_encoder_matches_the_reference_forward_pass() -> None:
    weights = tiny_weights(TINY)
    model = build_bert_encoder(weights, TINY)
    feeds = _inputs()
    (hidden,) = make_session(model).run(["last_hidden_state"], feeds)

    expected = numpy_bert(
        weights, TINY, feeds["input_ids"], feeds["attention_mask"], feeds["token_type_ids"]
    )
    assert hidden.shape == (2, 7, 16) and hidden.dtype == np.float32
    real = feeds["attention_mask"].astype(bool)
    np.testing.assert_allclose(hidden[real], expected[real], atol=2e-5)


def test_padding_does_not_change_real_tokens() -> None:
    session = make_session(build_bert_encoder(tiny_weights(TINY), TINY))
    feeds = _inputs()
    (padded,) = session.run(None, feeds)
    alone = {name: value[:1, :5] for name, value in feeds.items()}
    (unpadded,) = session.run(None, alone)
    np.testing.assert_allclose(padded[0, :5], unpadded[0], atol=1e-5)


def test_signature_matches_hub_exports() -> None:
    model = build_bert_encoder(tiny_weights(TINY), TINY)
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    assert list(inputs) == ["input_ids", "attention_mask", "token_type_ids"]
    for tensor_type in inputs.values():
        assert tensor_type.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in tensor_type.shape.dim] == ["batch", "sequence"]
    (output,) = model.graph.output
    assert output.name == "last_hidden_state"
    dims = output.type.tensor_type.shape.dim
    assert [dims[0].dim_param, dims[1].dim_param, dims[2].dim_value] == ["batch", "sequence", 16]
    assert model.opset_import[0].version == 17
    ops = {node.op_type for node in model.graph.node}
    assert {"LayerNormalization", "Erf"} <= ops and "Tanh" not in ops  # exact GELU, no pooler


def test_sequence_classification_head_outputs_logits() -> None:
    weights = tiny_weights(TINY, num_labels=3)
    # The layout of BertForSequenceClassification checkpoints: encoder and pooler under "bert.".
    checkpoint = {
        (k if k.startswith("classifier.") else f"bert.{k}"): v for k, v in weights.items()
    }
    model = build_bert_encoder(checkpoint, TINY, head="sequence_classification")
    feeds = _inputs()
    (logits,) = make_session(model).run(["logits"], feeds)

    hidden = numpy_bert(
        weights, TINY, feeds["input_ids"], feeds["attention_mask"], feeds["token_type_ids"]
    )
    pooled = np.tanh(_dense(hidden[:, 0], weights, "pooler.dense"))
    expected = _dense(pooled, weights, "classifier")
    assert logits.shape == (2, 3)
    np.testing.assert_allclose(logits, expected, atol=2e-5)
    assert [o.name for o in model.graph.output] == ["logits"]
    assert model.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 3


def test_missing_and_misshaped_weights_are_all_listed() -> None:
    weights = tiny_weights(TINY)
    del weights["encoder.layer.1.output.dense.bias"]
    weights["encoder.layer.0.attention.self.key.weight"] = np.zeros((16, 8), np.float32)
    with pytest.raises(BertWeightsError) as caught:
        build_bert_encoder(weights, TINY)
    message = str(caught.value)
    assert "missing encoder.layer.1.output.dense.bias" in message
    assert (
        "encoder.layer.0.attention.self.key.weight has shape (16, 8), expected (16, 16)" in message
    )


def test_head_without_its_weights_is_refused() -> None:
    with pytest.raises(BertWeightsError, match="missing pooler.dense.weight"):
        build_bert_encoder(tiny_weights(TINY), TINY, head="sequence_classification")


def test_config_is_read_from_hugging_face_json() -> None:
    config = BertConfig.from_dict(
        {
            "model_type": "bert",
            "vocab_size": 30522,
            "hidden_size": 384,
            "num_hidden_layers": 6,
            "num_attention_heads": 12,
            "intermediate_size": 1536,
            "architectures": ["BertModel"],
        }
    )
    assert config.head_size == 32 and config.layer_norm_eps == 1e-12
    with pytest.raises(ValueError, match="not 'bert'"):
        BertConfig.from_dict({"model_type": "roberta"})
    with pytest.raises(ValueError, match="lacks a required BERT field"):
        BertConfig.from_dict({"model_type": "bert", "vocab_size": 10})
    with pytest.raises(ValueError, match="gelu_new"):
        BertConfig(10, 16, 1, 4, 32, hidden_act="gelu_new")
    with pytest.raises(ValueError, match="multiple"):
        BertConfig(10, 15, 1, 4, 32)
