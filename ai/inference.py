"""Inference: what turns prepared inputs into rows of numbers, one class per kind of model:
text and image embedders (vectors) and the cross-encoder scorer (relevance scores).

Each splits its work in two so the batcher can merge requests: `prepare` validates and turns
one request's inputs into items (tokens, pixel arrays) in the caller's thread, and `run` turns
any list of items, possibly from several requests, into output rows with one ONNX call.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from nachbar.ai.errors import ModelUnavailableError
from nachbar.ai.image import ImagePreprocessor, decode_image
from nachbar.ai.limits import ImageLimits
from nachbar.ai.onnx_model import OnnxModel, available_cpus
from nachbar.ai.registry import ModelSpec, Pooling
from nachbar.ai.text import TextTokenizer, TokenizedText, Truncation

FloatArray = npt.NDArray[np.float32]
ItemT = TypeVar("ItemT")
ItemT_contra = TypeVar("ItemT_contra", contravariant=True)

_TEXT_INPUTS = frozenset({"input_ids", "attention_mask", "token_type_ids"})


class Engine(Protocol[ItemT_contra]):
    """What the batcher needs: rows for items, and a length to bucket items by."""

    def run(self, items: Sequence[ItemT_contra]) -> FloatArray: ...

    def length(self, item: ItemT_contra) -> int: ...


def mean_pool(hidden: FloatArray, attention_mask: npt.NDArray[np.int64]) -> FloatArray:
    """Average the token states of real tokens; padded positions (mask 0) do not count."""
    mask = attention_mask[:, :, None].astype(np.float32)
    counts = np.maximum(mask.sum(axis=1), np.float32(1e-9))
    pooled: FloatArray = (hidden * mask).sum(axis=1) / counts
    return pooled


def l2_normalize(vectors: FloatArray) -> FloatArray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    normalized: FloatArray = vectors / np.maximum(norms, np.float32(1e-12))
    return normalized


def sigmoid(logits: FloatArray) -> FloatArray:
    # exp of a clipped value cannot overflow float32.
    clipped = np.clip(logits, -80.0, 80.0).astype(np.float32)
    result: FloatArray = np.float32(1.0) / (np.float32(1.0) + np.exp(-clipped))
    return result


def _check_rows(spec: ModelSpec, model: OnnxModel, vectors: FloatArray) -> FloatArray:
    if vectors.shape[1] != spec.dimension:
        raise ModelUnavailableError(
            f"Model {spec.name!r} produced {vectors.shape[1]}-d vectors but is registered as "
            f"{spec.dimension}-d: the file is not the registered model. Fetch or build it again.",
            detail=str(model.path),
        )
    return vectors


class TextEmbedder:
    def __init__(self, spec: ModelSpec, model: OnnxModel, tokenizer: TextTokenizer) -> None:
        model.require_inputs(_TEXT_INPUTS)
        if "input_ids" not in model.input_names:
            raise ModelUnavailableError(f"Model {spec.name!r} has no input_ids input.")
        self.spec, self.model, self.tokenizer = spec, model, tokenizer

    def prepare(self, texts: Sequence[str], truncation: Truncation) -> list[TokenizedText]:
        return self.tokenizer.encode(texts, truncation)

    def length(self, item: TokenizedText) -> int:
        return item.length

    def run(self, items: Sequence[TokenizedText]) -> FloatArray:
        batch = self.tokenizer.pad(items)
        output = self.model.run(batch.feeds()).astype(np.float32, copy=False)
        if self.spec.pooling is Pooling.MEAN:
            vectors = mean_pool(output, batch.attention_mask)
        elif self.spec.pooling is Pooling.CLS:
            vectors = output[:, 0, :]
        else:
            vectors = output.reshape(len(items), -1)
        vectors = _check_rows(self.spec, self.model, vectors)
        return l2_normalize(vectors) if self.spec.normalize else vectors


class ImageEmbedder:
    def __init__(
        self,
        spec: ModelSpec,
        model: OnnxModel,
        preprocessor: ImagePreprocessor,
        limits: ImageLimits,
        *,
        decode_slots: threading.BoundedSemaphore | None = None,
    ) -> None:
        """`decode_slots` bounds how many images are decoded at once (shared between models):
        a decoded image is the largest thing a request makes, so this bounds their sum."""
        if len(model.input_names) != 1:
            raise ModelUnavailableError(
                f"Image model {spec.name!r} must take one pixel input, it takes "
                f"{sorted(model.input_names)}."
            )
        (self._input_name,) = model.input_names
        self.spec, self.model, self.preprocessor, self.limits = spec, model, preprocessor, limits
        self._decode_slots = decode_slots or threading.BoundedSemaphore(available_cpus())

    def prepare(self, images: Sequence[bytes], first_index: int = 0) -> list[FloatArray]:
        return [
            self._prepare_one(data, f"Input {first_index + i}") for i, data in enumerate(images)
        ]

    def _prepare_one(self, data: bytes, what: str) -> FloatArray:
        with self._decode_slots:
            return self.preprocessor(decode_image(data, self.limits, what=what))

    def length(self, item: FloatArray) -> int:
        return 0  # every image has the model's input size

    def run(self, items: Sequence[FloatArray]) -> FloatArray:
        output = self.model.run({self._input_name: np.stack(items)})
        # Graphs output [batch, dim] or, for conv nets without their head, [batch, dim, 1, 1].
        vectors = _check_rows(
            self.spec, self.model, output.reshape(len(items), -1).astype(np.float32, copy=False)
        )
        return l2_normalize(vectors) if self.spec.normalize else vectors


class CrossEncoderScorer:
    def __init__(self, spec: ModelSpec, model: OnnxModel, tokenizer: TextTokenizer) -> None:
        model.require_inputs(_TEXT_INPUTS)
        self.spec, self.model, self.tokenizer = spec, model, tokenizer

    def prepare(
        self, query: str, documents: Sequence[str], truncation: Truncation
    ) -> list[TokenizedText]:
        return self.tokenizer.encode_pairs(query, documents, truncation)

    def length(self, item: TokenizedText) -> int:
        return item.length

    def run(self, items: Sequence[TokenizedText]) -> FloatArray:
        """One raw logit per pair, as a [n, 1] column (rows, like the embedders)."""
        batch = self.tokenizer.pad(items)
        logits: npt.NDArray[Any] = self.model.run(batch.feeds())
        logits = logits.reshape(len(items), -1)
        if logits.shape[1] != 1:
            raise ModelUnavailableError(
                f"Cross-encoder {self.spec.name!r} outputs {logits.shape[1]} logits per pair; "
                "nachbar reranks with single-logit relevance models only."
            )
        return logits.astype(np.float32, copy=False)
