"""ModelManager: the model layer's entry point for the server.

Looks models up in the registry, loads them on first use (or eagerly with `load`), and routes
embed and rerank calls through each model's dynamic batcher. Thread-safe.

What a caller can make it spend is bounded: `InputLimits` caps each request (inputs per
request, bytes per text, bytes and pixels per image, images decoded at once), hub downloads
happen only when the manager is not `offline`, and at most `max_loaded` models stay loaded:
the least recently used one that is not pinned is unloaded to make room.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from nachbar.ai.batching import BatchingConfig, DynamicBatcher
from nachbar.ai.errors import InvalidInputError, ModelUnavailableError
from nachbar.ai.image import ImagePreprocessor
from nachbar.ai.inference import (
    CrossEncoderScorer,
    DecoderPool,
    ImageEmbedder,
    LateInteractionScorer,
    TextEmbedder,
)
from nachbar.ai.inference import sigmoid as logistic
from nachbar.ai.limits import InputLimits
from nachbar.ai.locate import resolve_model_dir
from nachbar.ai.observe import NO_OBSERVER, ModelObserver
from nachbar.ai.onnx_model import OnnxModel, SessionOptions, available_cpus
from nachbar.ai.registry import (
    Kind,
    Modality,
    ModelSpec,
    Role,
    all_specs,
    embedding_spec,
    get_spec,
    reranker_spec,
)
from nachbar.ai.text import TextTokenizer, Truncation

FloatArray = npt.NDArray[np.float32]
DEFAULT_BATCHING = BatchingConfig()
DEFAULT_SESSION_OPTIONS = SessionOptions()
DEFAULT_INPUT_LIMITS = InputLimits()
#: Images decoded before they are queued for the model, while the next ones are decoded.
IMAGE_CHUNK = 8
_IMAGE_TYPES = (bytes, bytearray, memoryview)


@dataclass(frozen=True)
class ModelStatus:
    spec: ModelSpec
    # Every file is on disk (model dir, hub cache or local dir): loading needs no download.
    available: bool
    loaded: bool


@dataclass
class _Loaded:
    spec: ModelSpec
    directory: Path
    engine: TextEmbedder | ImageEmbedder | CrossEncoderScorer | LateInteractionScorer
    batcher: DynamicBatcher[Any]
    # Calls running on it; an unloaded model is closed when the last one is done.
    users: int = 0
    unloaded: bool = False


class ModelManager:
    def __init__(
        self,
        model_dir: Path,
        *,
        offline: bool = True,
        local_dirs: Mapping[str, Path] | None = None,
        batching: BatchingConfig = DEFAULT_BATCHING,
        limits: InputLimits = DEFAULT_INPUT_LIMITS,
        session_options: SessionOptions = DEFAULT_SESSION_OPTIONS,
        max_loaded: int = 0,
        pinned: Sequence[str] = (),
        observer: ModelObserver = NO_OBSERVER,
    ) -> None:
        """`model_dir` holds built models (`built/`) and the hub cache (`hub/`); `offline`
        forbids hub downloads; `local_dirs` maps model names (or hub repo ids) to directories
        laid out like the hub repository. At most `max_loaded` models (0: any number) stay
        loaded; `pinned` ones are never unloaded to make room. `observer` hears of loads,
        batches and the steps of each request."""
        self.model_dir = Path(model_dir)
        self.offline = offline
        self.local_dirs = {name: Path(path) for name, path in (local_dirs or {}).items()}
        self.batching = batching
        self.limits = limits
        self.session_options = session_options
        self.observer = observer
        self.pinned = frozenset(get_spec(name).name for name in pinned)
        if max_loaded < 0:
            raise ValueError(f"max_loaded must be 0 (no limit) or more, got {max_loaded}")
        if max_loaded and max_loaded < len(self.pinned):
            raise ValueError(
                f"{len(self.pinned)} models are pinned ({', '.join(sorted(self.pinned))}), more "
                f"than the {max_loaded} that may be loaded"
            )
        self.max_loaded = max_loaded
        self._decoders = DecoderPool(limits.image_decoders or available_cpus())
        self._lock = threading.Lock()
        self._load_locks: dict[str, threading.Lock] = {}
        # Least recently used first.
        self._loaded: OrderedDict[str, _Loaded] = OrderedDict()
        self._loading = 0
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
        with self._use(spec):
            pass
        return spec

    def close(self) -> None:
        """Stop every batcher and drop every session; later calls raise ModelUnavailableError."""
        with self._lock:
            self._closed = True
            loaded = list(self._loaded.values())
            self._loaded.clear()
        for model in loaded:
            model.batcher.close()
        self._decoders.close()

    def __enter__(self) -> ModelManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _use(self, spec: ModelSpec) -> Iterator[_Loaded]:
        """The loaded model, kept open (even if unloaded meanwhile) until the block ends."""
        model = self._get(spec)
        try:
            yield model
        finally:
            with self._lock:
                model.users -= 1
                close = model.unloaded and model.users == 0
            if close:
                model.batcher.close()

    def _get(self, spec: ModelSpec) -> _Loaded:
        """The loaded model, loading it first if needed, with its user count raised."""
        with self._lock:
            self._check_open()
            model = self._loaded.get(spec.name)
            if model is not None:
                self._loaded.move_to_end(spec.name)
                model.users += 1
                return model
            load_lock = self._load_locks.setdefault(spec.name, threading.Lock())
        # One lock per model: loading a large model does not hold up calls to others.
        with load_lock:
            with self._lock:
                self._check_open()
                model = self._loaded.get(spec.name)
                if model is not None:
                    self._loaded.move_to_end(spec.name)
                    model.users += 1
                    return model
                self._make_room(spec, evict=False)
            # Files first (downloading them if allowed), so that a model that cannot be
            # loaded unloads no other.
            directory = resolve_model_dir(
                spec, self.model_dir, offline=self.offline, local_dirs=self.local_dirs
            )
            with self._lock:
                self._check_open()
                evicted = self._make_room(spec, evict=True)
                self._loading += 1
            self._close_unused(evicted)
            started = time.perf_counter()
            try:
                model = self._load(spec, directory)
            finally:
                with self._lock:
                    self._loading -= 1
            self.observer.model_loaded(spec.name, time.perf_counter() - started)
            with self._lock:
                if self._closed:
                    model.batcher.close()
                    raise self._closed_error()
                self._loaded[spec.name] = model
                model.users += 1
            return model

    def _make_room(self, spec: ModelSpec, *, evict: bool) -> list[_Loaded]:
        """Unload least recently used, unpinned models until `spec` fits (with `evict`; else
        only check that it can fit); under self._lock."""
        if not self.max_loaded:
            return []
        evicted: list[_Loaded] = []
        while len(self._loaded) + self._loading >= self.max_loaded:
            victim = next((name for name in self._loaded if name not in self.pinned), None)
            if victim is not None and not evict:
                return []
            if victim is None:
                raise ModelUnavailableError(
                    f"Model {spec.name!r} cannot be loaded: this server keeps at most "
                    f"{self.max_loaded} models loaded and every slot is taken by a model it "
                    "keeps loaded or is loading. Use one of the loaded models (`nachbar models "
                    "list`), or ask the operator to raise --max-loaded-models."
                )
            model = self._loaded.pop(victim)
            model.unloaded = True
            evicted.append(model)
        return evicted

    def _close_unused(self, evicted: Sequence[_Loaded]) -> None:
        for model in evicted:
            with self._lock:
                idle = model.users == 0
            if idle:  # otherwise its last user closes it
                model.batcher.close()

    def _check_open(self) -> None:
        if self._closed:
            raise self._closed_error()

    @staticmethod
    def _closed_error() -> ModelUnavailableError:
        return ModelUnavailableError("The model manager is closed (server shutting down).")

    def _load(self, spec: ModelSpec, directory: Path) -> _Loaded:
        files = spec.files
        model = OnnxModel(
            directory / files.model,
            model_name=spec.name,
            output=spec.output,
            options=self._session_options(),
        )
        engine: TextEmbedder | ImageEmbedder | CrossEncoderScorer | LateInteractionScorer
        if spec.modality is Modality.TEXT:
            assert files.tokenizer is not None  # the registry guarantees it
            tokenizer = TextTokenizer(
                directory / files.tokenizer,
                model_name=spec.name,
                max_tokens=spec.max_tokens,
                config_json=directory / files.config if files.config else None,
                max_text_bytes=self.limits.max_text_bytes,
                pair_tokens=spec.rerank_tokens or None,
            )
            if spec.kind is Kind.CROSS_ENCODER:
                engine = CrossEncoderScorer(spec, model, tokenizer)
            elif spec.kind is Kind.LATE_INTERACTION:
                engine = LateInteractionScorer(spec, model, tokenizer)
            else:
                engine = TextEmbedder(spec, model, tokenizer)
        else:
            assert files.preprocessor is not None  # the registry guarantees it
            preprocessor = _load_preprocessor(spec, directory / files.preprocessor)
            engine = ImageEmbedder(
                spec,
                model,
                preprocessor,
                self.limits.image,
                decoders=self._decoders,
                decode=self.limits.image_decode,
            )
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
        role: Role | str | None = None,
    ) -> FloatArray:
        """Embed texts (str) or encoded images (bytes): float32 [len(inputs), dimension].

        `role` says what the texts are (Role.QUERY for search queries, Role.DOCUMENT for what
        is indexed); models trained with a prompt per role (BGE's query instruction, e5's
        "query: "/"passage: ") get it put before each text. None: texts as they are.
        """
        spec = embedding_spec(name)
        policy = _policy(truncation)
        text_role = _role(role)
        if len(inputs) == 0:
            raise InvalidInputError("No inputs to embed; send at least one text or image.")
        self._check_count(len(inputs), "inputs to embed")
        _check_modality(spec, inputs)
        attributes: dict[str, str | int] = {
            "nachbar.model": spec.name,
            "nachbar.inputs": len(inputs),
        }
        with self._use(spec) as loaded:
            engine = loaded.engine
            if isinstance(engine, TextEmbedder):
                with self.observer.stage("nachbar.ai.tokenize", attributes):
                    items: list[Any] = engine.prepare([str(x) for x in inputs], policy, text_role)
            elif isinstance(engine, ImageEmbedder):
                # _check_modality made sure every input is binary.
                images = [bytes(x) for x in inputs if not isinstance(x, str)]
                return self._embed_images(engine, loaded.batcher, images, attributes)
            else:  # unreachable: kind was checked above
                raise InvalidInputError(f"Model {spec.name!r} does not embed.")
            with self.observer.stage("nachbar.ai.inference", attributes):
                return loaded.batcher.submit(items)

    def _embed_images(
        self,
        engine: ImageEmbedder,
        batcher: DynamicBatcher[Any],
        images: Sequence[bytes],
        attributes: dict[str, str | int],
    ) -> FloatArray:
        """Decode the images in chunks, each queued for the model as soon as it is ready, so
        the model runs on one chunk while the decoders work on the next."""
        chunk = max(IMAGE_CHUNK, self._decoders.threads)
        pending: list[Future[FloatArray]] = []
        for start in range(0, len(images), chunk):
            with self.observer.stage("nachbar.ai.decode_images", attributes):
                items = engine.prepare(images[start : start + chunk], first_index=start)
            pending.append(batcher.enqueue(items))
        with self.observer.stage("nachbar.ai.inference", attributes):
            rows = [future.result() for future in pending]
        return rows[0] if len(rows) == 1 else np.concatenate(rows)

    def rerank(
        self,
        name: str,
        query: str,
        documents: Sequence[str],
        *,
        truncation: Truncation | str = Truncation.ERROR,
        sigmoid: bool = False,
    ) -> FloatArray:
        """Relevance of each document to `query`, in the documents' order, by a reranker: a
        cross-encoder (raw logits; `sigmoid=True` maps them to (0, 1)) or a late-interaction
        model (MaxSim: the sum over query tokens of their best cosine similarity).

        Documents longer than the model's reranking budget (`rerank_tokens`) are cut to it;
        `truncation` applies to the query.
        """
        spec = reranker_spec(name)
        policy = _policy(truncation)
        if sigmoid and spec.kind is Kind.LATE_INTERACTION:
            raise InvalidInputError(
                f"Model {spec.name!r} scores by MaxSim, a sum of cosine similarities, not a "
                "logit; sigmoid applies to cross-encoders only. Drop sigmoid for this model."
            )
        if len(documents) == 0:
            raise InvalidInputError("No documents to rerank; send at least one.")
        self._check_count(len(documents), "documents to rerank")
        attributes: dict[str, str | int] = {
            "nachbar.model": spec.name,
            "nachbar.inputs": len(documents),
        }
        with self._use(spec) as loaded, self.observer.stage("nachbar.ai.rerank", attributes):
            engine = loaded.engine
            # Both scorers take (query, documents) and give one score per document.
            assert isinstance(engine, CrossEncoderScorer | LateInteractionScorer)
            with self.observer.stage("nachbar.ai.tokenize", attributes):
                items: list[Any] = engine.prepare(query, documents, policy)
            with self.observer.stage("nachbar.ai.inference", attributes):
                scores = loaded.batcher.submit(items)[:, 0]
        return logistic(scores) if sigmoid else scores

    def _check_count(self, count: int, what: str) -> None:
        if count > self.limits.max_inputs:
            raise InvalidInputError(
                f"{count} {what} in one request, over this server's limit of "
                f"{self.limits.max_inputs} (--max-inputs-per-request); send them in several "
                "requests (for reranking within a search: ask for fewer candidates)."
            )


def _policy(truncation: Truncation | str) -> Truncation:
    try:
        return Truncation(truncation)
    except ValueError:
        raise InvalidInputError(
            f"Unknown truncation policy {truncation!r}; use 'error' or 'truncate'."
        ) from None


def _role(role: Role | str | None) -> Role | None:
    if role is None or isinstance(role, Role):
        return role
    try:
        return Role(role)
    except ValueError:
        raise InvalidInputError(
            f"Unknown text role {role!r}; use 'query' or 'document' (or none)."
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
        # An OSError's text names the path, so it goes to the server log only.
        reason = "it cannot be read" if isinstance(error, OSError) else str(error)
        raise ModelUnavailableError(
            f"The preprocessing config of model {spec.name!r} cannot be used: {reason}. Fetch "
            "or build the model again.",
            detail=f"{path}: {error}",
        ) from error
    expected = (spec.image_size, spec.image_size)
    if preprocessor.output_size != expected:
        raise ModelUnavailableError(
            f"The preprocessing config of model {spec.name!r} produces "
            f"{preprocessor.output_size[0]}x{preprocessor.output_size[1]} images, but the "
            f"model takes {expected[0]}x{expected[1]}. Fetch or build the model again.",
            detail=str(path),
        )
    return preprocessor
