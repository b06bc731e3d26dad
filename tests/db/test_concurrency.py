"""Many threads reading and writing at once: no errors, no torn results, nothing lost."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nachbar.db.engine import Database
from nachbar.db.errors import StoreNotFoundError
from nachbar.db.filters import AllOf, Condition, Op
from nachbar.db.rwlock import ReadWriteLock
from nachbar.db.types import Entry, Metadata, SearchMode, StoreSpec

DIM, BASE, K = 16, 400, 10
WRITERS, READERS, ROUNDS = 3, 3, 30


def run_threads(targets: list[Callable[[], None]]) -> list[BaseException]:
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as error:  # collected and reported by the test
                errors.append(error)

        return run

    threads = [threading.Thread(target=guarded(t)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive(), "a thread hung"
    return errors


def test_concurrent_readers_and_writers(data_dir: Path) -> None:
    db = Database.open(data_dir, fsync="normal", checkpoint_seconds=0)
    rng = np.random.default_rng(0)
    db.create_store(StoreSpec("s", DIM, predicate_indexes=("kind",)))
    db.upsert(
        "s",
        [Entry(f"base{n:04d}", rng.standard_normal(DIM), {"kind": "base"}) for n in range(BASE)],
    )
    models: list[dict[str, Metadata]] = [{} for _ in range(WRITERS)]
    stop = threading.Event()

    def writer(w: int) -> Callable[[], None]:
        def run() -> None:
            local = np.random.default_rng(100 + w)
            model = models[w]
            for r in range(ROUNDS):
                batch = [
                    Entry(f"w{w}-{r}-{i}", local.standard_normal(DIM), {"kind": f"w{w}", "r": r})
                    for i in range(8)
                ]
                if model:  # rewrite one earlier entry with new metadata and vector
                    old = sorted(model)[r % len(model)]
                    batch.append(Entry(old, local.standard_normal(DIM), {"kind": f"w{w}", "r": -r}))
                db.upsert("s", batch)
                model.update({e.id: e.metadata for e in batch})
                doomed = [i for i in sorted(model) if i.endswith("-0")][:2]
                assert db.delete_keys("s", doomed) == len(doomed)
                for i in doomed:
                    del model[i]

        return run

    # Writers start once every reader is running, so that they really overlap.
    readers_running = threading.Barrier(READERS + 1, timeout=60)

    def reader(seed: int) -> Callable[[], None]:
        def run() -> None:
            local = np.random.default_rng(seed)
            base = Condition("kind", Op.EQ, "base")
            first = True
            while first or not stop.is_set():
                query = local.standard_normal(DIM)
                for mode in SearchMode:
                    for flt in (None, base):
                        result = db.get_sim_n("s", query, K, filter=flt, mode=mode)
                        ids = [m.id for m in result.matches]
                        # The base entries never change, so there are always at least K.
                        assert len(ids) == K and len(set(ids)) == K
                        if flt is not None:
                            assert all(i.startswith("base") for i in ids)
                        scores = [m.score for m in result.matches]
                        assert scores == sorted(scores, reverse=True)
                page = db.get_by_predicate("s", AllOf((base, Condition("kind", Op.EXISTS))))
                assert len(page.entries) == 100 and page.next_page_token
                found, _ = db.get_keys("s", ["base0000", "base0399"])
                assert [e.id for e in found] == ["base0000", "base0399"]
                if first:
                    readers_running.wait()
                    first = False

        return run

    def churn() -> None:
        # Stores come and go, indexes come and go, graphs get saved, all beside the traffic.
        n = 0
        while not stop.is_set():
            db.create_store(StoreSpec(f"tmp{n}", 4))
            db.upsert(f"tmp{n}", [Entry("a", np.ones(4))])
            db.create_pred_index("s", ["r"])
            db.flush()
            db.drop_pred_index("s", ["r"])
            db.drop_store(f"tmp{n}")
            n += 1

    def users_of_dropped_stores() -> None:
        # Pauses like a real client's: a loop that never yields the GIL starves the writers'
        # SQLite commits, which is a property of the test's own thread, not of the engine.
        while not stop.wait(0.001):
            for name in ("tmp0", "tmp1", "tmp2"):
                with contextlib.suppress(StoreNotFoundError):
                    db.get_sim_n(name, np.ones(4), 1)

    writers = [writer(w) for w in range(WRITERS)]

    def writers_then_stop() -> None:
        try:
            readers_running.wait()
            errors = run_threads(writers)
            if errors:
                raise errors[0]
        finally:
            stop.set()

    errors = run_threads(
        [writers_then_stop, churn, users_of_dropped_stores] + [reader(s) for s in range(READERS)]
    )
    assert not errors, errors

    expected = {f"base{n:04d}" for n in range(BASE)}
    for model in models:
        expected |= set(model)
    page = db.get_by_predicate("s", None, limit=10_000)
    assert {e.id for e in page.entries} == expected
    for model in models:
        found, missing = db.get_keys("s", sorted(model))
        assert not missing
        assert {e.id: e.metadata for e in found} == model
    assert [s.name for s in db.list_stores()] == ["s"]
    db.close()

    with Database.open(data_dir, checkpoint_seconds=0) as again:
        assert again.get_store("s").count == len(expected)
        assert again.index_load_report("s").action == "loaded"


def test_rwlock_excludes_writers_from_readers() -> None:
    lock = ReadWriteLock()
    state = {"readers": 0, "writers": 0, "violations": 0}
    guard = threading.Lock()

    def enter(kind: str) -> None:
        with guard:
            state[kind] += 1
            if state["writers"] > 1 or (state["writers"] and state["readers"]):
                state["violations"] += 1

    def leave(kind: str) -> None:
        with guard:
            state[kind] -= 1

    def read() -> None:
        for _ in range(300):
            with lock.read():
                enter("readers")
                time.sleep(0)  # let other threads run while inside
                leave("readers")

    def write() -> None:
        for _ in range(300):
            with lock.write():
                enter("writers")
                time.sleep(0)
                leave("writers")

    errors = run_threads([read, read, read, write, write])
    assert not errors and state["violations"] == 0
