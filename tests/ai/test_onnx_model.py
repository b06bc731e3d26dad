from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from nachbar.ai.errors import ModelUnavailableError
from nachbar.ai.onnx_model import OnnxModel, SessionOptions
from tests.ai.tiny_models import IR_VERSION, OPSET, TinyClipText, TinyCrossEncoder


def save(model: onnx.ModelProto, tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    return path


def test_feeds_only_the_inputs_the_graph_declares(tmp_path: Path) -> None:
    tiny = TinyCrossEncoder.create("no-types", vocab=20, with_token_types=False)
    model = OnnxModel(save(tiny.graph(), tmp_path), model_name="m", output="logits")
    assert model.input_names == {"input_ids", "attention_mask"}
    ids = np.array([[1, 2, 3]], dtype=np.int64)
    mask = np.ones_like(ids)
    # token_type_ids is offered, as for every text model, and must simply not be fed.
    logits = model.run({"input_ids": ids, "attention_mask": mask, "token_type_ids": mask * 0})
    np.testing.assert_allclose(logits, tiny.reference(ids, mask * 0, mask), rtol=1e-5)


def test_selects_the_output_by_name_not_position(tmp_path: Path) -> None:
    tiny = TinyClipText.create("clip", vocab=20, dimension=8)
    model = OnnxModel(save(tiny.graph(), tmp_path), model_name="m", output="text_embeds")
    ids = np.array([[18, 3, 19, 0]], dtype=np.int64)
    out = model.run({"input_ids": ids})
    assert out.shape == (1, 8)
    np.testing.assert_allclose(out, tiny.reference(ids), rtol=1e-5)


def test_unknown_output_name_is_refused_at_load(tmp_path: Path) -> None:
    path = save(TinyClipText.create("clip", vocab=20, dimension=8).graph(), tmp_path)
    with pytest.raises(ModelUnavailableError, match="not 'pooler_output'"):
        OnnxModel(path, model_name="m", output="pooler_output")


def test_corrupt_file_is_unavailable_with_a_fix(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelUnavailableError, match="fetch or build them again"):
        OnnxModel(path, model_name="m", output="x")


def test_inputs_are_cast_to_the_declared_dtype(tmp_path: Path) -> None:
    node = helper.make_node("Identity", ["input_ids"], ["out"])
    graph = helper.make_graph(
        [node],
        "int32",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT32, ["b", "s"])],
        [helper.make_tensor_value_info("out", TensorProto.INT32, ["b", "s"])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    proto.ir_version = IR_VERSION
    model = OnnxModel(save(proto, tmp_path), model_name="m", output="out")
    out = model.run({"input_ids": np.array([[5, 6]], dtype=np.int64)})
    assert out.dtype == np.int32 and out.tolist() == [[5, 6]]


def test_graph_needing_an_unknown_input_fails_at_load(tmp_path: Path) -> None:
    node = helper.make_node("Identity", ["position_ids"], ["out"])
    graph = helper.make_graph(
        [node],
        "positions",
        [helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("out", TensorProto.INT64, ["b", "s"])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    proto.ir_version = IR_VERSION
    model = OnnxModel(
        save(proto, tmp_path), model_name="m", output="out", options=SessionOptions(1, 1)
    )
    with pytest.raises(ModelUnavailableError, match="position_ids"):
        model.require_inputs(frozenset({"input_ids", "attention_mask"}))


def test_skip_layer_norm_fusion_is_off_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # residual + LayerNormalization: onnxruntime fuses it into SkipLayerNormalization unless
    # told not to, which made the int8 models slower (see SessionOptions).
    hidden = 8
    shape = [1, 4, hidden]
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["x", "skip"], ["summed"]),
            helper.make_node("LayerNormalization", ["summed", "gamma", "beta"], ["y"], axis=-1),
        ],
        "residual",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("skip", TensorProto.FLOAT, shape),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        initializer=[
            helper.make_tensor("gamma", TensorProto.FLOAT, [hidden], [1.0] * hidden),
            helper.make_tensor("beta", TensorProto.FLOAT, [hidden], [0.0] * hidden),
        ],
    )
    path = save(
        helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
        ),
        tmp_path,
    )
    real_session = ort.InferenceSession
    optimized = tmp_path / "optimized.onnx"

    def session_saving_its_graph(*args: object, **kwargs: object) -> object:
        kwargs["sess_options"].optimized_model_filepath = str(optimized)  # type: ignore[attr-defined]
        return real_session(*args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", session_saving_its_graph)

    def fused_ops(options: SessionOptions) -> set[str]:
        OnnxModel(path, model_name="m", output="y", options=options)
        return {node.op_type for node in onnx.load(str(optimized)).graph.node}

    assert "SkipLayerNormalization" not in fused_ops(SessionOptions())
    assert "SkipLayerNormalization" in fused_ops(SessionOptions(disabled_optimizers=()))
