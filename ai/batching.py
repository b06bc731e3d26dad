"""Dynamic batching: concurrent requests to one model share ONNX runs.

A request's inputs are validated and tokenized (or decoded) in the caller's thread first, so a
bad request fails alone and never enters a shared batch. Its items then join the model's queue,
sorted by length. `workers` threads per model take from the queue, each running its batches on
its own share of the CPUs (the model manager gives each session CPUs / workers threads). One
worker (the default) gives a lone request every CPU; on 2 cores two single-threaded workers
side by side embedded 15-20% more texts/s in large batches, at a slower single query.

A worker that was idle first waits, at most `max_wait_ms` after the oldest item arrived, until
`max_batch_size` items are there; one back from a run takes what queued meanwhile at once, so a
loaded worker never sits idle. A worker takes at most `max_batch_size` items and no more than
its share of the queue among the idle workers, so one large request keeps every worker busy;
it deals them out one per request per round, so a query sent during a bulk embedding joins the
next run instead of waiting for the bulk request to finish.
The items taken are split into runs where padding short items to long ones would cost more
than an extra run (`run_cost_tokens`); every caller gets its own rows.
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

from nachbar.ai.errors import ModelUnavailableError
from nachbar.ai.inference import Engine
from nachbar.ai.observe import NO_OBSERVER, ModelObserver
from nachbar.ai.onnx_model import available_cpus

FloatArray = npt.NDArray[np.float32]
ItemT = TypeVar("ItemT")


@dataclass(frozen=True)
class BatchingConfig:
    enabled: bool = True
    max_batch_size: int = 32
    # How long an idle worker waits for partners. 0 by default: a lone query on an idle
    # server ran in 2.0-2.1 ms instead of 4.2-4.3 ms with a 2 ms wait, and 16 concurrent
    # callers got no measurable throughput from waiting (843-872 vs 856-1003 texts/s), since
    # what queues during a run is merged anyway.
    max_wait_ms: float = 0.0
    # The fixed cost of one ONNX run in padded token positions (rows x tokens): about 40 for
    # all-MiniLM-L6-v2 on 2 cores (2.4 ms per run, 60 us per position).
    run_cost_tokens: int = 40
    # Worker threads per model, each running one batch at a time on CPUs / workers threads;
    # 0: one per CPU. One is the default: a lone query runs on every CPU (measured 2.1-2.35 ms
    # vs 2.6-2.9 ms single-threaded for all-MiniLM-L6-v2 on 2 cores), while one worker per CPU
    # embedded batches of 32 about 15% faster.
    workers: int = 1

    @property
    def worker_count(self) -> int:
        return self.workers or available_cpus()

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {self.max_batch_size}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must not be negative, got {self.max_wait_ms}")
        if self.run_cost_tokens < 0:
            raise ValueError(f"run_cost_tokens must not be negative, got {self.run_cost_tokens}")
        if self.workers < 0:
            raise ValueError(f"workers must be 0 (one per CPU) or more, got {self.workers}")


def split_by_length(lengths: Sequence[int], *, max_size: int, run_cost: int) -> list[list[int]]:
    """Group item indices into runs of at most `max_size` that minimise the estimated cost.

    A run costs `run_cost` plus its rows times its longest item (everything is padded to it).
    Items are sorted by length, so each run is a contiguous slice of that order and the optimum
    is found exactly by dynamic programming over split points.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sorted_lengths = [lengths[i] for i in order]
    count = len(order)
    # best[end]: least cost of running the first `end` sorted items; start[end]: its last run.
    best = [0] * (count + 1)
    start = [0] * (count + 1)
    for end in range(1, count + 1):
        longest = sorted_lengths[end - 1]
        best[end] = -1
        for first in range(max(0, end - max_size), end):
            cost = best[first] + run_cost + (end - first) * longest
            if best[end] < 0 or cost < best[end]:
                best[end], start[end] = cost, first
    runs: list[list[int]] = []
    end = count
    while end > 0:
        runs.append(order[start[end] : end])
        end = start[end]
    runs.reverse()
    return runs


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
    length: int
    arrived: float


class _FairQueue(Generic[ItemT]):
    """Queued items grouped by request, oldest request first. `take` deals items out one per
    request per round, so a bulk request shares each run with the requests queued behind it
    instead of making them wait until it is done."""

    def __init__(self) -> None:
        self._requests: deque[deque[_Waiting[ItemT]]] = deque()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, items: Sequence[_Waiting[ItemT]]) -> None:
        self._requests.append(deque(items))
        self._count += len(items)

    def oldest_arrival(self) -> float:
        return self._requests[0][0].arrived

    def take(self, count: int) -> list[_Waiting[ItemT]]:
        taken: list[_Waiting[ItemT]] = []
        while len(taken) < count and self._requests:
            for pending in self._requests:
                if len(taken) == count:
                    break
                taken.append(pending.popleft())
            self._requests = deque(pending for pending in self._requests if pending)
        self._count -= len(taken)
        return taken

    def clear(self) -> list[_Waiting[ItemT]]:
        return self.take(self._count)


class DynamicBatcher(Generic[ItemT]):
    """Runs an engine's items in merged batches; `submit` blocks until its rows are ready."""

    def __init__(
        self,
        engine: Engine[ItemT],
        config: BatchingConfig,
        *,
        name: str,
        observer: ModelObserver = NO_OBSERVER,
    ) -> None:
        self._engine = engine
        self._config = config
        self._name = name
        self._observer = observer
        self._cond = threading.Condition()
        self._queue: _FairQueue[ItemT] = _FairQueue()
        self._idle = 0  # workers inside _take
        self._flush = False  # the queued items are due: idle workers take them without waiting
        self._closed = False
        self._workers: list[threading.Thread] = []
        if config.enabled:
            self._workers = [
                threading.Thread(target=self._work, name=f"batcher-{name}-{number}", daemon=True)
                for number in range(config.worker_count)
            ]
            for worker in self._workers:
                worker.start()

    def submit(self, items: Sequence[ItemT]) -> FloatArray:
        """Rows for `items`, in order (one ONNX output row per item)."""
        return self.enqueue(items).result()

    def enqueue(self, items: Sequence[ItemT]) -> Future[FloatArray]:
        """`submit` without waiting: the future of the rows for `items`, so the caller can
        prepare more inputs while these run. Without batching they run now, in this thread."""
        if not items:
            raise ValueError("submit needs at least one item")
        if not self._config.enabled:
            done: Future[FloatArray] = Future()
            done.set_result(self._run_now(items))
            return done
        request = _Request(len(items))
        now = time.monotonic()
        # Measured outside the lock: the lock is the one thing every caller shares. Sorted so
        # that the runs a large request is cut into hold items of similar length.
        waiting = sorted(
            (
                _Waiting(request, index, item, self._engine.length(item), now)
                for index, item in enumerate(items)
            ),
            key=lambda entry: entry.length,
        )
        with self._cond:
            if self._closed:
                raise self._closed_error()
            self._queue.add(waiting)
            self._cond.notify_all()
        return request.future

    @property
    def queued(self) -> int:
        """Items waiting for a worker."""
        return len(self._queue)

    def close(self) -> None:
        """Stop the workers; requests still waiting fail with ModelUnavailableError."""
        with self._cond:
            self._closed = True
            waiting = self._queue.clear()
            self._cond.notify_all()
            workers = list(self._workers)
        for entry in waiting:
            entry.request.fail(self._closed_error())
        for worker in workers:
            if worker is not threading.current_thread():
                worker.join(timeout=10)

    def _closed_error(self) -> ModelUnavailableError:
        return ModelUnavailableError(
            f"Model {self._name!r} was unloaded (the server is shutting down); retry the request."
        )

    def _runs(self, lengths: Sequence[int]) -> list[list[int]]:
        return split_by_length(
            lengths, max_size=self._config.max_batch_size, run_cost=self._config.run_cost_tokens
        )

    def _run_now(self, items: Sequence[ItemT]) -> FloatArray:
        rows: list[FloatArray | None] = [None] * len(items)
        for run in self._runs([self._engine.length(item) for item in items]):
            output = self._timed_run([items[i] for i in run])
            for position, index in enumerate(run):
                rows[index] = output[position]
        return np.stack([r for r in rows if r is not None])

    def _timed_run(self, items: Sequence[ItemT]) -> FloatArray:
        started = time.perf_counter()
        output = self._engine.run(items)
        self._observer.batch_ran(self._name, len(items), time.perf_counter() - started)
        return output

    def _work(self) -> None:
        back_from_run = False
        while True:
            taken = self._take(back_from_run)
            if taken is None:
                return
            back_from_run = True
            for run in self._runs([entry.length for entry in taken]):
                self._run_batch([taken[i] for i in run])

    def _run_batch(self, batch: Sequence[_Waiting[ItemT]]) -> None:
        try:
            output = self._timed_run([w.item for w in batch])
            if len(output) != len(batch):
                raise RuntimeError(
                    f"model {self._name!r} returned {len(output)} rows for {len(batch)} inputs"
                )
        except BaseException as error:  # handed to the callers, who re-raise it
            for entry in batch:
                entry.request.fail(error)
            return
        # Rows of one request may be filled by several workers.
        with self._cond:
            for position, entry in enumerate(batch):
                entry.request.fill(entry.index, output[position])

    def _take(self, back_from_run: bool) -> list[_Waiting[ItemT]] | None:
        """Queued items, one per request per round, oldest first (so none starves); None once
        closed.

        An idle worker waits for partners, at most `max_wait_ms` after the first item arrived,
        or until `max_batch_size` items are queued. A worker back from a run takes what queued
        up meanwhile at once: waiting longer would only leave the model idle. It takes its
        share of the queue among the idle workers, at most `max_batch_size` items.
        """
        max_wait = self._config.max_wait_ms / 1000.0
        size = self._config.max_batch_size
        with self._cond:
            self._idle += 1
            try:
                idle = not back_from_run or not self._queue
                while True:
                    while not self._closed and not self._queue:
                        self._cond.wait()
                    if idle and self._queue:
                        deadline = self._queue.oldest_arrival() + max_wait
                        while not self._closed and 0 < len(self._queue) < size and not self._flush:
                            remaining = deadline - time.monotonic()
                            if remaining <= 0:
                                break
                            self._cond.wait(remaining)
                    if self._closed:
                        return None
                    if self._queue:  # another worker may have emptied it meanwhile
                        break
                share = -(-len(self._queue) // self._idle)
                take = min(size, share, len(self._queue))
                # What this worker leaves is ready too: the other idle workers take it at once.
                self._flush = take < len(self._queue)
                if self._flush:
                    self._cond.notify_all()
                return self._queue.take(take)
            finally:
                self._idle -= 1
