"""Durability and recovery: restart, crash, lost or damaged graphs, damaged database files."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from nachbar.db import engine, recovery
from nachbar.db.engine import Database
from nachbar.db.errors import DataCorruptionError, DBError
from nachbar.db.filters import Condition, Op
from nachbar.db.storage import Storage
from nachbar.db.types import Entry, ExactConfig, Metric, SearchMode, StoreSpec

DIM = 16


def entries(start: int, stop: int, seed: int = 0) -> list[Entry]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((stop, DIM)).astype(np.float32)
    return [Entry(f"e{n:05d}", vectors[n], {"n": n, "odd": n % 2 == 1}) for n in range(start, stop)]


def open_db(path: Path) -> Database:
    return Database.open(path, fsync="off", checkpoint_seconds=0)


def fill(path: Path, count: int = 200) -> None:
    with open_db(path) as db:
        db.create_store(StoreSpec("s", DIM, predicate_indexes=("n",)))
        db.upsert("s", entries(0, count))


def graph_file(path: Path) -> Path:
    (graph,) = (path / engine.INDEX_DIR).glob("*.hnsw")
    return graph


def snapshot(db: Database) -> dict[str, object]:
    query = np.linspace(-1, 1, DIM).astype(np.float32)
    # bytes_used is left out: a damaged graph file still takes space until it is replaced.
    out: dict[str, object] = {"stores": [replace(i, bytes_used=0) for i in db.list_stores()]}
    for info in db.list_stores():
        page = db.get_by_predicate(info.name, None, limit=10_000, include_vectors=True)
        out[info.name] = page.entries
        for mode in SearchMode:
            result = db.get_sim_n(info.name, query, 7, mode=mode)
            out[f"{info.name}-{mode}"] = [(m.id, round(m.score, 5)) for m in result.matches]
    return out


def test_restart_restores_stores_and_loads_graphs(data_dir: Path) -> None:
    with open_db(data_dir) as db:
        db.create_store(
            StoreSpec("h", DIM, predicate_indexes=("n",), store_metadata={"model": "m1"})
        )
        db.create_store(StoreSpec("x", DIM, metric=Metric.L2, index=ExactConfig()))
        for name in ("h", "x"):
            db.upsert(name, entries(0, 300))
            db.delete_keys(name, ["e00003", "e00100"])
            db.upsert(name, entries(290, 310, seed=1))
        db.flush()
        before = snapshot(db)
        stores_before = db.list_stores()
    with open_db(data_dir) as db:
        assert snapshot(db) == before
        assert db.list_stores() == stores_before
        loaded = db.index_load_report("h")
        assert (loaded.action, loaded.replayed) == ("loaded", 0)
        assert db.index_load_report("x").action == "none"
        assert db.get_store("h").predicate_indexes == ("n",)
        assert db.get_store("h").store_metadata == {"model": "m1"}
        # The restored store keeps working: writes, filters, slot reuse.
        db.upsert("h", entries(3, 4, seed=2))
        hits = db.get_sim_n("h", entries(3, 4, seed=2)[0].vector, 1, mode=SearchMode.HNSW)
        assert hits.matches[0].id == "e00003"
        assert len(db.get_by_predicate("h", Condition("n", Op.LT, 10)).entries) == 10


CRASHING_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from nachbar.db.engine import Database
    from nachbar.db.types import Entry, StoreSpec

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((400, 16)).astype(np.float32)
    db = Database.open(sys.argv[1], fsync="full", checkpoint_seconds=0)
    db.create_store(StoreSpec("s", 16))
    db.upsert("s", [Entry(f"e{n}", vectors[n], {"n": n}) for n in range(300)])
    db.flush()
    db.upsert("s", [Entry(f"e{n}", vectors[n], {"n": n}) for n in range(300, 320)])
    db.upsert("s", [Entry(f"e{n}", -vectors[n], {"n": -n}) for n in range(5)])
    db.delete_keys("s", [f"e{n}" for n in range(100, 107)])
    print("acknowledged", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_acknowledged_writes_survive_kill_and_only_later_changes_are_replayed(
    data_dir: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert done.stdout.strip() == "acknowledged"
    with open_db(data_dir) as db:
        report = db.index_load_report("s")
        assert (report.action, report.replayed) == ("loaded", 25)  # 20 new + 5 changed
        assert db.get_store("s").count == 313
        found, missing = db.get_keys("s", ["e0", "e319", "e100"], include_vectors=True)
        assert [e.id for e in found] == ["e0", "e319"] and missing == ["e100"]
        assert found[0].metadata == {"n": 0}
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((400, 16)).astype(np.float32)
        np.testing.assert_array_equal(found[0].vector, -vectors[0])
        for n in (0, 4, 310, 319):  # replayed entries are findable through the graph
            query = -vectors[n] if n < 5 else vectors[n]
            top = db.get_sim_n("s", query, 1, mode=SearchMode.HNSW)
            assert (top.plan, top.matches[0].id) == ("hnsw", f"e{n}")
        for n in range(100, 107):  # deleted after the save: gone from the graph too
            top = db.get_sim_n("s", vectors[n], 5, mode=SearchMode.HNSW)
            assert f"e{n}" not in [m.id for m in top.matches]


def test_missing_graph_is_rebuilt(data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    fill(data_dir)
    with open_db(data_dir) as db:
        before = snapshot(db)
    graph_file(data_dir).unlink()
    with caplog.at_level(logging.WARNING, logger="nachbar.db"), open_db(data_dir) as db:
        report = db.index_load_report("s")
        assert report.action == "rebuilt" and "no saved graph" in report.reason
        assert snapshot(db) == before
    assert "rebuilding its HNSW graph" in caplog.text
    with open_db(data_dir) as db:  # the rebuilt graph was saved on close
        assert db.index_load_report("s").action == "loaded"


@pytest.mark.parametrize("damage", ["garble", "truncate", "sidecar", "ahead"])
def test_unusable_graph_is_rebuilt(data_dir: Path, damage: str) -> None:
    fill(data_dir)
    with open_db(data_dir) as db:
        before = snapshot(db)
    graph = graph_file(data_dir)
    sidecar = data_dir / engine.INDEX_DIR / "store-1.json"
    if damage == "garble":
        with graph.open("r+b") as handle:
            handle.seek(graph.stat().st_size // 2)
            handle.write(b"\xde\xad\xbe\xef" * 64)
    elif damage == "truncate":
        os.truncate(graph, graph.stat().st_size // 3)
    elif damage == "sidecar":
        sidecar.write_text("{not json")
    else:  # a graph that claims changes the database never saw
        meta = json.loads(sidecar.read_text())
        meta["seq"] += 1000
        sidecar.write_text(json.dumps(meta))
    with open_db(data_dir) as db:
        report = db.index_load_report("s")
        assert report.action == "rebuilt", report
        assert snapshot(db) == before


def test_graph_far_behind_is_rebuilt_not_replayed(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(data_dir, count=10)
    monkeypatch.setattr(recovery, "save_graph", lambda state, fsync: None)
    with open_db(data_dir) as db:
        db.upsert("s", entries(10, 1600))
    monkeypatch.undo()
    with open_db(data_dir) as db:
        report = db.index_load_report("s")
        assert report.action == "rebuilt" and "faster than replaying" in report.reason
        assert db.get_store("s").count == 1600


def test_failed_transaction_leaves_nothing(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fill(data_dir, count=5)

    def fail(*args: object) -> None:
        raise sqlite3.OperationalError("simulated failure after the rows were written")

    with open_db(data_dir) as db:
        monkeypatch.setattr(Storage, "set_seq", staticmethod(fail))
        with pytest.raises(DBError, match="simulated failure"):
            db.upsert("s", entries(5, 50))
        with pytest.raises(DBError, match="simulated failure"):
            db.delete_keys("s", ["e00001"])
        monkeypatch.undo()
        assert db.get_store("s").count == 5
        assert len(db.get_sim_n("s", np.ones(DIM), 100, mode=SearchMode.HNSW).matches) == 5
    with open_db(data_dir) as db:
        assert db.get_store("s").count == 5
        assert db.get_keys("s", ["e00010"])[1] == ["e00010"]


def corrupt_error(data_dir: Path) -> DataCorruptionError:
    with pytest.raises(DataCorruptionError) as caught:
        open_db(data_dir)
    assert str(data_dir / engine.DB_FILE) in caught.value.message
    return caught.value


def test_truncated_database_file(data_dir: Path) -> None:
    fill(data_dir, count=2000)
    db_file = data_dir / engine.DB_FILE
    os.truncate(db_file, db_file.stat().st_size // 2)
    corrupt_error(data_dir)


def test_garbled_database_file(data_dir: Path) -> None:
    fill(data_dir, count=2000)
    db_file = data_dir / engine.DB_FILE
    with db_file.open("r+b") as handle:
        handle.seek(db_file.stat().st_size // 2)
        handle.write(np.random.default_rng(0).bytes(8192))
    corrupt_error(data_dir)


def test_garbled_database_header(data_dir: Path) -> None:
    fill(data_dir)
    with (data_dir / engine.DB_FILE).open("r+b") as handle:
        handle.write(b"definitely not SQLite")
    assert "restore it from a backup" in corrupt_error(data_dir).message


@pytest.mark.parametrize("how", ["empty", "deleted"])
def test_lost_database_file_is_not_an_empty_database(data_dir: Path, how: str) -> None:
    fill(data_dir)
    db_file = data_dir / engine.DB_FILE
    if how == "empty":
        os.truncate(db_file, 0)
    else:
        db_file.unlink()
    assert "held data" in corrupt_error(data_dir).message


def test_damaged_row_is_detected(data_dir: Path) -> None:
    fill(data_dir)
    with sqlite3.connect(data_dir / engine.DB_FILE) as conn:
        conn.execute("UPDATE entries SET vector = ? WHERE id = 'e00042'", (b"\x00" * DIM * 4,))
    assert "entry 'e00042' of store 's' is damaged" in corrupt_error(data_dir).message


def test_data_directory_is_locked(data_dir: Path) -> None:
    with open_db(data_dir), pytest.raises(DBError, match="in use by another nachbar-db"):
        open_db(data_dir)
    open_db(data_dir).close()  # released on close


@pytest.mark.parametrize(("policy", "level"), [("full", 2), ("normal", 1), ("off", 0)])
def test_fsync_policy_sets_sqlite_synchronous(data_dir: Path, policy: str, level: int) -> None:
    with Database.open(data_dir, fsync=policy, checkpoint_seconds=0) as db:  # type: ignore[arg-type]
        conn = db._storage._conn
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == level
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_new_databases_use_pages_that_fit_vector_rows(data_dir: Path) -> None:
    """8 KB pages: rows of 384-d vectors fill them, where 4 KB pages stay a quarter empty."""
    rows = 2000
    with Database.open(data_dir, fsync="off", checkpoint_seconds=0) as db:
        assert db._storage._conn.execute("PRAGMA page_size").fetchone()[0] == 8192
        db.create_store(StoreSpec("wide", 384, index=ExactConfig()))
        vectors = np.random.default_rng(3).standard_normal((rows, 384)).astype(np.float32)
        db.upsert("wide", [Entry(f"w{n:05d}", vectors[n], {"n": n}) for n in range(rows)])
        db._storage._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = (data_dir / engine.DB_FILE).stat().st_size
    assert size < 1.15 * rows * 384 * 4
    # An existing database keeps its page size.
    legacy = data_dir.parent / "legacy"
    legacy.mkdir()
    conn = sqlite3.connect(legacy / engine.DB_FILE)
    conn.execute("PRAGMA page_size=4096")
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('format', '1')")
    conn.commit()
    conn.close()
    storage = Storage.open(legacy / engine.DB_FILE, fsync="off", marker=legacy / "marker")
    try:
        assert storage._conn.execute("PRAGMA page_size").fetchone()[0] == 4096
    finally:
        storage.close()


def test_background_checkpoint_saves_graphs(data_dir: Path) -> None:
    with Database.open(data_dir, fsync="off", checkpoint_seconds=0.05) as db:
        db.create_store(StoreSpec("s", DIM))
        db.upsert("s", entries(0, 20))
        deadline = time.monotonic() + 30
        graphs = data_dir / engine.INDEX_DIR
        while not list(graphs.glob("*.hnsw")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(graphs.glob("*.hnsw")), "no graph was saved in the background"


def test_dropped_store_leaves_no_graph_behind(data_dir: Path) -> None:
    fill(data_dir)
    with open_db(data_dir) as db:
        db.drop_store("s")
        assert not list((data_dir / engine.INDEX_DIR).glob("*"))
        db.create_store(StoreSpec("s", DIM))
        db.upsert("s", entries(0, 3))
    with open_db(data_dir) as db:
        assert db.get_store("s").count == 3
        assert db.index_load_report("s").action == "loaded"


def test_stale_graph_files_are_removed_on_open(data_dir: Path) -> None:
    fill(data_dir)
    graphs = data_dir / engine.INDEX_DIR
    graph = graph_file(data_dir)
    (graphs / "store-1.0-0123abcd.hnsw").write_bytes(b"an older save the sidecar no longer names")
    (graphs / "store-999.hnsw").write_bytes(b"left by a dropped store")
    (graphs / "store-999.json").write_text("{}")
    (graphs / "store-1.hnsw.tmp").write_bytes(b"half-written save")
    with open_db(data_dir) as db:
        assert db.index_load_report("s").action == "loaded"
    assert sorted(p.name for p in graphs.iterdir()) == [graph.name, "store-1.json"]


def test_foreign_sqlite_file_is_refused(data_dir: Path) -> None:
    data_dir.mkdir(parents=True)
    with sqlite3.connect(data_dir / engine.DB_FILE) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    assert "not a nachbar database" in corrupt_error(data_dir).message
