"""Inference: what turns prepared inputs into rows of numbers, one class per kind of model:
text and image embedders (vectors) and the two rerank scorers, cross-encoder and late
interaction (relevance scores).

Each splits its work in two so the batcher can merge requests: `prepare` validates and turns
one request's inputs into items (tokens, pixel arrays) in the caller's thread, and `run` turns
any list of items, possibly from several requests, into output rows with one ONNX call.
"""

from __future__ import annotations

import functools
import string
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from nachbar.ai.errors import ModelUnavailableError
from nachbar.ai.image import ImagePreprocessor, decode_image
from nachbar.ai.limits import ImageDecode, ImageLimits
from nachbar.ai.onnx_model import OnnxModel
from nachbar.ai.registry import LateInteraction, ModelSpec, Pooling, Role
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

    def prepare(
        self, texts: Sequence[str], truncation: Truncation, role: Role | None = None
    ) -> list[TokenizedText]:
        """Tokens of each text after the model's prompt for `role` (none without a role)."""
        prefix = self.spec.prompts.for_role(role)
        return self.tokenizer.encode(texts, truncation, prefix=prefix)

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
        decoders: DecoderPool | None = None,
        decode: ImageDecode = ImageDecode.DRAFT,
    ) -> None:
        """`decoders` decode and preprocess images in parallel (Pillow releases the GIL while
        it decodes and resizes); shared between models, its thread count bounds how many
        images are decoded at once, and so their memory. None: this request's thread decodes.
        `decode` says whether large JPEGs decode at a reduced DCT scale (`ImageDecode`)."""
        if len(model.input_names) != 1:
            raise ModelUnavailableError(
                f"Image model {spec.name!r} must take one pixel input, it takes "
                f"{sorted(model.input_names)}."
            )
        (self._input_name,) = model.input_names
        self.spec, self.model, self.preprocessor, self.limits = spec, model, preprocessor, limits
        self._decoders = decoders
        self._draft_size = preprocessor.draft_size if decode is ImageDecode.DRAFT else None

    def prepare(self, images: Sequence[bytes], first_index: int = 0) -> list[FloatArray]:
        """One [3, height, width] array per image, rows of one batch array, so a request's
        images reach the model without another copy."""
        batch = np.empty((len(images), 3, *self.preprocessor.output_size), dtype=np.float32)
        jobs = [
            functools.partial(self._prepare_one, data, f"Input {first_index + i}", batch[i])
            for i, data in enumerate(images)
        ]
        if self._decoders is None:
            for job in jobs:
                job()
        else:
            self._decoders.run(jobs)
        return list(batch)

    def _prepare_one(self, data: bytes, what: str, out: FloatArray) -> None:
        image = decode_image(data, self.limits, what=what, draft_size=self._draft_size)
        self.preprocessor.into(image, out)

    def length(self, item: FloatArray) -> int:
        return 0  # every image has the model's input size

    def run(self, items: Sequence[FloatArray]) -> FloatArray:
        pixels = _consecutive_rows(items)
        output = self.model.run({self._input_name: np.stack(items) if pixels is None else pixels})
        # Graphs output [batch, dim] or, for conv nets without their head, [batch, dim, 1, 1].
        vectors = _check_rows(
            self.spec, self.model, output.reshape(len(items), -1).astype(np.float32, copy=False)
        )
        return l2_normalize(vectors) if self.spec.normalize else vectors


class DecoderPool:
    """Threads that decode and preprocess images, shared by every image model of a server."""

    def __init__(self, threads: int) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.threads = threads
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="nachbar-decode")

    def run(self, jobs: Sequence[Callable[[], None]]) -> None:
        """Run `jobs`, at most `threads` of them submitted at a time, so the pool's queue stays
        bounded by requests x threads; raise the first failure in input order, after cancelling
        or waiting for the rest, so no job still writes into the caller's arrays."""
        pending: deque[Future[None]] = deque()
        try:
            for job in jobs:
                if len(pending) >= self.threads:
                    pending.popleft().result()
                try:
                    pending.append(self._executor.submit(job))
                except RuntimeError as error:  # the pool is shut down
                    raise _closed() from error
            while pending:
                pending.popleft().result()
        except CancelledError as error:  # the pool was shut down meanwhile
            raise _closed() from error
        finally:
            for future in pending:
                future.cancel()
            wait(pending)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def _closed() -> ModelUnavailableError:
    return ModelUnavailableError("The model manager is closed (server shutting down).")


def _consecutive_rows(items: Sequence[FloatArray]) -> FloatArray | None:
    """`items` as one array without copying when they are consecutive rows of one array (the
    images of one request, as `prepare` makes them), else None."""
    base = items[0].base
    if not isinstance(base, np.ndarray) or base.ndim != items[0].ndim + 1:
        return None
    if not base.flags.c_contiguous:
        return None
    stride = base.strides[0]
    start, remainder = divmod(items[0].ctypes.data - base.ctypes.data, stride)
    if remainder or start < 0 or start + len(items) > base.shape[0]:
        return None
    first = base.ctypes.data + start * stride
    for offset, item in enumerate(items):
        if item.base is not base or item.ctypes.data != first + offset * stride:
            return None
    rows: FloatArray = base[start : start + len(items)]
    return rows


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


@dataclass(frozen=True)
class LateInteractionPair:
    """One document to score against a query. The items of one request share their `query`."""

    query: TokenizedText
    # Leading query positions the model attends to; the [MASK] padding after them is not
    # attended to, but its output vectors take part in MaxSim (query augmentation).
    query_attended: int
    document: TokenizedText
    # Which document positions take part in MaxSim (punctuation does not).
    document_kept: npt.NDArray[np.bool_]


#: Token vectors of recently scored documents kept by each late-interaction model. A document's
#: vectors do not depend on the query (the point of late interaction), so documents that come up
#: again (popular hits, the same candidates for similar queries) cost no model run.
DOCUMENT_CACHE_BYTES = 64 << 20


class _DocumentCache:
    """A least-recently-used map from a document's token ids to its kept token vectors."""

    def __init__(self, capacity_bytes: int) -> None:
        self._capacity = capacity_bytes
        self._used = 0
        self._entries: OrderedDict[bytes, FloatArray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes) -> FloatArray | None:
        with self._lock:
            vectors = self._entries.get(key)
            if vectors is not None:
                self._entries.move_to_end(key)
            return vectors

    def put(self, key: bytes, vectors: FloatArray) -> None:
        size = vectors.nbytes + len(key)
        if size > self._capacity:
            return
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = vectors
            self._used += size
            while self._used > self._capacity:
                old_key, old = self._entries.popitem(last=False)
                self._used -= old.nbytes + len(old_key)


class LateInteractionScorer:
    """ColBERT-style reranking: MaxSim over the token vectors of the query and each document.

    score = sum over query tokens of the largest cosine similarity with any document token.
    Document vectors are cached (`DOCUMENT_CACHE_BYTES`), since they do not depend on the query.
    """

    def __init__(
        self,
        spec: ModelSpec,
        model: OnnxModel,
        tokenizer: TextTokenizer,
        *,
        document_cache_bytes: int = DOCUMENT_CACHE_BYTES,
    ) -> None:
        model.require_inputs(_TEXT_INPUTS)
        if spec.late_interaction is None:
            raise ModelUnavailableError(f"Model {spec.name!r} is not a late-interaction model.")
        self.spec, self.model, self.tokenizer = spec, model, tokenizer
        self.config: LateInteraction = spec.late_interaction
        self._query_marker = self._require_token(self.config.query_marker)
        self._document_marker = self._require_token(self.config.document_marker)
        self._mask = self._require_token(self.config.mask_token)
        skipped = string.punctuation if self.config.skip_punctuation else ""
        self._skipped = np.asarray(
            sorted({i for c in skipped if (i := tokenizer.token_id(c)) is not None}),
            dtype=np.int64,
        )
        self._documents = _DocumentCache(document_cache_bytes)

    def _require_token(self, token: str) -> int:
        token_id = self.tokenizer.token_id(token)
        if token_id is None:
            raise ModelUnavailableError(
                f"The tokenizer of model {self.spec.name!r} has no {token!r} token; the files "
                "are not the registered model. Fetch or build it again."
            )
        return token_id

    def prepare(
        self, query: str, documents: Sequence[str], truncation: Truncation
    ) -> list[LateInteractionPair]:
        """The query is held to the model's token limit per `truncation`; each document is
        cut to the model's reranking budget (`rerank_tokens`)."""
        (marked,) = self.tokenizer.encode_marked(
            [query],
            self._query_marker,
            limit=self.spec.max_tokens,
            truncation=truncation,
            what="The query",
        )
        attended = marked.length
        block = self.config.query_tokens
        width = min(max(block, -(-attended // block) * block), self.spec.max_tokens)
        ids = np.full(width, self._mask, dtype=np.int64)
        ids[:attended] = marked.ids
        augmented = TokenizedText(ids=ids, type_ids=np.zeros_like(ids))
        marked_documents = self.tokenizer.encode_marked(
            documents,
            self._document_marker,
            limit=self.spec.rerank_tokens,
            truncation=None,
            what="Document",
        )
        return [
            LateInteractionPair(
                augmented, attended, document, ~np.isin(document.ids, self._skipped)
            )
            for document in marked_documents
        ]

    def length(self, item: LateInteractionPair) -> int:
        return item.document.length

    def run(self, items: Sequence[LateInteractionPair]) -> FloatArray:
        """One MaxSim score per item, as a [n, 1] column."""
        queries: dict[int, tuple[int, LateInteractionPair]] = {}
        for item in items:
            queries.setdefault(id(item.query), (len(queries), item))
        query_vectors = self._encode_queries([item for _, item in queries.values()])
        documents = self._document_vectors(items)
        scores = np.empty((len(items), 1), dtype=np.float32)
        for row, item in enumerate(items):
            query = query_vectors[queries[id(item.query)][0]]
            scores[row, 0] = (query @ documents[row].T).max(axis=1).sum()
        return scores

    def _document_vectors(self, items: Sequence[LateInteractionPair]) -> list[FloatArray]:
        """The kept token vectors of each item's document, from the cache or the model."""
        keys = [item.document.ids.tobytes() for item in items]
        found: list[FloatArray | None] = [self._documents.get(key) for key in keys]
        missing = [row for row, vectors in enumerate(found) if vectors is None]
        if missing:
            hidden = self._encode([items[row].document for row in missing])
            for position, row in enumerate(missing):
                item = items[row]
                # [CLS], the marker and [SEP] are always kept, so none is empty.
                kept = np.ascontiguousarray(
                    hidden[position, : item.document.length][item.document_kept]
                )
                self._documents.put(keys[row], kept)
                found[row] = kept
        return [vectors for vectors in found if vectors is not None]

    def _encode_queries(self, items: Sequence[LateInteractionPair]) -> list[FloatArray]:
        batch = self.tokenizer.pad([item.query for item in items])
        mask = np.zeros_like(batch.attention_mask)
        for row, item in enumerate(items):
            mask[row, : item.query_attended] = 1
        hidden = self._run(batch.input_ids, mask, batch.token_type_ids)
        return [hidden[row, : item.query.length] for row, item in enumerate(items)]

    def _encode(self, texts: Sequence[TokenizedText]) -> FloatArray:
        batch = self.tokenizer.pad(texts)
        return self._run(batch.input_ids, batch.attention_mask, batch.token_type_ids)

    def _run(
        self,
        input_ids: npt.NDArray[np.int64],
        attention_mask: npt.NDArray[np.int64],
        token_type_ids: npt.NDArray[np.int64],
    ) -> FloatArray:
        feeds = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
        }
        hidden = self.model.run(feeds).astype(np.float32, copy=False)
        if hidden.ndim != 3 or hidden.shape[2] != self.spec.dimension:
            raise ModelUnavailableError(
                f"Model {self.spec.name!r} ({self.model.path}) produced token vectors of shape "
                f"{hidden.shape[1:]}, not [sequence, {self.spec.dimension}]: the file is not the "
                "registered model. Fetch or build it again."
            )
        norms = np.linalg.norm(hidden, axis=2, keepdims=True)
        normalized: FloatArray = hidden / np.maximum(norms, np.float32(1e-12))
        return normalized
