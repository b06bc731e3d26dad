"""Dynamic batching: concurrent requests to one model share ONNX runs.

A request's inputs are validated and tokenized (or decoded) in the caller's thread first, so a
bad request fails alone and never enters a shared batch. Its items then wait, for at most
`max_wait_ms` after the oldest waiting item arrived, for other requests' items of a similar
length (power-of-two buckets, so short texts do not pay for padding to long ones); one worker
thread per model runs each batch and hands every caller its own rows. A request of
`max_batch_size` items or more needs no partners: it is split into chunks that run at once in
the caller's thread.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from nachbar.ai.embedder import Engine
from nachbar.ai.errors import ModelUnavailableError

FloatArray = npt.NDArray[np.float32]
ItemT = TypeVar("ItemT")

_SMALLEST_BUCKET = 16


@dataclass(frozen=True)
class BatchingConfig:
    enabled: bool = True
    max_batch_size: int = 32
    max_wait_ms: float = 2.0

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {self.max_batch_size}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must not be negative, got {self.max_wait_ms}")


def bucket_of(length: int) -> int:
    """The padded length class of an item: the next power of two, at least 16."""
    return max(_SMALLEST_BUCKET, 1 << max(0, length - 1).bit_length())


class _Request:
    """One caller's items. Rows are filled by the worker thread only; `close` may fail the
    request from another thread, hence the InvalidStateError guards."""

    def __init__(self, size: int) -> None:
        self.rows: list[FloatArray | None] = [None] * size
        self.remaining = size
        self.future: Future[FloatArray] = Future()

    def fill(self, index: int, row: FloatArray) -> None:
        if self.future.done():  # already failed by another of its batches
            return
        self.rows[index] = row
        self.remaining -= 1
        if self.remaining == 0:
            with contextlib.suppress(InvalidStateError):
                self.future.set_result(np.stack([r for r in self.rows if r is not None]))

    def fail(self, error: BaseException) -> None:
        with contextlib.suppress(InvalidStateError):
            self.future.set_exception(error)


@dataclass(frozen=True)
class _Waiting(Generic[ItemT]):
    request: _Request
    index: int
    item: ItemT
    arrived: float


class DynamicBatcher(Generic[ItemT]):
    """Runs an engine's items in merged batches; `submit` blocks until its rows are ready."""

    def __init__(self, engine: Engine[ItemT], config: BatchingConfig, *, name: str) -> None:
        self._engine = engine
        self._config = config
        self._name = name
        self._cond = threading.Condition()
        self._buckets: dict[int, deque[_Waiting[ItemT]]] = {}
        self._worker: threading.Thread | None = None
        self._closed = False

    def submit(self, items: Sequence[ItemT]) -> FloatArray:
        """Rows for `items`, in order (one ONNX output row per item)."""
        if not items:
            raise ValueError("submit needs at least one item")
        if not self._config.enabled or len(items) >= self._config.max_batch_size:
            return self._run_now(items)
        request = _Request(len(items))
        now = time.monotonic()
        with self._cond:
            if self._closed:
                raise self._closed_error()
            for index, item in enumerate(items):
                bucket = bucket_of(self._engine.length(item))
                self._buckets.setdefault(bucket, deque()).append(
                    _Waiting(request, index, item, now)
                )
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._work, name=f"batcher-{self._name}", daemon=True
                )
                self._worker.start()
            self._cond.notify_all()
        return request.future.result()

    def close(self) -> None:
        """Stop the worker; requests still waiting fail with ModelUnavailableError."""
        with self._cond:
            self._closed = True
            waiting = [w for queue in self._buckets.values() for w in queue]
            self._buckets.clear()
            self._cond.notify_all()
            worker = self._worker
        for entry in waiting:
            entry.request.fail(self._closed_error())
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=10)

    def _closed_error(self) -> ModelUnavailableError:
        return ModelUnavailableError(
            f"Model {self._name!r} was unloaded (the server is shutting down); retry the request."
        )

    def _run_now(self, items: Sequence[ItemT]) -> FloatArray:
        # Sorted by length so each chunk pads little; rows go back to the caller's order.
        order = sorted(range(len(items)), key=lambda i: self._engine.length(items[i]))
        size = self._config.max_batch_size
        rows: list[FloatArray | None] = [None] * len(items)
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            output = self._engine.run([items[i] for i in chunk])
            for position, index in enumerate(chunk):
                rows[index] = output[position]
        return np.stack([r for r in rows if r is not None])

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                output = self._engine.run([w.item for w in batch])
                if len(output) != len(batch):
                    raise RuntimeError(
                        f"model {self._name!r} returned {len(output)} rows for {len(batch)} inputs"
                    )
            except BaseException as error:  # handed to the callers, who re-raise it
                for entry in batch:
                    entry.request.fail(error)
                continue
            for position, entry in enumerate(batch):
                entry.request.fill(entry.index, output[position])

    def _next_batch(self) -> list[_Waiting[ItemT]] | None:
        """Wait for work, then for partners; None once closed."""
        max_wait = self._config.max_wait_ms / 1000.0
        size = self._config.max_batch_size
        with self._cond:
            while not self._closed and not self._buckets:
                self._cond.wait()
            if self._closed:
                return None
            # Oldest first, so no bucket starves.
            bucket = min(self._buckets, key=lambda b: self._buckets[b][0].arrived)
            queue = self._buckets[bucket]
            deadline = queue[0].arrived + max_wait
            while len(queue) < size and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._closed:
                return None
            batch = [queue.popleft() for _ in range(min(size, len(queue)))]
            if not queue:
                del self._buckets[bucket]
            return batch
