"""GraphBuilder: writes ONNX graphs node by node with `onnx.helper`.

The model builders (BERT, EfficientNet, ConSE) describe their networks as a sequence of
`add(...)` calls that return the name of the node's output, which reads close to the forward
pass of the original model. Every graph is written for opset 17 and IR version 8, so that any
onnxruntime from 1.14 on loads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
PRODUCER = "nachbar.ai.build"

Dim = int | str


class GraphBuilder:
    """Collects nodes, initializers, inputs and outputs of one ONNX graph."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._nodes: list[onnx.NodeProto] = []
        self._initializers: dict[str, onnx.TensorProto] = {}
        self._inputs: list[onnx.ValueInfoProto] = []
        self._outputs: list[onnx.ValueInfoProto] = []
        self._counter = 0

    def input(self, name: str, elem_type: int, shape: Sequence[Dim]) -> str:
        self._inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def output(self, value: str, name: str, elem_type: int, shape: Sequence[Dim]) -> None:
        """Expose `value` as graph output `name` (through an Identity when they differ)."""
        if value != name:
            self._nodes.append(helper.make_node("Identity", [value], [name], name=name))
        self._outputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))

    def constant(self, name: str, array: npt.ArrayLike, dtype: npt.DTypeLike | None = None) -> str:
        """Add an initializer; names must be unique, so weights keep their checkpoint names."""
        if name in self._initializers:
            raise ValueError(f"initializer {name!r} is defined twice in graph {self.name!r}")
        value = np.asarray(array, dtype=dtype)
        self._initializers[name] = numpy_helper.from_array(value, name)
        return name

    def scalar(self, value: float | int, dtype: npt.DTypeLike = np.float32) -> str:
        """A shared scalar (or 1-element) constant, created once per value and type."""
        name = f"const_{np.dtype(dtype).name}_{value!r}"
        if name not in self._initializers:
            self.constant(name, np.asarray(value, dtype=dtype))
        return name

    def ints(self, values: Sequence[int]) -> str:
        """A shared int64 vector constant (shapes, axes, slice bounds)."""
        name = "const_i64_" + "_".join(str(v) for v in values)
        if name not in self._initializers:
            self.constant(name, np.asarray(list(values), dtype=np.int64))
        return name

    def add(
        self, op_type: str, inputs: Sequence[str], *, name: str | None = None, **attrs: Any
    ) -> str:
        """Append one single-output node; returns its output name."""
        (output,) = self.add_multi(op_type, inputs, 1, name=name, **attrs)
        return output

    def add_multi(
        self,
        op_type: str,
        inputs: Sequence[str],
        num_outputs: int,
        *,
        name: str | None = None,
        **attrs: Any,
    ) -> list[str]:
        """Append one node with `num_outputs` outputs; returns their names."""
        self._counter += 1
        node_name = name or f"{op_type.lower()}_{self._counter}"
        outputs = [
            node_name if num_outputs == 1 else f"{node_name}:{i}" for i in range(num_outputs)
        ]
        self._nodes.append(
            helper.make_node(op_type, list(inputs), outputs, name=node_name, **attrs)
        )
        return outputs

    def linear(self, x: str, weight: npt.NDArray[Any], bias: npt.NDArray[Any], prefix: str) -> str:
        """`x @ weight.T + bias` for a torch `nn.Linear` weight of shape [out, in]."""
        w = self.constant(f"{prefix}.weight", np.ascontiguousarray(weight.T, dtype=np.float32))
        b = self.constant(f"{prefix}.bias", bias.astype(np.float32))
        return self.add(
            "Add", [self.add("MatMul", [x, w], name=f"{prefix}/MatMul"), b], name=f"{prefix}/Add"
        )

    def model(self, doc: str = "") -> onnx.ModelProto:
        graph = helper.make_graph(
            self._nodes,
            self.name,
            self._inputs,
            self._outputs,
            initializer=list(self._initializers.values()),
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name=PRODUCER,
            doc_string=doc,
        )
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model, full_check=True)
        return model


FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64
