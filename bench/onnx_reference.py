"""The references the ai benchmarks compare with: the same model files run directly with
onnxruntime and tokenizers, no nachbar code on the inference path, same session options.

Also where the benchmarks get their inputs: STS-B sentences and foolbox's ImageNet photos.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from benchlib import BenchSetupError, log
from tokenizers import Tokenizer

from nachbar.ai import defaults
from nachbar.ai.onnx_model import SessionOptions

NACHBAR_SESSION = SessionOptions()  # settings only: inference below calls onnxruntime directly

FloatArray = npt.NDArray[np.float32]

TEXT_MODEL = defaults.MINILM
TEXT_MODEL_INT8 = defaults.MINILM_INT8
CROSS_ENCODER = defaults.CROSS_ENCODER
CROSS_ENCODER_INT8 = defaults.CROSS_ENCODER_INT8
IMAGE_MODELS = (defaults.EFFICIENTNET, defaults.CONSE)
# Token limits as registered in nachbar.ai.registry.
MAX_TOKENS = {TEXT_MODEL: 256, TEXT_MODEL_INT8: 256, CROSS_ENCODER: 512, CROSS_ENCODER_INT8: 512}


def cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def built_dir(model_dir: Path, name: str) -> Path:
    return defaults.built_dir(model_dir, name)


def ensure_built(model_dir: Path, names: Sequence[str]) -> None:
    """Build the named offline models into `model_dir`, or keep them when their manifests
    verify (the builder checks checksums and versions, so a stale build is redone)."""
    try:
        from nachbar.ai.build.builder import build_all
    except ImportError as error:
        raise BenchSetupError(
            f"nachbar.ai.build.builder cannot be imported to build {list(names)} ({error})"
        ) from None
    log(f"checking offline models in {model_dir}: {', '.join(names)}")
    try:
        built = build_all(model_dir, only=list(names))
    except Exception as error:  # the builder reports which models failed and why
        raise BenchSetupError(f"building {list(names)} into {model_dir} failed: {error}") from error
    rebuilt = [model.name for model in built if model.rebuilt]
    if rebuilt:
        log(f"built {', '.join(rebuilt)}")


def make_session(path: Path, threads: int, disabled_optimizers: Sequence[str] | None = None) -> Any:
    """The session options nachbar's runtime uses (nachbar.ai.onnx_model); `disabled_optimizers`
    overrides the graph fusions it turns off."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(
        str(path),
        sess_options=options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(
            NACHBAR_SESSION.disabled_optimizers
            if disabled_optimizers is None
            else disabled_optimizers
        ),
    )


class RawTextModel:
    """tokenizer.json + model.onnx: mean-pooled, normalised embeddings or pair logits."""

    def __init__(self, directory: Path, *, max_tokens: int, threads: int) -> None:
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_tokens)
        pad_token = "[PAD]"
        pad_id = self.tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise BenchSetupError(f"{directory}/tokenizer.json has no {pad_token} token")
        # Pad to the longest input of each batch, as nachbar does.
        self.tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
        self.session = make_session(directory / "model.onnx", threads)
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.output = self.session.get_outputs()[0].name

    def _feeds(self, encodings: Sequence[Any]) -> dict[str, npt.NDArray[np.int64]]:
        feeds = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        return {name: value for name, value in feeds.items() if name in self.inputs}

    def embed(self, texts: Sequence[str]) -> FloatArray:
        encodings = self.tokenizer.encode_batch(list(texts))
        feeds = self._feeds(encodings)
        hidden: FloatArray = self.session.run([self.output], feeds)[0]
        mask = np.array([e.attention_mask for e in encodings], dtype=np.float32)[:, :, None]
        pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        normalized: FloatArray = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        return normalized

    def score(self, pairs: Sequence[tuple[str, str]]) -> FloatArray:
        encodings = self.tokenizer.encode_batch(list(pairs))
        logits: FloatArray = self.session.run([self.output], self._feeds(encodings))[0]
        return logits.reshape(len(pairs))


class RawImageModel:
    """model.onnx fed with the builder's reference preprocessing (nachbar.ai.build.imagenet)."""

    def __init__(self, directory: Path, *, threads: int) -> None:
        self.session = make_session(directory / "model.onnx", threads)
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name

    @staticmethod
    def preprocess(images: Sequence[bytes]) -> FloatArray:
        import io

        from PIL import Image

        from nachbar.ai.build.imagenet import preprocess

        return np.stack([preprocess(Image.open(io.BytesIO(data))) for data in images])

    def run(self, pixels: FloatArray) -> FloatArray:
        output: FloatArray = self.session.run([self.output], {self.input: pixels})[0]
        vectors = output.reshape(pixels.shape[0], -1)
        normalized: FloatArray = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        return normalized

    def embed(self, images: Sequence[bytes]) -> FloatArray:
        return self.run(self.preprocess(images))


def sts_sentences(limit: int | None = None, splits: Sequence[str] = ("train",)) -> list[str]:
    """Distinct STS-B sentences in file order: real, varied English of typical query length."""
    from nachbar.ai.build.stsb import load_split

    seen: dict[str, None] = {}
    for split in splits:
        for pair in load_split(split):  # type: ignore[arg-type]
            seen.setdefault(pair.sentence1.strip())
            seen.setdefault(pair.sentence2.strip())
    sentences = [s for s in seen if s]
    return sentences[:limit] if limit is not None else sentences


def sample_photo_bytes(count: int) -> list[bytes]:
    """foolbox's ImageNet photos (JPEG bytes), repeated to `count`."""
    from nachbar.ai.build.imagenet import sample_photos

    photos = [photo.path.read_bytes() for photo in sample_photos()]
    return [photos[i % len(photos)] for i in range(count)]


@dataclass(frozen=True)
class Photo:
    """One photo of the benchmark's folder: its JPEG bytes, where it came from, its class."""

    data: bytes
    size_class: str
    label: int


# The larger JPEGs made from foolbox's 512x512 photos: (size class, width, height, grain
# sigma, how many). Upscaled photos are smoother than a camera's, so the larger classes get
# sensor-like grain (Gaussian noise) for the fine detail that DCT scaling drops.
LARGER_PHOTOS = (
    ("1.6-2 MP", 1728, 1152, 0.0, 8),
    ("3 MP, grain", 2048, 1536, 6.0, 6),
    ("12 MP, grain", 4000, 3000, 4.0, 2),
)


def photo_folder() -> list[Photo]:
    """foolbox's 20 ImageNet photos (512x512) and larger JPEGs (quality 90) made from them, in
    the proportions of LARGER_PHOTOS: a folder of real photos of mixed sizes."""
    import io

    from PIL import Image

    from nachbar.ai.build.imagenet import sample_photos

    originals = sample_photos()
    folder = [Photo(p.path.read_bytes(), "512x512", p.class_index) for p in originals]
    rng = np.random.default_rng(16)
    index = 0
    for size_class, width, height, grain, count in LARGER_PHOTOS:
        for _ in range(count):
            source = originals[index % len(originals)]
            index += 1
            image = Image.open(source.path).convert("RGB")
            image = image.resize((width, height), Image.Resampling.LANCZOS)
            if grain:
                noisy = np.asarray(image, dtype=np.float32) + rng.normal(
                    0.0, grain, (height, width, 3)
                ).astype(np.float32)
                image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=90)
            folder.append(Photo(buffer.getvalue(), size_class, source.class_index))
    return folder


def min_cosine(a: FloatArray, b: FloatArray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.min(np.sum(a * b, axis=1)))
