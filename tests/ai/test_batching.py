from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nachbar.ai import models as models_module
from nachbar.ai.batching import BatchingConfig, DynamicBatcher, split_by_length
from nachbar.ai.errors import InputTooLongError, InvalidInputError, ModelUnavailableError
from nachbar.ai.models import ModelManager
from nachbar.ai.onnx_model import OnnxModel, SessionOptions

MODEL = "all-minilm-l6-v2"
# Waits are long so merging never depends on timing: a batch runs as soon as it is full.
NEVER = 60_000.0


class RunSpy:
    """Records the input_ids shape of every ONNX run."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self._lock = threading.Lock()

    def wrap(self, run: Callable[..., Any]) -> Callable[..., Any]:
        def spied(model: OnnxModel, feeds: Mapping[str, Any]) -> Any:
            with self._lock:
                self.shapes.append(tuple(next(iter(feeds.values())).shape))
            return run(model, feeds)

        return spied


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> RunSpy:
    recorder = RunSpy()
    monkeypatch.setattr(OnnxModel, "run", recorder.wrap(OnnxModel.run))
    return recorder


@pytest.fixture
def unbatched(tiny_model_dir: Path) -> Iterator[ModelManager]:
    with ModelManager(tiny_model_dir, batching=BatchingConfig(enabled=False)) as manager:
        yield manager


def embed_call(manager: ModelManager, texts: list[str]) -> Callable[[], Any]:
    return lambda: manager.embed(MODEL, texts)


def rerank_call(manager: ModelManager, name: str, documents: list[str]) -> Callable[[], Any]:
    return lambda: manager.rerank(name, "cat", documents)


def run_concurrently(calls: Sequence[Callable[[], Any]]) -> list[Any]:
    """Start every call at once (a barrier) and return each result or raised exception."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def worker(index: int) -> None:
        barrier.wait()
        try:
            results[index] = calls[index]()
        except Exception as error:
            results[index] = error

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


TEXTS = [
    "hello world",
    "a cat",
    "the big red car",
    "a photo of a dog",
    "music at night",
    "the quick brown fox",
    "blue sky",
    "a house on the river",
]


def test_concurrent_requests_share_one_run_and_get_their_own_rows(
    tiny_model_dir: Path, spy: RunSpy, unbatched: ModelManager
) -> None:
    expected = [unbatched.embed(MODEL, [text])[0] for text in TEXTS]
    spy.shapes.clear()
    config = BatchingConfig(max_batch_size=len(TEXTS), max_wait_ms=NEVER, workers=1)
    with ModelManager(tiny_model_dir, batching=config) as manager:
        manager.load(MODEL)
        results = run_concurrently([embed_call(manager, [t]) for t in TEXTS])
    assert len(spy.shapes) == 1
    assert spy.shapes[0][0] == len(TEXTS)
    for result, want in zip(results, expected, strict=True):
        assert isinstance(result, np.ndarray) and result.shape == (1, 384)
        np.testing.assert_allclose(result[0], want, rtol=1e-5, atol=1e-6)


def test_a_failing_request_does_not_affect_the_others(
    tiny_model_dir: Path, spy: RunSpy, unbatched: ModelManager
) -> None:
    good = TEXTS[:6]
    expected = [unbatched.embed(MODEL, [text])[0] for text in good]
    spy.shapes.clear()
    config = BatchingConfig(max_batch_size=len(good), max_wait_ms=NEVER, workers=1)
    with ModelManager(tiny_model_dir, batching=config) as manager:
        manager.load(MODEL)
        calls: list[Callable[[], Any]] = [embed_call(manager, [t]) for t in good]
        calls.insert(2, embed_call(manager, ["   "]))
        calls.insert(5, embed_call(manager, [" ".join(["cat"] * 300)]))
        results = run_concurrently(calls)
    assert isinstance(results.pop(5), InputTooLongError)
    assert isinstance(results.pop(2), InvalidInputError)
    assert len(spy.shapes) == 1 and spy.shapes[0][0] == len(good)
    for result, want in zip(results, expected, strict=True):
        np.testing.assert_allclose(result[0], want, rtol=1e-5, atol=1e-6)


def test_multi_item_requests_are_merged_too(
    tiny_model_dir: Path, spy: RunSpy, unbatched: ModelManager
) -> None:
    expected = unbatched.embed(MODEL, TEXTS[:6])
    spy.shapes.clear()
    config = BatchingConfig(max_batch_size=6, max_wait_ms=NEVER, workers=1)
    with ModelManager(tiny_model_dir, batching=config) as manager:
        manager.load(MODEL)
        results = run_concurrently(
            [embed_call(manager, TEXTS[:2]), embed_call(manager, TEXTS[2:6])]
        )
    assert len(spy.shapes) == 1 and spy.shapes[0][0] == 6
    np.testing.assert_allclose(results[0], expected[:2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(results[1], expected[2:], rtol=1e-5, atol=1e-6)


def test_short_texts_are_not_padded_to_long_ones(tiny_model_dir: Path, spy: RunSpy) -> None:
    short = ["a cat", "a dog"]  # 4 tokens
    long = [" ".join(["cat"] * 40), " ".join(["dog"] * 45)]  # 42 and 47 tokens
    config = BatchingConfig(max_batch_size=4, max_wait_ms=NEVER, workers=1)
    with ModelManager(tiny_model_dir, batching=config) as manager:
        manager.load(MODEL)
        run_concurrently([embed_call(manager, [t]) for t in [*short, *long]])
    assert sorted(spy.shapes) == [(2, 4), (2, 47)]


def test_large_requests_are_split_into_runs_of_similar_length(
    tiny_model_dir: Path, spy: RunSpy, unbatched: ModelManager
) -> None:
    texts = [f"{TEXTS[i % len(TEXTS)]} {'cat ' * (i % 5)}" for i in range(70)]
    expected = unbatched.embed(MODEL, texts)
    spy.shapes.clear()
    config = BatchingConfig(max_batch_size=32, max_wait_ms=NEVER, workers=2)
    with ModelManager(tiny_model_dir, batching=config) as manager:
        result = manager.embed(MODEL, texts)
    assert sum(shape[0] for shape in spy.shapes) == len(texts)
    assert max(shape[0] for shape in spy.shapes) <= 32
    # Sorted by length before it was cut: no run pads everything to the longest text.
    longest = max(shape[1] for shape in spy.shapes)
    assert min(shape[1] for shape in spy.shapes) < longest
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)


def test_session_threads_are_shared_out_among_the_workers(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models_module, "available_cpus", lambda: 4)
    cases = {
        BatchingConfig(workers=2): 2,
        BatchingConfig(workers=4): 1,
        BatchingConfig(workers=8): 1,
        BatchingConfig(workers=1): 4,
        BatchingConfig(enabled=False, workers=4): 0,  # 0: onnxruntime uses every CPU
    }
    for config, threads in cases.items():
        manager = ModelManager(tiny_model_dir, batching=config)
        assert manager._session_options().intra_op_threads == threads, config
    pinned = ModelManager(
        tiny_model_dir, batching=BatchingConfig(workers=2), session_options=SessionOptions(3)
    )
    assert pinned._session_options().intra_op_threads == 3


def test_disabled_batching_runs_each_request_alone(tiny_model_dir: Path, spy: RunSpy) -> None:
    with ModelManager(tiny_model_dir, batching=BatchingConfig(enabled=False)) as manager:
        manager.load(MODEL)
        run_concurrently([embed_call(manager, [t]) for t in TEXTS[:4]])
    assert len(spy.shapes) == 4


def test_cross_encoder_requests_are_batched(tiny_model_dir: Path, spy: RunSpy) -> None:
    name = "Xenova/ms-marco-MiniLM-L-6-v2"
    with ModelManager(tiny_model_dir, batching=BatchingConfig(enabled=False)) as manager:
        expected = [manager.rerank(name, "cat", ["dog", t]) for t in TEXTS[:3]]
    spy.shapes.clear()
    config = BatchingConfig(max_batch_size=6, max_wait_ms=NEVER, workers=1)
    with ModelManager(tiny_model_dir, batching=config) as manager:
        manager.load(name)
        results = run_concurrently([rerank_call(manager, name, ["dog", t]) for t in TEXTS[:3]])
    assert len(spy.shapes) == 1 and spy.shapes[0][0] == 6
    for result, want in zip(results, expected, strict=True):
        np.testing.assert_allclose(result, want, rtol=1e-5, atol=1e-6)


def test_split_by_length_keeps_similar_lengths_together() -> None:
    lengths = [40, 5, 6, 41, 5, 42]
    runs = split_by_length(lengths, max_size=32, run_cost=10)
    assert sorted(sorted(run) for run in runs) == [[0, 3, 5], [1, 2, 4]]


def test_split_by_length_merges_when_padding_is_cheaper_than_a_run() -> None:
    lengths = [10, 12, 11, 9]
    assert [sorted(run) for run in split_by_length(lengths, max_size=32, run_cost=40)] == [
        [0, 1, 2, 3]
    ]
    # Free runs: every distinct length gets its own, so nothing is padded.
    assert len(split_by_length(lengths, max_size=32, run_cost=0)) == 4


def test_split_by_length_respects_max_size_and_keeps_every_index() -> None:
    lengths = [7] * 70
    runs = split_by_length(lengths, max_size=32, run_cost=40)
    assert sorted(len(run) for run in runs) == [6, 32, 32]
    assert sorted(i for run in runs for i in run) == list(range(70))


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="workers"):
        BatchingConfig(workers=-1)
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchingConfig(max_batch_size=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        BatchingConfig(max_wait_ms=-1)
    with pytest.raises(ValueError, match="run_cost_tokens"):
        BatchingConfig(run_cost_tokens=-1)


# --- the batcher on its own ------------------------------------------------------------------


class FlakyEngine:
    """Doubles each item; a batch containing -1 fails, like a crashing model run."""

    def __init__(self) -> None:
        self.batches: list[list[float]] = []

    def run(self, items: Sequence[float]) -> np.ndarray:
        self.batches.append(list(items))
        if -1 in items:
            raise RuntimeError("model run failed")
        return np.array([[2 * x] for x in items], dtype=np.float32)

    def length(self, item: float) -> int:
        return 1


@contextlib.contextmanager
def started(
    engine: FlakyEngine, config: BatchingConfig, name: str
) -> Iterator[DynamicBatcher[float]]:
    """A batcher whose workers are all waiting for items; closed on the way out."""
    batcher: DynamicBatcher[float] = DynamicBatcher(engine, config, name=name)
    try:
        deadline = time.monotonic() + 30
        while batcher._idle < config.worker_count:
            assert time.monotonic() < deadline, "the batcher's workers did not start"
            time.sleep(0.001)
        yield batcher
    finally:
        batcher.close()


def test_a_failed_run_fails_its_requests_and_the_worker_carries_on() -> None:
    engine = FlakyEngine()
    with started(
        engine, BatchingConfig(max_batch_size=2, max_wait_ms=NEVER, workers=1), "flaky"
    ) as batcher:
        results = run_concurrently([lambda: batcher.submit([-1.0]), lambda: batcher.submit([3.0])])
        assert all(isinstance(r, RuntimeError) for r in results)
        results = run_concurrently([lambda: batcher.submit([1.0]), lambda: batcher.submit([3.0])])
        assert [r.tolist() for r in results] == [[[2.0]], [[6.0]]]


def test_close_fails_waiting_requests() -> None:
    engine = FlakyEngine()
    batcher: DynamicBatcher[float] = DynamicBatcher(
        engine, BatchingConfig(max_batch_size=2, max_wait_ms=NEVER, workers=1), name="m"
    )
    outcome: list[BaseException] = []
    queued = threading.Event()

    def wait_alone() -> None:
        try:
            queued.set()
            batcher.submit([1.0])
        except ModelUnavailableError as error:
            outcome.append(error)

    thread = threading.Thread(target=wait_alone)
    thread.start()
    queued.wait()
    while not batcher._queue:  # until the item is queued; it then waits for a partner
        time.sleep(0.001)
    batcher.close()
    thread.join(timeout=30)
    assert len(outcome) == 1 and "retry" in str(outcome[0])
    assert engine.batches == []
    with pytest.raises(ModelUnavailableError):
        batcher.submit([1.0])


class GatedEngine(FlakyEngine):
    """Its first run blocks until `release` is set, like a long batch keeping the worker busy."""

    def __init__(self) -> None:
        super().__init__()
        self.running = threading.Event()
        self.release = threading.Event()

    def run(self, items: Sequence[float]) -> np.ndarray:
        if not self.batches:
            self.running.set()
            self.release.wait(timeout=60)
        return super().run(items)


def test_a_busy_worker_takes_what_queued_during_its_run_without_waiting() -> None:
    engine = GatedEngine()
    # An idle worker would wait a minute for a partner; one back from a run must not.
    with started(
        engine, BatchingConfig(max_batch_size=2, max_wait_ms=NEVER, workers=1), "gated"
    ) as batcher:
        first = threading.Thread(
            target=run_concurrently, args=([lambda: batcher.submit([1.0])] * 2,)
        )
        first.start()
        assert engine.running.wait(timeout=60)
        later: list[Any] = []
        queued = [
            threading.Thread(target=lambda x=x: later.append(batcher.submit([x])))
            for x in (3.0, 4.0, 5.0)
        ]
        for thread in queued:
            thread.start()
        while len(batcher._queue) < 3:  # all three wait behind the running batch
            time.sleep(0.001)
        engine.release.set()
        for thread in [first, *queued]:
            thread.join(timeout=60)
        assert sorted(r.tolist() for r in later) == [[[6.0]], [[8.0]], [[10.0]]]
        assert engine.batches[0] == [1.0, 1.0]
        assert sorted(len(batch) for batch in engine.batches[1:]) == [1, 2]


class RendezvousEngine(FlakyEngine):
    """Every run waits for a second run to be under way at the same time."""

    def __init__(self) -> None:
        super().__init__()
        self.together = threading.Barrier(2, timeout=30)
        self.threads: set[str] = set()

    def run(self, items: Sequence[float]) -> np.ndarray:
        self.threads.add(threading.current_thread().name)
        self.together.wait()  # raises BrokenBarrierError unless two runs overlap
        return super().run(items)


def test_one_large_request_keeps_every_worker_busy() -> None:
    engine = RendezvousEngine()
    with started(
        engine, BatchingConfig(max_batch_size=8, max_wait_ms=NEVER, workers=2), "pair"
    ) as batcher:
        items = [float(x) for x in range(16)]
        result = batcher.submit(items)
        assert result[:, 0].tolist() == [2 * x for x in items]
        assert len(engine.threads) == 2
        assert sorted(len(batch) for batch in engine.batches) == [8, 8]


def test_idle_workers_split_concurrent_requests_between_them() -> None:
    engine = RendezvousEngine()
    with started(
        engine, BatchingConfig(max_batch_size=4, max_wait_ms=NEVER, workers=2), "pair"
    ) as batcher:
        results = run_concurrently([partial(batcher.submit, [x]) for x in (1.0, 2.0, 3.0, 4.0)])
        assert sorted(r[0, 0] for r in results) == [2.0, 4.0, 6.0, 8.0]
        assert sorted(len(batch) for batch in engine.batches) == [2, 2]


def test_a_query_sent_during_a_bulk_request_joins_the_next_run() -> None:
    engine = GatedEngine()
    with started(
        engine, BatchingConfig(max_batch_size=8, max_wait_ms=NEVER, workers=1), "bulk"
    ) as batcher:
        bulk = [float(x) for x in range(1, 65)]
        results: dict[str, Any] = {}
        bulk_thread = threading.Thread(target=lambda: results.update(bulk=batcher.submit(bulk)))
        bulk_thread.start()
        assert engine.running.wait(timeout=60)  # the first 8 bulk items are running
        query_thread = threading.Thread(
            target=lambda: results.update(query=batcher.submit([100.0]))
        )
        query_thread.start()
        while len(batcher._queue) < 57:  # 56 bulk items left, and the query
            time.sleep(0.001)
        engine.release.set()
        for thread in (bulk_thread, query_thread):
            thread.join(timeout=60)
        assert 100.0 in engine.batches[1]  # not behind the remaining 56 bulk items
        assert results["query"].tolist() == [[200.0]]
        assert results["bulk"][:, 0].tolist() == [2 * x for x in bulk]
        assert all(len(batch) <= 8 for batch in engine.batches)
