"""Coming back quickly after a crash, and refusing a database that lost committed writes.

Covers nachbar.db.recovery and the graph files of nachbar.db.hnsw: snapshots written as links
without vectors (and hnswlib's own files, still read), checkpoints by change count, a kill in
the middle of a checkpoint, graphs restored in the background while the store serves, and the
committed mark that catches a damaged or deleted SQLite WAL.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from pathlib import Path

import hnswlib
import numpy as np
import pytest

from nachbar.db import engine, recovery
from nachbar.db.engine import Database
from nachbar.db.errors import DataCorruptionError
from nachbar.db.hnsw import GraphFiles, GraphUnusableError, HnswGraph, VectorSource
from nachbar.db.store import StoreState
from nachbar.db.types import Entry, HnswConfig, Metric, SearchMode, StoreSpec

DIM = 16


def entries(start: int, stop: int, seed: int = 0, dim: int = DIM) -> list[Entry]:
    vectors = np.random.default_rng(seed).standard_normal((stop, dim)).astype(np.float32)
    return [Entry(f"e{n:05d}", vectors[n], {"n": n}) for n in range(start, stop)]


def graph_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / engine.INDEX_DIR).glob("*.hnsw"))


def sidecar(data_dir: Path, store_id: int = 1) -> dict[str, object]:
    loaded = json.loads((data_dir / engine.INDEX_DIR / f"store-{store_id}.json").read_text())
    assert isinstance(loaded, dict)
    return loaded


def run_child(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout
    )


# ---- graph snapshots ----------------------------------------------------------------------------


def source_of(vectors: np.ndarray, changed: frozenset[int] = frozenset()) -> VectorSource:
    """A store's vectors as `HnswGraph.load` asks for them (`changed` ones changed after the
    save)."""

    def rows(labels: np.ndarray) -> np.ndarray:
        out: np.ndarray = vectors[labels].copy()
        out[[i for i, label in enumerate(labels.tolist()) if label in changed]] *= -1
        return out

    return rows


@pytest.mark.parametrize("metric", [Metric.COSINE, Metric.L2, Metric.INNER_PRODUCT])
def test_snapshot_holds_links_without_vectors_and_loads_into_the_same_graph(
    tmp_path: Path, metric: Metric
) -> None:
    """The graph file leaves the vectors out (SQLite holds them); loading puts the store's
    vectors back and gives hnswlib exactly the graph it had: links, levels, labels, deletions
    and vectors (as hnswlib normalizes them for cosine)."""
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((3000, DIM)).astype(np.float32)
    # M=4 puts about a third of the nodes on upper levels; labels need not be 0..n-1.
    labels = np.arange(3000) * 2
    by_label = np.zeros((6000, DIM), dtype=np.float32)
    by_label[labels] = vectors
    graph = HnswGraph.create(DIM, metric, HnswConfig(m=4, ef_construction=40), 8000)
    graph.add(vectors, labels)
    graph.mark_deleted(labels[::7])
    reference = tmp_path / "reference.hnsw"
    graph._index.save_index(str(reference))

    files = GraphFiles(tmp_path / "indexes", 5)
    written, size = graph.snapshot().write(files, seq=9, fsync=False, settings={"m": 4})
    assert size == written.stat().st_size
    vector_bytes, fingerprint_bytes = 3000 * DIM * 4, 3000 * 16
    assert size == reference.stat().st_size - vector_bytes + fingerprint_bytes
    assert sidecar(tmp_path, 5)["graph_file"] == written.name
    assert sidecar(tmp_path, 5)["format"] == 2

    loaded, seq = HnswGraph.load(
        files,
        dimension=DIM,
        metric=metric,
        settings={"m": 4},
        capacity=8000,
        vectors=source_of(by_label),
    )
    assert seq == 9 and loaded.capacity == 8000
    (before,) = graph._index.__getstate__()
    (after,) = loaded._index.__getstate__()
    for key in ("cur_element_count", "max_level", "enterpoint_node", "element_levels"):
        assert np.array_equal(before[key], after[key]), key
    assert np.array_equal(before["link_lists"], after["link_lists"])
    assert np.array_equal(before["label_lookup_external"], after["label_lookup_external"])
    nodes, node_size = before["cur_element_count"], before["size_data_per_element"]
    old = before["data_level0"].view(np.uint8).reshape(nodes, node_size)
    new = after["data_level0"].view(np.uint8).reshape(nodes, node_size)
    links, label_offset = before["offset_data"], before["label_offset"]
    assert np.array_equal(old[:, :links], new[:, :links])  # deletion marks included
    assert np.array_equal(old[:, label_offset:], new[:, label_offset:])
    old_vectors = old[:, links:label_offset].copy().view(np.float32)
    new_vectors = new[:, links:label_offset].copy().view(np.float32)
    assert np.allclose(old_vectors, new_vectors, rtol=0, atol=1e-6)
    for query in vectors[:30]:  # the same answers as the graph it was saved from
        found, expected = loaded.search(query, 20, None), graph.search(query, 20, None)
        assert found is not None and expected is not None
        assert np.array_equal(found[0], expected[0])
    found = loaded.search(vectors[7], 20, None)
    assert found is not None and labels[7] not in found[0].tolist()  # still deleted
    # Loading again into more room, then adding: it is a working hnswlib index.
    bigger, _ = HnswGraph.load(
        files,
        dimension=DIM,
        metric=metric,
        settings={"m": 4},
        capacity=9000,
        vectors=source_of(by_label),
    )
    bigger.add(vectors[:1] + 1, np.array([8500]))
    assert 8500 in bigger.labels().tolist()
    found = bigger.search(vectors[0] + 1, 2000, None)
    assert found is not None and 8500 in found[0].tolist()


@pytest.mark.parametrize("metric", list(Metric))
def test_nodes_whose_vector_changed_after_the_save_load_as_zero_for_the_replay(
    tmp_path: Path, metric: Metric
) -> None:
    rng = np.random.default_rng(5)
    vectors = 10 * rng.standard_normal((200, DIM)).astype(np.float32)
    graph = HnswGraph.create(DIM, metric, HnswConfig(), 400)
    graph.add(vectors, np.arange(200))
    files = GraphFiles(tmp_path, 2)
    graph.snapshot().write(files, seq=3, fsync=False, settings={})
    now = vectors.copy()
    now[4] *= -1  # another vector
    now[9, 0] += 1e-2  # a slightly different one
    now[11] = 0  # a free slot

    loaded, _ = HnswGraph.load(
        files,
        dimension=DIM,
        metric=metric,
        settings={},
        capacity=400,
        vectors=lambda labels: now[labels],
    )
    held = loaded.holds(vectors, np.arange(200), np.arange(200))
    assert held.sum() == 197 and not held[[4, 9, 11]].any()
    stored = np.asarray(loaded._index.get_items([4, 9, 11]))
    assert not stored.any()  # zero rows: the replay re-inserts them


def test_graphs_saved_in_hnswlibs_own_format_still_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    vectors = rng.standard_normal((300, DIM)).astype(np.float32)
    graph = HnswGraph.create(DIM, Metric.COSINE, HnswConfig(), 400)
    graph.add(vectors, np.arange(300))
    files = GraphFiles(tmp_path, 3)
    files.directory.mkdir(exist_ok=True)
    graph._index.save_index(str(files.legacy_graph))
    data = files.legacy_graph.read_bytes()
    files.sidecar.write_text(
        json.dumps(
            {
                "format": 1,
                "store_id": 3,
                "seq": 4,
                "graph_bytes": len(data),
                "graph_crc32": zlib.crc32(data),
                "capacity": 400,
            }
        )
    )

    def no_vectors(labels: np.ndarray) -> np.ndarray:
        raise AssertionError("a format-1 file holds its vectors")

    loaded, seq = HnswGraph.load(
        files, dimension=DIM, metric=Metric.COSINE, settings={}, capacity=400, vectors=no_vectors
    )
    assert seq == 4
    found = loaded.search(vectors[17], 5, None)
    assert found is not None and found[0][0] == 17


def test_damaged_link_files_are_refused(tmp_path: Path) -> None:
    vectors = np.random.default_rng(8).standard_normal((100, DIM)).astype(np.float32)
    graph = HnswGraph.create(DIM, Metric.L2, HnswConfig(), 200)
    graph.add(vectors, np.arange(100))
    files = GraphFiles(tmp_path, 4)
    written, _ = graph.snapshot().write(files, seq=1, fsync=False, settings={})
    # A file cut short, with a sidecar that matches it: the layout check refuses it.
    data = written.read_bytes()[:-40]
    written.write_bytes(data)
    record = json.loads(files.sidecar.read_text())
    record.update(graph_bytes=len(data), graph_crc32=zlib.crc32(data))
    files.sidecar.write_text(json.dumps(record))
    with pytest.raises(GraphUnusableError, match="could not load"):
        HnswGraph.load(
            files,
            dimension=DIM,
            metric=Metric.L2,
            settings={},
            capacity=200,
            vectors=source_of(vectors),
        )
    # Another dimension than the file's nodes.
    with pytest.raises(GraphUnusableError):
        HnswGraph.load(
            files,
            dimension=DIM * 2,
            metric=Metric.L2,
            settings={},
            capacity=200,
            vectors=source_of(vectors),
        )


def test_snapshot_is_not_changed_by_later_writes(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    vectors = rng.standard_normal((500, DIM)).astype(np.float32)
    graph = HnswGraph.create(DIM, Metric.L2, HnswConfig(), 1000)
    graph.add(vectors[:300], np.arange(300))
    snapshot = graph.snapshot()
    graph.add(vectors[300:], np.arange(300, 500))  # after the snapshot: not in the file
    files = GraphFiles(tmp_path, 1)
    snapshot.write(files, seq=1, fsync=False, settings={})
    loaded, _ = HnswGraph.load(
        files,
        dimension=DIM,
        metric=Metric.L2,
        settings={},
        capacity=1000,
        vectors=source_of(vectors),
    )
    assert sorted(loaded.labels().tolist()) == list(range(300))


# ---- checkpoints --------------------------------------------------------------------------------


def test_checkpoint_once_enough_entries_changed(data_dir: Path) -> None:
    with Database.open(data_dir, fsync="off", checkpoint_seconds=0, checkpoint_changes=200) as db:
        db.create_store(StoreSpec("s", DIM))
        db.upsert("s", entries(0, 150))
        time.sleep(2 * recovery.MARK_INTERVAL_SECONDS)
        assert graph_files(data_dir) == [], "saved before 200 entries changed"
        db.upsert("s", entries(150, 250))
        deadline = time.monotonic() + 30
        while not graph_files(data_dir) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(graph_files(data_dir)) == 1, "no checkpoint after 250 changed entries"
        assert sidecar(data_dir)["seq"] == 2
        db.upsert("s", entries(250, 260))
    # Closing saved the last 10 under a new name and removed the older file.
    (graph,) = graph_files(data_dir)
    assert sidecar(data_dir) == {**sidecar(data_dir), "seq": 3, "graph_file": graph.name}
    with Database.open(data_dir, fsync="off", checkpoint_seconds=0) as db:
        report = db.index_load_report("s")
        assert (report.action, report.replayed) == ("loaded", 0)


def test_time_trigger_counts_from_the_last_snapshot(data_dir: Path) -> None:
    """Under a steady stream of writes there is always something unsaved; the age that the time
    trigger compares is that of the oldest change the last save did not cover."""
    with Database.open(data_dir, fsync="off", checkpoint_seconds=1000, checkpoint_changes=0) as db:
        db.create_store(StoreSpec("s", DIM))
        db.upsert("s", entries(0, 10))
        state = db._stores["s"]
        first = state.unsaved_since
        assert first is not None and state.unsaved_changes == 10
        with state.lock.read():
            _, point = state.graph_snapshot()
        db.upsert("s", entries(10, 25))  # after the snapshot: not in it
        with state.lock.read():
            state.graph_saved(point, 0)
        assert state.unsaved_changes == 15
        assert state.unsaved_since == point.taken_at and point.taken_at > first
        with state.lock.read():
            _, point = state.graph_snapshot()
            state.graph_saved(point, 0)
        saved: tuple[int, float | None] = (state.unsaved_changes, state.unsaved_since)
        assert saved == (0, None)


def test_graph_unchanged_since_its_save_is_not_saved_again(data_dir: Path) -> None:
    with Database.open(data_dir, fsync="off", checkpoint_seconds=0) as db:
        db.create_store(StoreSpec("s", DIM))
        db.upsert("s", entries(0, 50))
    (first,) = graph_files(data_dir)
    with Database.open(data_dir, fsync="off", checkpoint_seconds=0) as db:
        db.get_sim_n("s", entries(0, 1)[0].vector, 3)
    assert graph_files(data_dir) == [first]


def test_checkpoint_between_the_pieces_of_an_upsert(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upsert enters the graph a piece at a time, and a checkpoint may run in between: the
    graph it saves holds part of that upsert but reflects the change before it, the upsert
    stays counted as unsaved, and a restart from that graph replays the rest of it."""
    vectors = np.random.default_rng(9).standard_normal((600, DIM)).astype(np.float32)
    db = Database.open(data_dir, fsync="off", checkpoint_seconds=0, checkpoint_changes=0)
    db.create_store(StoreSpec("s", DIM))
    db.upsert("s", [Entry(f"e{n}", vectors[n], {}) for n in range(300)])  # change 1, unsaved
    state = db._stores["s"]
    monkeypatch.setattr(engine, "MAX_GRAPH_PIECE", 50)
    checkpoints: list[threading.Thread] = []
    index_piece = engine._index_piece

    def piece_then_checkpoint(
        piece_state: StoreState, slots: np.ndarray, start: int, seq: int, written: int
    ) -> int:
        end = index_piece(piece_state, slots, start, seq, written)
        if start > 0 and not checkpoints:  # the write lock is held: the save waits for it
            save = threading.Thread(
                target=recovery.save_graph, args=(state,), kwargs={"fsync": False}
            )
            checkpoints.append(save)
            save.start()
            time.sleep(0.3)  # the save is waiting for the read lock when this piece ends
        return end

    monkeypatch.setattr(engine, "_index_piece", piece_then_checkpoint)
    db.upsert("s", [Entry(f"e{n}", vectors[n], {}) for n in range(300, 600)])  # change 2
    (save,) = checkpoints
    save.join(30)
    assert sidecar(data_dir)["seq"] == 1 and state.saved_seq == 1
    assert state.unsaved_changes == 300 and state.graph_needs_save()
    saved, _ = state.load_saved_graph(600)
    in_saved = len(saved.labels())
    assert 300 < in_saved < 600, "the checkpoint did not run in the middle of the upsert"

    monkeypatch.setattr(recovery, "save_graph", lambda state, fsync: None)  # a crash
    db.close()
    monkeypatch.undo()
    with Database.open(data_dir, fsync="off", checkpoint_seconds=0) as db:
        report = db.index_load_report("s")
        assert (report.action, report.replayed) == ("loaded", 600 - in_saved)
        for n in (0, 299, 300, 450, 599):
            top = db.get_sim_n("s", vectors[n], 1, mode=SearchMode.HNSW)
            assert (top.plan, top.matches[0].id) == ("hnsw", f"e{n}")


KILLED_MID_CHECKPOINT = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    from nachbar.db.engine import Database
    from nachbar.db.types import Entry, StoreSpec

    vectors = np.random.default_rng(0).standard_normal((600, 16)).astype(np.float32)
    db = Database.open(sys.argv[1], fsync="full", checkpoint_seconds=0, checkpoint_changes=150)
    db.create_store(StoreSpec("s", 16))
    db.upsert("s", [Entry(f"e{n}", vectors[n], {"n": n}) for n in range(100)])
    db.flush()
    replace = os.replace

    def stall_before_the_sidecar(src, dst):
        if str(dst).endswith(".json") and "indexes" in str(dst):
            print("checkpoint: graph written, sidecar not yet", flush=True)
            time.sleep(60)
        replace(src, dst)

    os.replace = stall_before_the_sidecar
    db.upsert("s", [Entry(f"e{n}", vectors[n], {"n": n}) for n in range(100, 300)])
    print("acknowledged", flush=True)
    time.sleep(60)
    """
)


def test_kill_during_a_checkpoint_keeps_the_previous_graph(data_dir: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_MID_CHECKPOINT, str(data_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    lines: list[str] = []
    try:
        while len(lines) < 2:
            line = child.stdout.readline()
            assert line, f"the writer ended early after {lines}"
            lines.append(line.strip())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert sorted(lines) == ["acknowledged", "checkpoint: graph written, sidecar not yet"]
    assert len(graph_files(data_dir)) == 2  # the old graph and the one not yet named
    with Database.open(data_dir, fsync="off", checkpoint_seconds=0) as db:
        report = db.index_load_report("s")
        # The sidecar still named the first graph: loaded and replayed, no rebuild.
        assert (report.action, report.replayed) == ("loaded", 200)
        assert db.get_store("s").count == 300
        vectors = np.random.default_rng(0).standard_normal((600, 16)).astype(np.float32)
        for n in (0, 99, 100, 299):
            top = db.get_sim_n("s", vectors[n], 1, mode=SearchMode.HNSW)
            assert (top.plan, top.matches[0].id) == ("hnsw", f"e{n}")
    assert len(graph_files(data_dir)) == 1  # the unnamed one was removed on open


def test_failed_save_leaves_the_previous_graph_usable(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = data_dir / engine.INDEX_DIR / "store-1.json.tmp"
    with Database.open(data_dir, fsync="off", checkpoint_seconds=0) as db:
        db.create_store(StoreSpec("s", DIM))
        db.upsert("s", entries(0, 100))
        db.flush()
        db.upsert("s", entries(100, 120))
        blocker.mkdir()  # the new sidecar cannot be written, after the new graph was
        with caplog.at_level(logging.ERROR, logger="nachbar.db"):
            db.flush()  # logged, not raised: the graph is derived data
        assert "could not save its graph" in caplog.text
    blocker.rmdir()
    with Database.open(data_dir, fsync="off", checkpoint_seconds=0) as db:
        report = db.index_load_report("s")
        assert (report.action, report.replayed) == ("loaded", 20)


# ---- graphs restored in the background ----------------------------------------------------------


def test_store_serves_while_its_graph_is_restored(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vectors = np.random.default_rng(0).standard_normal((700, DIM)).astype(np.float32)
    with Database.open(data_dir, fsync="off", checkpoint_seconds=0) as db:
        db.create_store(StoreSpec("s", DIM))
        db.upsert("s", [Entry(f"e{n}", vectors[n], {"n": n}) for n in range(500)])
        db.flush()
        db.upsert("s", [Entry(f"e{n}", vectors[n], {"n": n}) for n in range(500, 600)])

    release = threading.Event()
    load = StoreState.load_saved_graph

    def held_back(state: StoreState, capacity: int) -> tuple[HnswGraph, int]:
        assert release.wait(60)
        return load(state, capacity)

    monkeypatch.setattr(StoreState, "load_saved_graph", held_back)
    db = Database.open(data_dir, fsync="off", checkpoint_seconds=0, wait_for_indexes=False)
    try:
        assert db.index_load_report("s").action == "pending"
        assert not db.wait_for_indexes(timeout=0.2)
        # Searches answer, exactly, from the rows; writes go on.
        top = db.get_sim_n("s", vectors[550], 1, mode=SearchMode.HNSW)
        assert (top.plan, top.matches[0].id) == ("exact", "e550")
        db.upsert("s", [Entry(f"e{n}", vectors[n], {"n": n}) for n in range(600, 700)])
        db.upsert("s", [Entry("e00007", -vectors[7], {"n": -7})])
        assert db.delete_keys("s", ["e10", "e520", "e650"]) == 3
        release.set()
        assert db.wait_for_indexes(timeout=60)
        report = db.index_load_report("s")
        # Replayed the 100 written before the restart, and caught up with the writes above.
        assert report.action == "loaded" and report.replayed >= 100
        for n in (0, 499, 500, 599, 600, 699):
            top = db.get_sim_n("s", vectors[n], 1, mode=SearchMode.HNSW)
            assert (top.plan, top.matches[0].id) == ("hnsw", f"e{n}")
        top = db.get_sim_n("s", -vectors[7], 1, mode=SearchMode.HNSW)
        assert top.matches[0].id == "e00007"
        for n in (10, 520, 650):
            found = db.get_sim_n("s", vectors[n], 5, mode=SearchMode.HNSW).matches
            assert f"e{n}" not in [m.id for m in found]
    finally:
        db.close()


def test_rebuild_in_the_background_catches_up_with_writes(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    vectors = np.random.default_rng(1).standard_normal((3000, DIM)).astype(np.float32)
    with Database.open(data_dir, fsync="off", checkpoint_seconds=0) as db:
        db.create_store(StoreSpec("s", DIM))
        db.upsert("s", [Entry(f"e{n}", vectors[n], {}) for n in range(2500)])
    for graph in graph_files(data_dir):
        graph.unlink()
    monkeypatch.setattr(recovery, "FINAL_CATCH_UP", 10)
    monkeypatch.setattr(recovery, "RESTORE_PIECE", 100)  # many rounds, writes between them
    with caplog.at_level(logging.WARNING, logger="nachbar.db"):
        db = Database.open(data_dir, fsync="off", checkpoint_seconds=0, wait_for_indexes=False)
    try:
        for n in range(2500, 3000, 50):
            db.upsert("s", [Entry(f"e{m}", vectors[m], {}) for m in range(n, n + 50)])
        assert db.wait_for_indexes(timeout=120)
        report = db.index_load_report("s")
        assert report.action == "rebuilt" and "no saved graph" in report.reason
        assert "rebuilding its HNSW graph" in caplog.text
        for n in (0, 2499, 2500, 2999):
            top = db.get_sim_n("s", vectors[n], 1, mode=SearchMode.HNSW)
            assert (top.plan, top.matches[0].id) == ("hnsw", f"e{n}")
    finally:
        db.close()


@pytest.mark.parametrize("metric", list(Metric))
def test_entries_rewritten_with_the_same_vector_are_not_replayed(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, metric: Metric
) -> None:
    vectors = np.random.default_rng(5).standard_normal((400, DIM)).astype(np.float32)
    with Database.open(data_dir, fsync="off", checkpoint_seconds=0) as db:
        db.create_store(StoreSpec("s", DIM, metric=metric))
        db.upsert("s", [Entry(f"e{n}", vectors[n], {"v": 1}) for n in range(300)])
        db.flush()
        monkeypatch.setattr(recovery, "save_graph", lambda state, fsync: None)  # a crash
        db.upsert("s", [Entry(f"e{n}", vectors[n], {"v": 2}) for n in range(200)])  # same
        db.upsert("s", [Entry(f"e{n}", -vectors[n], {"v": 3}) for n in range(10)])  # moved
        db.upsert("s", [Entry(f"e{n}", vectors[n], {"v": 1}) for n in range(300, 400)])  # new
    monkeypatch.undo()
    with Database.open(data_dir, fsync="off", checkpoint_seconds=0) as db:
        report = db.index_load_report("s")
        assert (report.action, report.replayed) == ("loaded", 110)
        assert db.get_keys("s", ["e150"])[0][0].metadata == {"v": 2}
        for n in (0, 9, 150, 350):
            query = -vectors[n] if n < 10 else vectors[n]
            top = db.get_sim_n("s", query, 1, mode=SearchMode.HNSW)
            assert (top.plan, top.matches[0].id) == ("hnsw", f"e{n}")


def test_close_while_a_graph_is_restored(data_dir: Path) -> None:
    vectors = np.random.default_rng(2).standard_normal((2000, DIM)).astype(np.float32)
    with Database.open(data_dir, fsync="off", checkpoint_seconds=0) as db:
        db.create_store(StoreSpec("s", DIM))
        db.upsert("s", [Entry(f"e{n}", vectors[n], {}) for n in range(2000)])
    for graph in graph_files(data_dir):
        graph.unlink()
    db = Database.open(data_dir, fsync="off", checkpoint_seconds=0, wait_for_indexes=False)
    db.close()  # stops the rebuild; nothing half-built is saved
    with Database.open(data_dir, fsync="off", checkpoint_seconds=0) as db:
        assert db.index_load_report("s").action in ("rebuilt", "loaded")
        assert db.get_store("s").count == 2000


def test_dropping_a_store_while_its_graph_is_restored(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Database.open(data_dir, fsync="off", checkpoint_seconds=0) as db:
        db.create_store(StoreSpec("s", DIM))
        db.upsert("s", entries(0, 300))
    release = threading.Event()
    load = StoreState.load_saved_graph

    def held_back(state: StoreState, capacity: int) -> tuple[HnswGraph, int]:
        assert release.wait(60)
        return load(state, capacity)

    monkeypatch.setattr(StoreState, "load_saved_graph", held_back)
    db = Database.open(data_dir, fsync="off", checkpoint_seconds=0, wait_for_indexes=False)
    try:
        assert db.drop_store("s")
        release.set()
        assert db.wait_for_indexes(timeout=60)
        assert db.list_stores() == []
    finally:
        db.close()
    assert graph_files(data_dir) == []


def test_loading_detects_a_slot_held_twice(data_dir: Path) -> None:
    import sqlite3

    with Database.open(data_dir, fsync="off", checkpoint_seconds=0) as db:
        db.create_store(StoreSpec("s", DIM))
        db.upsert("s", entries(0, 20))
    with sqlite3.connect(data_dir / engine.DB_FILE) as conn:
        conn.execute("UPDATE entries SET slot = 3 WHERE id = 'e00011'")
    with pytest.raises(DataCorruptionError, match="of store 's' is damaged"):
        Database.open(data_dir, fsync="off", checkpoint_seconds=0)


# ---- lost commits: the committed mark -----------------------------------------------------------

ACKNOWLEDGED_THEN_KILLED = textwrap.dedent(
    """
    import json, os, signal, sys, time
    import numpy as np
    from nachbar.db.engine import Database
    from nachbar.db.types import Entry, StoreSpec

    data_dir, dim = sys.argv[1], int(sys.argv[2])
    vectors = np.random.default_rng(0).standard_normal((6000, dim)).astype(np.float32)
    db = Database.open(data_dir, fsync="full", checkpoint_seconds=0)
    db.create_store(StoreSpec("s", dim))
    db.create_store(StoreSpec("dropped", dim))
    db.drop_store("dropped")
    for batch in range(60):
        db.upsert("s", [Entry(f"e{n}", vectors[n], {"n": n}) for n in range(batch * 100,
                  batch * 100 + 100)])
    # The mark is written within a second of the last write; wait for it, then crash.
    mark = os.path.join(data_dir, "committed.json")
    def mark_seq():
        try:
            return json.load(open(mark))["store_seqs"].get("1")
        except FileNotFoundError:  # not written yet
            return None
    while mark_seq() != 60:
        time.sleep(0.05)
    print("acknowledged", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def crash_after_writes(data_dir: Path, dim: int) -> Path:
    done = run_child(ACKNOWLEDGED_THEN_KILLED, str(data_dir), str(dim))
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert done.stdout.strip() == "acknowledged"
    wal = data_dir / (engine.DB_FILE + "-wal")
    assert wal.stat().st_size > 0
    return wal


def lost_commits(data_dir: Path) -> str:
    with pytest.raises(DataCorruptionError) as caught:
        Database.open(data_dir, fsync="full", checkpoint_seconds=0)
    message = caught.value.message
    assert "lost committed writes" in message
    assert str(data_dir / (engine.DB_FILE + "-wal")) in message
    assert str(data_dir / recovery.COMMITTED_FILE) in message
    return message


def test_clean_kill_loses_nothing_and_opens(data_dir: Path) -> None:
    crash_after_writes(data_dir, DIM)
    with Database.open(data_dir, fsync="full", checkpoint_seconds=0) as db:
        assert db.get_store("s").count == 6000
        assert [s.name for s in db.list_stores()] == ["s"]


def test_flipped_byte_in_the_wal_is_refused(data_dir: Path) -> None:
    wal = crash_after_writes(data_dir, DIM)  # small rows: every commit is still in the WAL
    with wal.open("r+b") as handle:
        handle.seek(wal.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x01]))
    message = lost_commits(data_dir)
    assert "store 's' reaches change" in message and "but change 60 was committed" in message


def test_deleted_wal_is_refused(data_dir: Path) -> None:
    # Bigger rows: SQLite has checkpointed earlier commits into the database file, so the file
    # opens, but without the commits only the WAL held.
    wal = crash_after_writes(data_dir, 256)
    wal.unlink()
    lost_commits(data_dir)


def test_deleting_the_mark_accepts_the_loss(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wal = crash_after_writes(data_dir, 256)
    wal.unlink()
    lost_commits(data_dir)
    (data_dir / recovery.COMMITTED_FILE).unlink()
    with (
        caplog.at_level(logging.WARNING, logger="nachbar.db"),
        Database.open(data_dir, fsync="full", checkpoint_seconds=0) as db,
    ):
        assert 0 < db.get_store("s").count < 6000
    assert "opening without checking for lost commits" in caplog.text
    with Database.open(data_dir, fsync="full", checkpoint_seconds=0):  # a new mark was written
        pass
    assert recovery.read_mark(data_dir / recovery.COMMITTED_FILE) is not None


def mark_of(data_dir: Path) -> recovery.CommittedMark:
    mark = recovery.read_mark(data_dir / recovery.COMMITTED_FILE)
    assert mark is not None
    return mark


def test_mark_tracks_creates_and_drops(data_dir: Path) -> None:
    with Database.open(data_dir, fsync="off", checkpoint_seconds=0) as db:
        db.create_store(StoreSpec("a", DIM))
        db.create_store(StoreSpec("b", DIM))
        db.upsert("a", entries(0, 5))
        db.drop_store("b")
        db.flush()
        assert mark_of(data_dir) == recovery.CommittedMark(store_seqs={1: 1}, max_store_id=2)
    # A lost CreateStore, a lost DropStore, a store behind its mark: each is refused.
    cases = {
        "stores up to id 3 were created": recovery.CommittedMark({1: 1, 3: 0}, 3),
        "store 'a' was dropped, but it is back": recovery.CommittedMark({}, 2),
        "store 'a' reaches change 1, but change 4 was committed": recovery.CommittedMark({1: 4}, 2),
    }
    for expected, mark in cases.items():
        recovery.write_mark(data_dir / recovery.COMMITTED_FILE, mark, fsync=False)
        with pytest.raises(DataCorruptionError, match=expected):
            Database.open(data_dir, fsync="off", checkpoint_seconds=0)
    # A store dropped after the mark was written is no loss.
    recovery.write_mark(
        data_dir / recovery.COMMITTED_FILE, recovery.CommittedMark({1: 1, 2: 0}, 2), fsync=False
    )
    Database.open(data_dir, fsync="off", checkpoint_seconds=0).close()


def test_unreadable_mark_is_refused_naming_it(data_dir: Path) -> None:
    with Database.open(data_dir, fsync="off", checkpoint_seconds=0) as db:
        db.create_store(StoreSpec("a", DIM))
    mark = data_dir / recovery.COMMITTED_FILE
    mark.write_text('{"format": 1, "store_seqs": {"1": "x"')
    with pytest.raises(DataCorruptionError, match="committed.json, the record of committed"):
        Database.open(data_dir, fsync="off", checkpoint_seconds=0)


def test_a_new_database_ignores_a_leftover_mark(data_dir: Path) -> None:
    data_dir.mkdir(parents=True)
    recovery.write_mark(
        data_dir / recovery.COMMITTED_FILE, recovery.CommittedMark({1: 50}, 1), fsync=False
    )
    with Database.open(data_dir, fsync="off", checkpoint_seconds=0) as db:
        assert db.list_stores() == []
    assert mark_of(data_dir) == recovery.CommittedMark({}, 0)


def test_hnswlib_is_the_pinned_format() -> None:
    # Graph files follow hnswlib 0.8's node layout and pickle state; a new hnswlib must be
    # re-checked by test_snapshot_holds_links_without_vectors_... before the pin moves.
    index = hnswlib.Index(space="l2", dim=2)
    index.init_index(max_elements=1)
    (state,) = index.__getstate__()
    assert state["ser_version"] == 1
