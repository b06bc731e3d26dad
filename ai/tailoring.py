"""Tailoring a store's frozen vectors to a task: query adapters and learned re-scorers.

Both are trained from examples (a query and the ids of entries that answer it) against the
vectors already stored, in the background, one training at a time per process; both are kept
durably next to the store (`TrainedHome`: nachbar-db in production) and served by name at query
time: an adapter maps the query vector before the search (nachbar.ai.adapters), a re-scorer
reranks the candidates by their stored vectors (nachbar.ai.rescorers).

What is trained is tied to the store it was trained for (the store id, which a store created
again under the same name does not keep), to its embedding space and dimension; using it
elsewhere is refused. Training states other than READY live in this process only: a restart
forgets queued, running and failed trainings (the stored ones stay).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol

import numpy as np

from nachbar.ai import adapters, rescorers
from nachbar.ai.adapters import AdapterSettings, Examples, RankingMetrics, TrainingCancelledError
from nachbar.ai.bindings import Bound
from nachbar.ai.errors import (
    AIError,
    InvalidInputError,
    StaleTrainedError,
    TrainedExistsError,
    TrainedNotFoundError,
    TrainingBusyError,
)
from nachbar.ai.limits import InputLimits
from nachbar.ai.rescorers import Mlp, OnnxRescorer, RescorerSettings
from nachbar.ai.vector_store import FloatArray, MetadataValue

log = logging.getLogger("nachbar.ai.tailoring")

Payload = str | bytes

NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MIN_EXAMPLES = 4
MAX_EXAMPLES = 10_000
MAX_IDS_PER_EXAMPLE = 100
# Distinct ids over all examples: their vectors are held while training.
MAX_TOTAL_IDS = 20_000
MAX_ID_CHARS = 1024
# Store vectors read as negatives and as the corpus of the held-out metrics: the whole store
# up to this many (100,000 x 384 float32 is 154 MB while training).
MAX_CORPUS = 100_000
# Trainings waiting or running in one process.
MAX_QUEUED = 4
MAX_EPOCHS = 1000
# Loaded adapters and re-scorers kept in memory; each is read again after CACHE_SECONDS so a
# drop through another nachbar-ai takes effect.
CACHE_ENTRIES = 32
CACHE_SECONDS = 60.0
# Finished trainings (ready, failed) remembered for GetAdapter/GetRescorer.
FINISHED_JOBS = 256


class Kind(StrEnum):
    ADAPTER = "adapter"
    RESCORER = "rescorer"


class State(StrEnum):
    QUEUED = "queued"
    TRAINING = "training"
    READY = "ready"
    FAILED = "failed"


NO_METRICS = RankingMetrics(0.0, 0.0, 0)


@dataclass(frozen=True)
class TrainExample:
    query: Payload
    relevant_ids: tuple[str, ...]
    irrelevant_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainOptions:
    """Zero values take the defaults of AdapterSettings / RescorerSettings."""

    epochs: int = 0
    learning_rate: float = 0.0
    held_out: float = 0.0
    seed: int = 0
    identity_weight: float = 0.0


@dataclass(frozen=True)
class TrainedInfo:
    store: str
    name: str
    kind: Kind
    state: State
    progress: float = 0.0
    message: str = ""
    before: RankingMetrics = NO_METRICS
    after: RankingMetrics = NO_METRICS
    recommended: bool = False
    train_examples: int = 0
    held_out_examples: int = 0
    epochs: int = 0
    train_seconds: float = 0.0
    dimension: int = 0
    space: str = ""
    corpus_size: int = 0
    weight_bytes: int = 0
    created_at: float = 0.0
    # The id of the store it was trained for.
    store_id: int = 0
    # "cosine" ranks by unit vectors; anything else by raw inner products.
    metric: str = "cosine"


@dataclass(frozen=True)
class Artifact:
    info: TrainedInfo
    arrays: list[FloatArray]


class TrainedHome(Protocol):
    """Where trained models live durably and where the store's vectors are read."""

    def save(self, store: str, artifact: Artifact) -> None:
        """All or nothing."""
        ...

    def load(self, store: str, kind: Kind, name: str) -> Artifact | None: ...

    def infos(self, store: str, kind: Kind) -> list[TrainedInfo]: ...

    def drop(self, store: str, kind: Kind, name: str) -> bool: ...

    def drop_all(self, store: str) -> None:
        """Everything trained for the store (called when the store is dropped)."""
        ...

    def store_metric(self, store: str) -> str: ...

    def vectors(
        self, store: str, ids: Sequence[str], *, expected_store_id: int
    ) -> tuple[list[str], FloatArray, list[str]]:
        """The found ids (request order), their vectors, and the ids not found."""
        ...

    def scan(
        self, store: str, limit: int, *, expected_store_id: int
    ) -> tuple[list[str], FloatArray]:
        """Up to `limit` entries of the store: ids and vectors."""
        ...


class EmbeddingSource(Protocol):
    """What tailoring needs of the pipeline: a store's binding and query embeddings."""

    def bound(self, store: str) -> Bound: ...

    def input_limits(self) -> InputLimits: ...

    def embed_queries(
        self, store: str, bound: Bound, payloads: Sequence[Payload]
    ) -> FloatArray: ...


# -- storage layout ----------------------------------------------------------------------------


def pack(arrays: Sequence[FloatArray], dimension: int) -> tuple[FloatArray, list[list[int]]]:
    """Arrays as rows of `dimension` floats (the last one zero-padded) and their shapes: a
    store of that dimension can then hold them as vectors."""
    flat = np.concatenate([np.asarray(a, np.float32).ravel() for a in arrays])
    rows = -(-len(flat) // dimension)
    padded = np.zeros(rows * dimension, np.float32)
    padded[: len(flat)] = flat
    return padded.reshape(rows, dimension), [list(a.shape) for a in arrays]


def unpack(rows: FloatArray, shapes: Sequence[Sequence[int]]) -> list[FloatArray]:
    flat = np.asarray(rows, np.float32).ravel()
    out: list[FloatArray] = []
    at = 0
    for shape in shapes:
        size = int(np.prod(shape)) if shape else 1
        if at + size > len(flat):
            raise ValueError("stored weights are shorter than their shapes")
        out.append(flat[at : at + size].reshape(shape).copy())
        at += size
    return out


def info_metadata(info: TrainedInfo, shapes: Sequence[Sequence[int]]) -> dict[str, MetadataValue]:
    """The header entry's metadata: everything but the weights."""
    fields = {
        k: v
        for k, v in info.__dict__.items()
        if k not in ("state", "progress", "before", "after", "kind")
    }
    fields["before"] = info.before.__dict__
    fields["after"] = info.after.__dict__
    return {
        "kind": info.kind.value,
        "name": info.name,
        "info": json.dumps(fields, sort_keys=True),
        "shapes": json.dumps([list(s) for s in shapes]),
    }


def info_from_metadata(metadata: dict[str, MetadataValue]) -> tuple[TrainedInfo, list[list[int]]]:
    fields = json.loads(str(metadata["info"]))
    fields["before"] = RankingMetrics(**fields["before"])
    fields["after"] = RankingMetrics(**fields["after"])
    info = TrainedInfo(kind=Kind(str(metadata["kind"])), state=State.READY, progress=1.0, **fields)
    shapes: list[list[int]] = json.loads(str(metadata["shapes"]))
    return info, shapes


# -- the service -------------------------------------------------------------------------------


@dataclass
class _Job:
    info: TrainedInfo
    examples: list[TrainExample]
    options: TrainOptions
    bound: Bound
    example_ids: list[str]
    example_vectors: FloatArray
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class _Loaded:
    info: TrainedInfo
    model: FloatArray | OnnxRescorer
    at: float


class Tailoring:
    """Trains, stores, lists, drops and applies adapters and re-scorers. Thread-safe."""

    def __init__(
        self,
        source: EmbeddingSource,
        home: TrainedHome,
        *,
        max_queued: int = MAX_QUEUED,
        max_corpus: int = MAX_CORPUS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._home = home
        self._max_queued = max_queued
        self._max_corpus = max_corpus
        self._clock = clock
        self._lock = threading.Lock()
        self._jobs: OrderedDict[tuple[Kind, str, str], _Job] = OrderedDict()
        self._cache: OrderedDict[tuple[Kind, str, int, str], _Loaded] = OrderedDict()
        # One worker: training is CPU-bound numpy and must not starve the serving threads.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nachbar-train")

    def close(self) -> None:
        with self._lock:
            for job in self._jobs.values():
                job.cancel.set()
        self._worker.shutdown(wait=False, cancel_futures=True)

    # -- training ----------------------------------------------------------------------------

    def train(
        self,
        kind: Kind,
        store: str,
        name: str,
        examples: Sequence[TrainExample],
        options: TrainOptions = TrainOptions(),
    ) -> TrainedInfo:
        """Check the examples, queue the training and return its state (QUEUED)."""
        _check_name(kind, name)
        _check_options(options)
        ids = _check_examples(examples)
        most = self._source.input_limits().image.max_bytes
        for i, example in enumerate(examples):
            # Refused now, not when the training embeds it; texts are cut to the model's limit.
            if isinstance(example.query, bytes) and len(example.query) > most:
                raise InvalidInputError(
                    f"examples[{i}]: the query image is {len(example.query)} bytes, over this "
                    f"server's limit of {most} bytes for one image (--max-image-bytes); send a "
                    "smaller image"
                )
        bound = self._source.bound(store)
        metric = self._home.store_metric(store)
        if metric not in ("cosine", "ip"):
            raise StaleTrainedError(
                f"store {store!r} ranks by {metric} distance; adapters and re-scorers are "
                "trained for cosine and inner-product stores only"
            )
        with self._lock:
            job = self._jobs.get((kind, store, name))
            if job is not None and job.info.state in (State.QUEUED, State.TRAINING):
                raise TrainedExistsError(
                    f"{kind} {name!r} of store {store!r} is training already "
                    f"({job.info.progress:.0%}); wait for it or drop it"
                )
        if any(info.name == name for info in self._home.infos(store, kind)):
            raise TrainedExistsError(
                f"store {store!r} has a {kind} named {name!r} already; train under a new name "
                f"(a version, e.g. {name}-2) or drop it first"
            )
        found, vectors, missing = self._home.vectors(store, ids, expected_store_id=bound.store_id)
        if missing:
            where = _first_example_with(examples, set(missing))
            raise InvalidInputError(
                f"{len(missing)} example entry ids are not in store {store!r} (the first: "
                f"{missing[0]!r} in examples[{where}]); give ids of stored entries"
            )
        with self._lock:
            racing = self._jobs.get((kind, store, name))
            if racing is not None and racing.info.state in (State.QUEUED, State.TRAINING):
                raise TrainedExistsError(
                    f"{kind} {name!r} of store {store!r} started training meanwhile; wait for "
                    "it or drop it"
                )
            active = sum(
                1 for j in self._jobs.values() if j.info.state in (State.QUEUED, State.TRAINING)
            )
            if active >= self._max_queued:
                raise TrainingBusyError(
                    f"{active} trainings are queued or running, this server's limit; wait for "
                    "one to finish (GetAdapter/GetRescorer show progress) and retry"
                )
            info = TrainedInfo(
                store,
                name,
                kind,
                State.QUEUED,
                message="waiting for the training worker",
                dimension=vectors.shape[1],
                space=bound.binding.space,
                store_id=bound.store_id,
            )
            job = _Job(info, list(examples), options, bound, found, vectors)
            self._jobs[(kind, store, name)] = job
            self._jobs.move_to_end((kind, store, name))
            self._prune()
        self._worker.submit(self._run, job)
        return info

    def get(self, kind: Kind, store: str, name: str) -> TrainedInfo:
        with self._lock:
            job = self._jobs.get((kind, store, name))
            if job is not None and job.info.state != State.READY:
                return job.info
        for info in self._home.infos(store, kind):
            if info.name == name:
                return info
        raise TrainedNotFoundError(
            f"store {store!r} has no {kind} named {name!r}; list them with "
            f"`nachbar {kind}s list --store {store}`"
        )

    def list(self, kind: Kind, store: str) -> list[TrainedInfo]:
        self._source.bound(store)  # NOT_FOUND for an unknown store
        by_name = {info.name: info for info in self._home.infos(store, kind)}
        with self._lock:
            for (k, s, name), job in self._jobs.items():
                if k == kind and s == store and job.info.state != State.READY:
                    by_name.setdefault(name, job.info)
        return [by_name[n] for n in sorted(by_name)]

    def drop(self, kind: Kind, store: str, name: str, *, missing_ok: bool = False) -> bool:
        with self._lock:
            job = self._jobs.pop((kind, store, name), None)
            if job is not None:
                job.cancel.set()
            for key in [k for k in self._cache if k[0] == kind and k[1] == store and k[3] == name]:
                del self._cache[key]
        dropped = self._home.drop(store, kind, name) or (
            job is not None and job.info.state in (State.QUEUED, State.TRAINING)
        )
        if not dropped and not missing_ok:
            raise TrainedNotFoundError(
                f"store {store!r} has no {kind} named {name!r} (set missing_ok to ignore this)"
            )
        return dropped

    def forget_store(self, store: str) -> None:
        """The store was dropped: cancel its trainings and drop what was trained for it."""
        with self._lock:
            for key in [k for k in self._jobs if k[1] == store]:
                self._jobs.pop(key).cancel.set()
            for ckey in [k for k in self._cache if k[1] == store]:
                del self._cache[ckey]
        self._home.drop_all(store)

    # -- query time --------------------------------------------------------------------------

    def adapt(self, store: str, bound: Bound, name: str, query: FloatArray) -> FloatArray:
        """The query vector mapped by the store's adapter `name`."""
        loaded = self._load(Kind.ADAPTER, store, bound, name, len(query))
        weight = loaded.model
        assert isinstance(weight, np.ndarray)
        adapted = adapters.adapt(weight, query[None, :], renormalize=loaded.info.metric == "cosine")
        out: FloatArray = adapted[0]
        return out

    def rescore(
        self, store: str, bound: Bound, name: str, query: FloatArray, ids: Sequence[str]
    ) -> dict[str, float]:
        """Scores of the entries `ids` by the store's re-scorer `name` from their stored
        vectors; entries deleted meanwhile are left out."""
        loaded = self._load(Kind.RESCORER, store, bound, name, len(query))
        model = loaded.model
        assert isinstance(model, OnnxRescorer)
        if not ids:
            return {}
        found, vectors, _ = self._home.vectors(store, ids, expected_store_id=bound.store_id)
        if not found:
            return {}
        cosine = loaded.info.metric == "cosine"
        q = adapters.normalize(query[None, :])[0] if cosine else query
        documents = adapters.normalize(vectors) if cosine else vectors
        scores = model.score(q, documents)
        return {entry_id: float(s) for entry_id, s in zip(found, scores, strict=True)}

    # -- internals ---------------------------------------------------------------------------

    def _load(self, kind: Kind, store: str, bound: Bound, name: str, dimension: int) -> _Loaded:
        key = (kind, store, bound.store_id, name)
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and now - cached.at < CACHE_SECONDS:
                self._cache.move_to_end(key)
                return cached
            job = self._jobs.get((kind, store, name))
        artifact = self._home.load(store, kind, name)
        if artifact is None:
            if job is not None and job.info.state in (State.QUEUED, State.TRAINING, State.FAILED):
                raise StaleTrainedError(
                    f"{kind} {name!r} of store {store!r} is {job.info.state.value} "
                    f"({job.info.message}); use it once its state is ready"
                )
            raise TrainedNotFoundError(
                f"store {store!r} has no {kind} named {name!r}; train one or list them with "
                f"`nachbar {kind}s list --store {store}`"
            )
        info = artifact.info
        if info.store_id != bound.store_id:
            raise StaleTrainedError(
                f"{kind} {name!r} was trained for an earlier store named {store!r} (dropped and "
                "created again since), whose vectors it no longer fits; drop it and train again"
            )
        if info.dimension != dimension or info.space != bound.binding.space:
            raise StaleTrainedError(
                f"{kind} {name!r} was trained for {info.dimension}-dimensional vectors of space "
                f"{info.space!r}; store {store!r}'s query vectors are {dimension}-dimensional "
                f"of space {bound.binding.space!r}. Train one for this store"
            )
        model: FloatArray | OnnxRescorer
        if kind == Kind.ADAPTER:
            model = artifact.arrays[0]
        else:
            model = OnnxRescorer(Mlp.from_arrays(artifact.arrays))
        loaded = _Loaded(info, model, now)
        with self._lock:
            self._cache[key] = loaded
            self._cache.move_to_end(key)
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return loaded

    def _prune(self) -> None:
        finished = [k for k, j in self._jobs.items() if j.info.state in (State.READY, State.FAILED)]
        for key in finished[: max(0, len(finished) - FINISHED_JOBS)]:
            del self._jobs[key]

    def _update(self, job: _Job, **changes: Any) -> None:
        with self._lock:
            job.info = replace(job.info, **changes)

    def _run(self, job: _Job) -> None:
        if job.cancel.is_set():
            return
        started = time.monotonic()
        info = job.info
        self._update(job, state=State.TRAINING, message="embedding the queries")
        try:
            artifact = self._train(job, started)
            if job.cancel.is_set():
                return
            self._home.save(info.store, artifact)
            self._update(job, **{**artifact.info.__dict__, "state": State.READY, "progress": 1.0})
        except TrainingCancelledError:
            return
        except AIError as error:
            self._update(job, state=State.FAILED, message=error.message)
        except Exception as error:  # a bug or the db failing: the job fails, the server serves
            log.exception("training %s %r of store %r failed", info.kind, info.name, info.store)
            self._update(job, state=State.FAILED, message=f"training failed: {error}")

    def _train(self, job: _Job, started: float) -> Artifact:
        info = job.info
        store = info.store
        queries = self._source.embed_queries(store, job.bound, [e.query for e in job.examples])
        self._update(job, message="reading the store's vectors")
        corpus_ids, corpus = self._home.scan(
            store, self._max_corpus, expected_store_id=job.bound.store_id
        )
        position = {entry_id: i for i, entry_id in enumerate(corpus_ids)}
        extra = [i for i, entry_id in enumerate(job.example_ids) if entry_id not in position]
        for i in extra:
            position[job.example_ids[i]] = len(position)
        if extra:
            corpus = np.concatenate([corpus, job.example_vectors[extra]])
        metric = self._home.store_metric(store)
        if metric == "cosine":
            corpus = adapters.normalize(corpus)
        examples = Examples(
            queries=queries,
            relevant=[[position[i] for i in e.relevant_ids] for e in job.examples],
            corpus=corpus,
            irrelevant=[[position[i] for i in e.irrelevant_ids] for e in job.examples],
        )

        def progress(share: float, message: str) -> None:
            self._update(job, progress=share, message=message)

        options = job.options
        held_share = options.held_out or 0.2
        common: dict[str, Any] = {"held_out": held_share, "seed": options.seed}
        if options.epochs:
            common["epochs"] = options.epochs
        if options.learning_rate:
            common["learning_rate"] = options.learning_rate
        renormalize = metric == "cosine"
        arrays: list[FloatArray]
        if info.kind == Kind.ADAPTER:
            if options.identity_weight:
                common["identity_weight"] = options.identity_weight
            fit = adapters.fit_adapter(
                examples,
                AdapterSettings(**common),
                renormalize=renormalize,
                progress=progress,
                cancelled=job.cancel.is_set,
            )
            arrays, before, after, epochs, improved = (
                [fit.weight],
                fit.before,
                fit.after,
                fit.epochs,
                fit.improved,
            )
        else:
            rfit = rescorers.fit_rescorer(
                examples,
                RescorerSettings(**common),
                renormalize=renormalize,
                progress=progress,
                cancelled=job.cancel.is_set,
            )
            arrays = rfit.mlp.arrays()
            before, after, epochs, improved = rfit.before, rfit.after, rfit.epochs, rfit.improved
        held = adapters.split(len(job.examples), held_share, options.seed)
        verdict = (
            f"held-out MRR@10 {before.mrr:.4f} -> {after.mrr:.4f}"
            if improved
            else f"held-out MRR@10 did not improve on the frozen baseline ({before.mrr:.4f} -> "
            f"{after.mrr:.4f}); stored but not recommended: give more or better examples"
        )
        trained = replace(
            info,
            state=State.READY,
            progress=1.0,
            message=verdict,
            before=before,
            after=after,
            recommended=improved,
            train_examples=len(held.train),
            held_out_examples=len(held.held_out),
            epochs=epochs,
            train_seconds=time.monotonic() - started,
            corpus_size=len(corpus),
            weight_bytes=sum(int(a.nbytes) for a in arrays),
            created_at=time.time(),
            metric=metric,
        )
        return Artifact(trained, arrays)


def _check_name(kind: Kind, name: str) -> None:
    if not NAME.fullmatch(name):
        raise InvalidInputError(
            f"{kind} name {name[:80]!r} is invalid; use 1 to 64 characters from A-Z, a-z, 0-9, "
            "'_', '.' and '-'"
        )


def _check_options(options: TrainOptions) -> None:
    if not 0 <= options.epochs <= MAX_EPOCHS:
        raise InvalidInputError(f"epochs {options.epochs} is out of range; use 1 to {MAX_EPOCHS}")
    if not (0 <= options.learning_rate <= 1):
        raise InvalidInputError("learning_rate must be in (0, 1]; 0 takes the default")
    if not (0 <= options.held_out <= 0.5):
        raise InvalidInputError("held_out must be in (0, 0.5]; 0 takes the default 0.2")
    if not (0 <= options.identity_weight <= 1e3):
        raise InvalidInputError("identity_weight must be in [0, 1000]; 0 takes the default")


def _check_examples(examples: Sequence[TrainExample]) -> list[str]:
    """Distinct entry ids of the examples, in order of appearance."""
    if not MIN_EXAMPLES <= len(examples) <= MAX_EXAMPLES:
        raise InvalidInputError(
            f"{len(examples)} examples; give {MIN_EXAMPLES} to {MAX_EXAMPLES} (a fifth is held "
            "out to measure the result, so a few hundred make a useful measurement)"
        )
    ids: dict[str, None] = {}
    for i, example in enumerate(examples):
        if not example.query:
            raise InvalidInputError(f"examples[{i}]: the query is empty; give text or an image")
        if not 1 <= len(example.relevant_ids) <= MAX_IDS_PER_EXAMPLE:
            raise InvalidInputError(
                f"examples[{i}]: {len(example.relevant_ids)} relevant ids; give 1 to "
                f"{MAX_IDS_PER_EXAMPLE}"
            )
        if len(example.irrelevant_ids) > MAX_IDS_PER_EXAMPLE:
            raise InvalidInputError(
                f"examples[{i}]: {len(example.irrelevant_ids)} irrelevant ids; give at most "
                f"{MAX_IDS_PER_EXAMPLE}"
            )
        overlap = set(example.relevant_ids) & set(example.irrelevant_ids)
        if overlap:
            raise InvalidInputError(
                f"examples[{i}]: id {sorted(overlap)[0]!r} is both relevant and irrelevant"
            )
        for entry_id in (*example.relevant_ids, *example.irrelevant_ids):
            if not entry_id or len(entry_id) > MAX_ID_CHARS:
                raise InvalidInputError(
                    f"examples[{i}]: entry ids must be 1 to {MAX_ID_CHARS} characters"
                )
            ids[entry_id] = None
        if len(ids) > MAX_TOTAL_IDS:
            raise InvalidInputError(
                f"the examples name more than {MAX_TOTAL_IDS} distinct entries; train on fewer "
                "examples"
            )
    return list(ids)


def _first_example_with(examples: Sequence[TrainExample], ids: set[str]) -> int:
    for i, example in enumerate(examples):
        if ids.intersection(example.relevant_ids) or ids.intersection(example.irrelevant_ids):
            return i
    return -1
