"""Many threads reading and writing at once: no errors, no torn results, nothing lost."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nachbar.db import engine
from nachbar.db.engine import Database
from nachbar.db.errors import StoreNotFoundError
from nachbar.db.filters import AllOf, Condition, Op
from nachbar.db.rwlock import ReadWriteLock
from nachbar.db.storage import Storage
from nachbar.db.store import StoreState
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


def _store_with_entries(data_dir: Path, count: int = 300, fsync: str = "full") -> Database:
    db = Database.open(data_dir, fsync=fsync, checkpoint_seconds=0)  # type: ignore[arg-type]
    rng = np.random.default_rng(1)
    db.create_store(StoreSpec("s", DIM))
    db.upsert("s", [Entry(f"base{n:04d}", rng.standard_normal(DIM)) for n in range(count)])
    return db


def test_readers_do_not_wait_for_a_writes_commit(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = _store_with_entries(data_dir)
    in_transaction, finish = threading.Event(), threading.Event()
    write_rows = Storage.upsert_entries

    def stalled_commit(*args: Any) -> None:
        write_rows(*args)
        in_transaction.set()
        assert finish.wait(30), "the test never let the commit finish"

    monkeypatch.setattr(Storage, "upsert_entries", staticmethod(stalled_commit))
    writer = threading.Thread(target=lambda: db.upsert("s", [Entry("new", np.ones(DIM))]))
    writer.start()
    try:
        assert in_transaction.wait(30)
        # The write is inside its transaction (the fsync, here held open): reads go on, and
        # do not see it yet.
        read: dict[str, object] = {}

        def reads() -> None:
            read["search"] = db.get_sim_n("s", np.ones(DIM), 3, mode=SearchMode.HNSW).matches
            read["keys"] = db.get_keys("s", ["new", "base0001"])
            read["store"] = db.get_store("s").count

        reader = threading.Thread(target=reads)
        reader.start()
        reader.join(10)
        assert not reader.is_alive(), "a read waited for another request's commit"
        assert read["keys"][1] == ["new"] and read["store"] == 300  # type: ignore[index]
        assert "new" not in [m.id for m in read["search"]]  # type: ignore[attr-defined]
    finally:
        finish.set()
        writer.join(30)
    assert db.get_keys("s", ["new"])[1] == []
    assert db.get_sim_n("s", np.ones(DIM), 1, mode=SearchMode.HNSW).matches[0].id == "new"
    db.close()


def test_a_large_upsert_lets_searches_in_between_its_graph_pieces(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = _store_with_entries(data_dir, fsync="off")
    index_slots = StoreState.index_slots
    pieces: list[int] = []

    def slow_pieces(self: StoreState, slots: np.ndarray) -> None:
        time.sleep(0.002 * len(slots))  # 2 ms per vector: the whole batch takes >= 1.2 s
        pieces.append(len(slots))
        index_slots(self, slots)
        self.seconds_per_insert = 0.002

    monkeypatch.setattr(StoreState, "index_slots", slow_pieces)
    rng = np.random.default_rng(2)
    batch = [Entry(f"big{n:04d}", rng.standard_normal(DIM)) for n in range(600)]
    writer = threading.Thread(target=lambda: db.upsert("s", batch))
    writer.start()
    while not pieces:
        time.sleep(0.001)
    slowest = 0.0
    searches = 0
    while writer.is_alive():
        start = time.perf_counter()
        db.get_sim_n("s", rng.standard_normal(DIM), 5, mode=SearchMode.HNSW)
        slowest = max(slowest, time.perf_counter() - start)
        searches += 1
    writer.join()
    assert sum(pieces) == 600 and len(pieces) > 10
    # Searches ran while the graph was being filled, none waited for the whole batch.
    assert searches >= 10
    assert slowest < 0.5, f"a search waited {slowest:.3f} s"
    assert batch[599].vector is not None
    top = db.get_sim_n("s", batch[599].vector, 1, mode=SearchMode.HNSW)
    assert top.matches[0].id == "big0599"
    db.close()


def test_a_graph_saved_during_a_write_is_replayed_from_before_it(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = _store_with_entries(data_dir, fsync="off")
    db.flush()
    index_slots = StoreState.index_slots
    saved = threading.Event()
    calls = 0

    def pieces_with_a_save_between(self: StoreState, slots: np.ndarray) -> None:
        nonlocal calls
        calls += 1
        index_slots(self, slots)
        if calls == 2:
            # Queued as a reader now, the save runs before the next piece takes the lock.
            def save() -> None:
                db.flush()
                saved.set()

            threading.Thread(target=save).start()
            time.sleep(0.2)
        if calls == 3:
            assert saved.is_set(), "the save did not get in between two pieces"

    monkeypatch.setattr(StoreState, "index_slots", pieces_with_a_save_between)
    monkeypatch.setattr(engine, "GRAPH_PIECE_SECONDS", 0.0)  # one vector per piece
    rng = np.random.default_rng(3)
    batch = [Entry(f"new{n}", rng.standard_normal(DIM)) for n in range(5)]
    db.upsert("s", batch)
    monkeypatch.undo()
    assert calls == 5 and saved.is_set()
    # A crash now: the saved graph holds part of the write. Open a copy of the files as they are.
    crashed = tmp_path / "crashed"
    shutil.copytree(data_dir, crashed, ignore=shutil.ignore_patterns("LOCK"))
    db.close()
    with Database.open(crashed, fsync="off", checkpoint_seconds=0) as again:
        report = again.index_load_report("s")
        assert (report.action, report.replayed) == ("loaded", 5)
        for entry in batch:
            assert entry.vector is not None
            top = again.get_sim_n("s", entry.vector, 1, mode=SearchMode.HNSW)
            assert (top.plan, top.matches[0].id) == ("hnsw", entry.id)


def test_rwlock_a_writer_taking_it_again_and_again_does_not_starve_readers() -> None:
    lock = ReadWriteLock()
    writer_done = threading.Event()
    reads_before_writer_done = 0

    def write() -> None:
        for _ in range(200):
            with lock.write():
                time.sleep(0.002)
        writer_done.set()

    def read() -> None:
        nonlocal reads_before_writer_done
        for _ in range(20):
            with lock.read():
                if not writer_done.is_set():
                    reads_before_writer_done += 1

    errors = run_threads([write, read])
    assert not errors
    # 200 writes take >= 0.4 s; readers get in between them rather than after all of them.
    assert reads_before_writer_done == 20
