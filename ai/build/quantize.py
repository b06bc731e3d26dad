"""int8 variants of built models: dynamic quantization with per-channel int8 weights.

Weights of MatMul nodes are stored as int8 with one scale per output channel; activations are
quantized on the fly, per tensor and per batch, so no calibration data is needed.
`quant_pre_process` first runs shape inference and onnxruntime's basic graph optimizations.

Measured with scripts/dev/measure_int8.py (2 CPU cores):

- all-MiniLM-L6-v2: 90 MB -> 59 MB (the word-embedding table stays fp32), 1.5-1.7x faster
  with onnxruntime's default graph fusions and 2.0-2.2x with its SkipLayerNorm fusion off, as
  nachbar's runtime runs it (scripts/dev/measure_fusions.py; the int8 cross-encoder gains
  alike), cosine to fp32 mean 0.994 and lowest 0.990 on ordinary sentences. Inputs of one or two
  words fare worse ("thanks": 0.94-0.95) because one outlier-heavy activation tensor then sets
  the whole quantization range. That range is taken over the whole batch, so an int8 vector
  also shifts slightly with its batch mates. Keeping the feed-forward MatMuls in fp32 lifted
  the worst case to 0.99 in a trial but removed most of the speed-up, so all MatMuls are
  quantized.
- Variants of the MiniLM build, timed against fp32 batch by batch by bench/int8_bench.py
  (bench/RESULTS.md, 2026-12-07): per-tensor weights, Gather or the attention products
  quantized too, onnxruntime's transformer optimizer first (`fuse_transformer`: it fuses only
  the GELUs of this graph), static QDQ and one thread were none consistently faster than this
  build (x2.7-2.9 of fp32 by CPU time, x2.8-3.7 wall, -0.25 STS-B points); static QDQ lost
  1.5 points.
- EfficientNet-Lite0 (and so ConSE): Conv layers become ConvInteger, which onnxruntime runs
  about 10x slower than fp32 on CPU, and the pooled features drift (cosine 0.90 on average,
  0.77 at worst). An int8 image variant does not pay, so none is built.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["DEFAULT_OP_TYPES", "quantize_int8"]

log = logging.getLogger(__name__)

#: Transformers spend nearly all their time in MatMul. Quantizing the embedding Gather as well
#: would shrink MiniLM to 23 MB but lowered its worst-case cosine further (0.986 -> 0.982).
DEFAULT_OP_TYPES: tuple[str, ...] = ("MatMul",)


def quantize_int8(
    source: Path,
    destination: Path,
    *,
    op_types: Sequence[str] = DEFAULT_OP_TYPES,
    preprocess: bool = True,
    per_channel: bool = True,
    weights_only: bool = True,
) -> None:
    """Write an int8-weight copy of the fp32 ONNX model `source` to `destination`.

    `weights_only`: only MatMuls by a weight matrix are quantized, not the attention products
    of two activations (query x key, probabilities x value)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="nachbar-quantize-") as scratch, _quiet_root_logger():
        prepared = source
        if preprocess:
            prepared = Path(scratch) / "prepared.onnx"
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_dynamic(
            str(prepared),
            str(destination),
            op_types_to_quantize=list(op_types),
            per_channel=per_channel,
            reduce_range=False,
            weight_type=QuantType.QInt8,
            # Contrib ops (a fused Attention) have no ONNX shape inference: their outputs
            # are float.
            extra_options={
                "DefaultTensorType": onnx.TensorProto.FLOAT,
                "MatMulConstBOnly": weights_only,
            },
        )
    log.debug("quantized %s -> %s", source, destination)


def fuse_transformer(
    source: Path, destination: Path, *, heads: int, hidden: int, skip_layer_norm: bool = False
) -> None:
    """Write `source`, a BERT-like fp32 encoder, with onnxruntime's transformer optimizer's
    fusions (Attention, embedding LayerNorm, GELU, bias adds; SkipLayerNormalization only
    with `skip_layer_norm`) to `destination`."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_skip_layer_norm = skip_layer_norm
    with _quiet_root_logger():
        model = optimize_model(
            str(source),
            model_type="bert",
            num_heads=heads,
            hidden_size=hidden,
            optimization_options=options,
            opt_level=0,
            use_gpu=False,
        )
        model.save_model_to_file(str(destination))


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime's quantizer logs one INFO line per tensor on the root logger: mute those."""
    previous = logging.root.manager.disable
    logging.disable(max(previous, logging.INFO))
    try:
        yield
    finally:
        logging.disable(previous)
