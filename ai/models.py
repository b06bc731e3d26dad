"""ModelManager: the model layer's entry point for the server.

Looks models up in the registry, loads them on first use (or eagerly with `load`), and routes
embed and rerank calls through each model's dynamic batcher. Thread-safe.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from nachbar.ai.batching import BatchingConfig, DynamicBatcher
from nachbar.ai.embedder import CrossEncoderScorer, ImageEmbedder, TextEmbedder
from nachbar.ai.embedder import sigmoid as logistic
from nachbar.ai.errors import InvalidInputError, ModelUnavailableError
from nachbar.ai.image import ImageLimits, ImagePreprocessor
from nachbar.ai.locate import resolve_model_dir
from nachbar.ai.observe import NO_OBSERVER, ModelObserver
from nachbar.ai.onnx_model import OnnxModel, SessionOptions, available_cpus
from nachbar.ai.registry import Kind, Modality, ModelSpec, all_specs, get_spec
from nachbar.ai.text import TextTokenizer, Truncation

FloatArray = npt.NDArray[np.float32]
DEFAULT_BATCHING = BatchingConfig()
DEFAULT_IMAGE_LIMITS = ImageLimits()
DEFAULT_SESSION_OPTIONS = SessionOptions()
_IMAGE_TYPES = (bytes, bytearray, memoryview)


@dataclass(frozen=True)
class ModelStatus:
    spec: ModelSpec
    # Every file is on disk (model dir, hub cache or local dir): loading needs no download.
    available: bool
    loaded: bool


@dataclass(frozen=True)
class _Loaded:
    spec: ModelSpec
    directory: Path
    engine: TextEmbedder | ImageEmbedder | CrossEncoderScorer
    batcher: DynamicBatcher[Any]


class ModelManager:
    def __init__(
        self,
        model_dir: Path,
        *,
        offline: bool = True,
        local_dirs: Mapping[str, Path] | None = None,
        batching: BatchingConfig = DEFAULT_BATCHING,
        image_limits: ImageLimits = DEFAULT_IMAGE_LIMITS,
        session_options: SessionOptions = DEFAULT_SESSION_OPTIONS,
        observer: ModelObserver = NO_OBSERVER,
    ) -> None:
        """`model_dir` holds built models (`built/`) and the hub cache (`hub/`); `offline`
        forbids hub downloads; `local_dirs` maps model names (or hub repo ids) to directories
        laid out like the hub repository; `observer` hears of loads, batches and the steps
        of each request."""
        self.model_dir = Path(model_dir)
        self.offline = offline
        self.local_dirs = {name: Path(path) for name, path in (local_dirs or {}).items()}
        self.batching = batching
        self.image_limits = image_limits
        self.session_options = session_options
        self.observer = observer
        self._lock = threading.Lock()
        self._load_locks: dict[str, threading.Lock] = {}
        self._loaded: dict[str, _Loaded] = {}
        self._closed = False

    # -- registry -------------------------------------------------------------------------------

    def spec(self, name: str) -> ModelSpec:
        """The registered model `name` (case-insensitive); ModelNotFoundError otherwise."""
        return get_spec(name)

    def list_models(self) -> list[ModelStatus]:
        statuses = []
        for spec in all_specs():
            loaded = spec.name in self._loaded
            statuses.append(
                ModelStatus(spec, available=loaded or self.is_available(spec), loaded=loaded)
            )
        return statuses

    def is_available(self, spec: ModelSpec) -> bool:
        """True when every file of `spec` is on disk, so loading it needs no download."""
        try:
            resolve_model_dir(spec, self.model_dir, offline=True, local_dirs=self.local_dirs)
        except ModelUnavailableError:
            return False
        return True

    def is_loaded(self, name: str) -> bool:
        return get_spec(name).name in self._loaded

    def queue_depths(self) -> dict[str, int]:
        """Items waiting in each loaded model's batcher."""
        return {name: model.batcher.queued for name, model in list(self._loaded.items())}

    # -- loading --------------------------------------------------------------------------------

    def load(self, name: str) -> ModelSpec:
        """Load a model now (downloading it first if allowed) instead of on first use."""
        spec = get_spec(name)
        self._get(spec)
        return spec

    def close(self) -> None:
        """Stop every batcher and drop every session; later calls raise ModelUnavailableError."""
        with self._lock:
            self._closed = True
            loaded = list(self._loaded.values())
            self._loaded.clear()
        for model in loaded:
            model.batcher.close()

    def __enter__(self) -> ModelManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _get(self, spec: ModelSpec) -> _Loaded:
        loaded = self._loaded.get(spec.name)
        if loaded is not None:
            return loaded
        with self._lock:
            if self._closed:
                raise ModelUnavailableError("The model manager is closed (server shutting down).")
            load_lock = self._load_locks.setdefault(spec.name, threading.Lock())
        # One lock per model: loading a large model does not hold up calls to others.
        with load_lock:
            loaded = self._loaded.get(spec.name)
            if loaded is not None:
                return loaded
            started = time.perf_counter()
            loaded = self._load(spec)
            self.observer.model_loaded(spec.name, time.perf_counter() - started)
            with self._lock:
                if self._closed:
                    loaded.batcher.close()
                    raise ModelUnavailableError(
                        "The model manager is closed (server shutting down)."
                    )
                self._loaded[spec.name] = loaded
            return loaded

    def _load(self, spec: ModelSpec) -> _Loaded:
        directory = resolve_model_dir(
            spec, self.model_dir, offline=self.offline, local_dirs=self.local_dirs
        )
        files = spec.files
        model = OnnxModel(
            directory / files.model,
            model_name=spec.name,
            output=spec.output,
            options=self._session_options(),
        )
        engine: TextEmbedder | ImageEmbedder | CrossEncoderScorer
        if spec.modality is Modality.TEXT:
            assert files.tokenizer is not None  # the registry guarantees it
            tokenizer = TextTokenizer(
                directory / files.tokenizer,
                model_name=spec.name,
                max_tokens=spec.max_tokens,
                config_json=directory / files.config if files.config else None,
            )
            if spec.kind is Kind.CROSS_ENCODER:
                engine = CrossEncoderScorer(spec, model, tokenizer)
            else:
                engine = TextEmbedder(spec, model, tokenizer)
        else:
            assert files.preprocessor is not None  # the registry guarantees it
            preprocessor = _load_preprocessor(spec, directory / files.preprocessor)
            engine = ImageEmbedder(spec, model, preprocessor, self.image_limits)
        batcher: DynamicBatcher[Any] = DynamicBatcher(
            engine, self.batching, name=spec.name, observer=self.observer
        )
        return _Loaded(spec, directory, engine, batcher)

    def _session_options(self) -> SessionOptions:
        """With batching, each of the batcher's workers runs on its share of the CPUs."""
        options = self.session_options
        if options.intra_op_threads or not self.batching.enabled:
            return options
        threads = max(1, available_cpus() // self.batching.worker_count)
        return dataclasses.replace(options, intra_op_threads=threads)

    # -- inference ------------------------------------------------------------------------------

    def embed(
        self,
        name: str,
        inputs: Sequence[str | bytes],
        truncation: Truncation | str = Truncation.ERROR,
    ) -> FloatArray:
        """Embed texts (str) or encoded images (bytes): float32 [len(inputs), dimension]."""
        spec = get_spec(name)
        policy = _policy(truncation)
        if spec.kind is not Kind.EMBEDDING:
            raise InvalidInputError(
                f"Model {spec.name!r} is a cross-encoder: it scores (query, document) pairs "
                "with rerank and does not embed. Pick an embedding model (`nachbar models list`)."
            )
        if len(inputs) == 0:
            raise InvalidInputError("No inputs to embed; send at least one text or image.")
        _check_modality(spec, inputs)
        loaded = self._get(spec)
        engine = loaded.engine
        attributes: dict[str, str | int] = {
            "nachbar.model": spec.name,
            "nachbar.inputs": len(inputs),
        }
        if isinstance(engine, TextEmbedder):
            with self.observer.stage("nachbar.ai.tokenize", attributes):
                items: list[Any] = engine.prepare([str(x) for x in inputs], policy)
        elif isinstance(engine, ImageEmbedder):
            # _check_modality made sure every input is binary.
            with self.observer.stage("nachbar.ai.decode_images", attributes):
                items = engine.prepare([bytes(x) for x in inputs if not isinstance(x, str)])
        else:  # unreachable: kind was checked above
            raise InvalidInputError(f"Model {spec.name!r} does not embed.")
        with self.observer.stage("nachbar.ai.inference", attributes):
            return loaded.batcher.submit(items)

    def rerank(
        self,
        name: str,
        query: str,
        documents: Sequence[str],
        *,
        truncation: Truncation | str = Truncation.ERROR,
        sigmoid: bool = False,
    ) -> FloatArray:
        """Cross-encoder relevance of each document to `query`, in the documents' order.

        Raw logits by default; `sigmoid=True` maps them to (0, 1).
        """
        spec = get_spec(name)
        policy = _policy(truncation)
        if spec.kind is not Kind.CROSS_ENCODER:
            raise InvalidInputError(
                f"Model {spec.name!r} is an embedding model; reranking needs a cross-encoder "
                "(`nachbar models list` shows them)."
            )
        if len(documents) == 0:
            raise InvalidInputError("No documents to rerank; send at least one.")
        loaded = self._get(spec)
        engine = loaded.engine
        assert isinstance(engine, CrossEncoderScorer)  # follows from the kind
        attributes: dict[str, str | int] = {
            "nachbar.model": spec.name,
            "nachbar.inputs": len(documents),
        }
        with self.observer.stage("nachbar.ai.rerank", attributes):
            with self.observer.stage("nachbar.ai.tokenize", attributes):
                items = engine.prepare(query, documents, policy)
            with self.observer.stage("nachbar.ai.inference", attributes):
                logits = loaded.batcher.submit(items)[:, 0]
        return logistic(logits) if sigmoid else logits


def _policy(truncation: Truncation | str) -> Truncation:
    try:
        return Truncation(truncation)
    except ValueError:
        raise InvalidInputError(
            f"Unknown truncation policy {truncation!r}; use 'error' or 'truncate'."
        ) from None


def _check_modality(spec: ModelSpec, inputs: Sequence[object]) -> None:
    for index, item in enumerate(inputs):
        if spec.modality is Modality.TEXT and not isinstance(item, str):
            sent = "an image" if isinstance(item, _IMAGE_TYPES) else type(item).__name__
            raise InvalidInputError(
                f"Input {index} is {sent}, but model {spec.name!r} embeds text only."
                f"{_other_modality_hint(spec)}"
            )
        if spec.modality is Modality.IMAGE and not isinstance(item, _IMAGE_TYPES):
            sent = "text" if isinstance(item, str) else type(item).__name__
            raise InvalidInputError(
                f"Input {index} is {sent}, but model {spec.name!r} embeds images only."
                f"{_other_modality_hint(spec)}"
            )


def _other_modality_hint(spec: ModelSpec) -> str:
    partners = [
        s.name
        for s in all_specs()
        if s.kind is Kind.EMBEDDING and s.space == spec.space and s.modality is not spec.modality
    ]
    if not partners:
        return ""
    return f" Model(s) {', '.join(partners)} embed the other modality into the same space."


def _load_preprocessor(spec: ModelSpec, path: Path) -> ImagePreprocessor:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        preprocessor = ImagePreprocessor.from_config(config)
    except (OSError, ValueError) as error:  # JSONDecodeError is a ValueError
        raise ModelUnavailableError(
            f"The preprocessing config of model {spec.name!r} at {path} cannot be used: "
            f"{error}. Fetch or build the model again."
        ) from error
    expected = (spec.image_size, spec.image_size)
    if preprocessor.output_size != expected:
        raise ModelUnavailableError(
            f"The preprocessing config of model {spec.name!r} at {path} produces "
            f"{preprocessor.output_size[0]}x{preprocessor.output_size[1]} images, but the "
            f"model takes {expected[0]}x{expected[1]}. Fetch or build the model again."
        )
    return preprocessor
