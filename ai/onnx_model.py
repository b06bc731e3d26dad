"""One onnxruntime session per model, fed only the inputs its graph declares."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from nachbar.ai.errors import ModelUnavailableError

# ONNX element types this runtime can feed, by their onnxruntime names.
_NUMPY_TYPES: dict[str, type[np.generic]] = {
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}


@dataclass(frozen=True)
class SessionOptions:
    """onnxruntime threading. `intra_op_threads` 0: one thread per CPU this process may use
    (the model manager sets it to CPUs / batch workers when it batches)."""

    intra_op_threads: int = 0
    # Models here are single chains of ops, so parallel branches gain nothing.
    inter_op_threads: int = 1
    # Idle intra-op threads busy-wait for the next parallel op by default; that CPU time is
    # taken from the Python threads (tokenization, gRPC, the batcher) and other runs.
    allow_spinning: bool = False
    # onnxruntime's fused SkipLayerNormalization kernel made the int8 MiniLM models 20-30%
    # slower on the 2-core AVX-512 machine the benchmarks ran on (fp32 unchanged, outputs
    # equal): without it the int8 bi-encoder ran 2.1x fp32 instead of 1.6x.
    disabled_optimizers: tuple[str, ...] = ("SkipLayerNormFusion",)


class OnnxModel:
    """An inference session plus the graph's input/output contract.

    `run` is safe to call from several threads at once (onnxruntime sessions are).
    """

    def __init__(
        self,
        path: Path,
        *,
        model_name: str,
        output: str,
        options: SessionOptions = SessionOptions(),
    ) -> None:
        self.path = path
        self.model_name = model_name
        self.output = output
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session_options.intra_op_num_threads = options.intra_op_threads or available_cpus()
        session_options.inter_op_num_threads = options.inter_op_threads
        session_options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if options.allow_spinning else "0"
        )
        try:
            self._session: Any = ort.InferenceSession(
                str(path),
                sess_options=session_options,
                providers=["CPUExecutionProvider"],
                disabled_optimizers=list(options.disabled_optimizers),
            )
        except Exception as error:  # onnxruntime raises its own untyped exception classes
            raise ModelUnavailableError(
                f"The ONNX file of model {model_name!r} cannot be loaded. Delete the model's "
                "files and fetch or build them again.",
                detail=f"{path}: {error}",
            ) from error
        self.input_types: dict[str, type[np.generic]] = {}
        for graph_input in self._session.get_inputs():
            numpy_type = _NUMPY_TYPES.get(graph_input.type)
            if numpy_type is None:
                raise ModelUnavailableError(
                    f"Model {model_name!r} takes input {graph_input.name!r} of type "
                    f"{graph_input.type}, which nachbar cannot feed."
                )
            self.input_types[graph_input.name] = numpy_type
        outputs = [o.name for o in self._session.get_outputs()]
        if output not in outputs:
            raise ModelUnavailableError(
                f"The ONNX file of model {model_name!r} has outputs {outputs}, not {output!r}: "
                "the file is not the registered model. Fetch or build it again.",
                detail=str(path),
            )

    @property
    def input_names(self) -> frozenset[str]:
        return frozenset(self.input_types)

    def require_inputs(self, available: frozenset[str]) -> None:
        """Fail at load time if the graph needs an input the caller can never supply."""
        unknown = self.input_names - available
        if unknown:
            raise ModelUnavailableError(
                f"Model {self.model_name!r} needs inputs {sorted(unknown)}, which nachbar does "
                f"not produce (it feeds {sorted(available)}).",
                detail=str(self.path),
            )

    def run(self, feeds: Mapping[str, npt.NDArray[Any]]) -> npt.NDArray[Any]:
        """Run the graph on the declared subset of `feeds`; return the registered output."""
        inputs = {
            name: np.ascontiguousarray(feeds[name], dtype=numpy_type)
            for name, numpy_type in self.input_types.items()
        }
        result: npt.NDArray[Any] = self._session.run([self.output], inputs)[0]
        return result


def available_cpus() -> int:
    # Honours CPU affinity (containers, taskset), unlike os.cpu_count().
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)
