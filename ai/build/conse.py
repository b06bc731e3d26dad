"""ConSE: images embedded into the all-MiniLM-L6-v2 text space through an ImageNet classifier.

Convex combination of semantic embeddings (Norouzi et al., "Zero-Shot Learning by Convex
Combination of Semantic Embeddings", ICLR 2014): an image's vector is the mean of the text
vectors of its T most probable classes, weighted by their renormalized probabilities. Here the
classifier is EfficientNet-Lite0 and a class's text vector is the MiniLM embedding of prompts
such as "a photo of the small {class}." averaged over templates. Text queries embedded with
all-MiniLM-L6-v2 can then retrieve images, and images can retrieve text, with no CLIP weights.

One ONNX graph does it all:

    pixel_values [batch, 3, 224, 224]
      -> EfficientNet-Lite0 logits -> Softmax -> TopK(T) -> weights / sum(weights)
      -> sum_t weight_t * class_embeddings[index_t] -> L2 normalize
      -> image_embeds [batch, 384]

Defaults were picked on foolbox's 20 ImageNet photos (tests/ai/build/test_image_models.py):
T = 10, the paper's choice, and open_clip's 7 "simple" templates, the ensemble that CLIP's
authors selected. Text-to-image recall@1 ("a photo of a <class>") was 1.0 for every T from 1
to 50 and every template set tried (1, 7, or all 80 OpenAI templates). The harder check,
ranking all 1000 class prompts for each photo, was best with the 7 templates and T >= 3
(top-1 0.90, top-5 0.95); 80 templates did no better and would make the build 10x longer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx

from nachbar.ai.build.efficientnet_onnx import (
    IMAGE_SIZE,
    NUM_CLASSES,
    add_efficientnet_lite0,
)
from nachbar.ai.build.onnx_graph import FLOAT, GraphBuilder
from nachbar.ai.build.sentence_embedder import SentenceEmbedder, l2_normalize

__all__ = [
    "DEFAULT_TEMPLATE_SET",
    "DEFAULT_TOP_K",
    "build_conse",
    "class_text_embeddings",
]

DEFAULT_TOP_K = 10
#: Name of the open_clip template tuple used for the class prompts.
DEFAULT_TEMPLATE_SET = "SIMPLE_IMAGENET_TEMPLATES"


#: Prompts for classes with a superclass, so generic queries ("a photo of a dog") find them.
SUPERCLASS_TEMPLATES = ("a photo of a {}, a type of {}.", "a photo of a {1}.")


def class_text_embeddings(
    embedder: SentenceEmbedder,
    class_names: Sequence[str],
    templates: Sequence[str],
    superclasses: Mapping[int, str] | None = None,
) -> npt.NDArray[np.float32]:
    """[len(class_names), dim] unit vectors: per class, the normalized mean over its prompts.

    Each template holds one `{}` for the class name, e.g. "a photo of the small {}.". A class
    with a superclass (index -> generic name) also gets the SUPERCLASS_TEMPLATES prompts.
    """
    if not templates:
        raise ValueError("class_text_embeddings needs at least one prompt template")
    total: npt.NDArray[np.float32] | None = None
    for template in templates:
        vectors = embedder.embed([template.format(name) for name in class_names], batch_size=256)
        total = vectors if total is None else total + vectors
    assert total is not None
    counts = np.full((len(class_names), 1), len(templates), dtype=np.float32)
    if superclasses:
        indexes = sorted(i for i in superclasses if 0 <= i < len(class_names))
        for template in SUPERCLASS_TEMPLATES:
            prompts = [template.format(class_names[i], superclasses[i]) for i in indexes]
            total[indexes] += embedder.embed(prompts, batch_size=256)
            counts[indexes] += 1
    return l2_normalize((total / counts).astype(np.float32))


def build_conse(
    efficientnet_state: Mapping[str, npt.NDArray[Any]],
    class_embeddings: npt.NDArray[np.float32],
    *,
    top_k: int = DEFAULT_TOP_K,
) -> onnx.ModelProto:
    """The ConSE image encoder: `pixel_values` -> `image_embeds` [batch, dim] in the text space."""
    if class_embeddings.ndim != 2 or class_embeddings.shape[0] != NUM_CLASSES:
        raise ValueError(
            f"class_embeddings must be [{NUM_CLASSES}, dim], got {class_embeddings.shape}"
        )
    if not 1 <= top_k <= NUM_CLASSES:
        raise ValueError(f"top_k must be between 1 and {NUM_CLASSES}, got {top_k}")
    dim = int(class_embeddings.shape[1])

    g = GraphBuilder("imagenet_conse")
    pixels = g.input("pixel_values", FLOAT, ["batch", 3, IMAGE_SIZE, IMAGE_SIZE])
    _, logits = add_efficientnet_lite0(g, efficientnet_state, pixels)
    probs = g.add("Softmax", [logits], axis=-1, name="conse/probs")
    top_probs, top_classes = g.add_multi(
        "TopK", [probs, g.ints([top_k])], 2, axis=-1, largest=1, sorted=1, name="conse/topk"
    )
    mass = g.add("ReduceSum", [top_probs, g.ints([-1])], keepdims=1, name="conse/mass")
    weights = g.add("Div", [top_probs, mass], name="conse/weights")  # [batch, T]
    table = g.constant("conse.class_embeddings", class_embeddings.astype(np.float32))
    vectors = g.add("Gather", [table, top_classes], axis=0, name="conse/vectors")  # [batch, T, dim]
    weighted = g.add(
        "Mul",
        [vectors, g.add("Unsqueeze", [weights, g.ints([-1])], name="conse/w3")],
        name="conse/weighted",
    )
    mixed = g.add("ReduceSum", [weighted, g.ints([1])], keepdims=0, name="conse/mixed")
    embeds = g.add("LpNormalization", [mixed], axis=-1, p=2, name="conse/normalized")
    g.output(embeds, "image_embeds", FLOAT, ["batch", dim])
    return g.model(f"ConSE over EfficientNet-Lite0 into a {dim}-d text space (T={top_k})")
