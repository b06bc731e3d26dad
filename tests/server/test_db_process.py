"""nachbar-db as a real process: kill -9 durability, graceful SIGTERM, corrupt files."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from nachbar.client import DBClient, NachbarError
from tests.servers import spawn

DIM = 16
BATCH = 50


def _batch(n: int) -> list[tuple[str, np.ndarray, dict[str, int | str]]]:
    rng = np.random.default_rng(n)
    vectors = rng.normal(size=(BATCH, DIM)).astype(np.float32)
    return [
        (f"b{n}-{i}", vectors[i], {"batch": n, "i": i, "tag": f"t{i % 3}"}) for i in range(BATCH)
    ]


def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = spawn("nachbar-db", ["--data-dir", str(data)], tmp_path)
    acknowledged: list[int] = []
    stop = threading.Event()
    with DBClient(server.address, timeout=10) as db:
        db.create_store("durable", DIM)

    def writer() -> None:
        with DBClient(server.address, timeout=10) as client:
            n = 0
            while not stop.is_set():
                try:
                    client.upsert("durable", _batch(n))
                except NachbarError:
                    return  # the server died mid-request: this batch was not acknowledged
                acknowledged.append(n)
                n += 1

    threads = [threading.Thread(target=writer) for _ in range(1)]
    for t in threads:
        t.start()
    while len(acknowledged) < 20:
        threading.Event().wait(0.01)
    server.kill()  # SIGKILL while the writer is mid-ingest
    stop.set()
    for t in threads:
        t.join(10)

    restarted = spawn("nachbar-db", ["--data-dir", str(data)], tmp_path)
    try:
        with DBClient(restarted.address, timeout=10) as db:
            count = db.get_store("durable").count
            assert count % BATCH == 0, "a partial batch was stored"
            assert count >= len(acknowledged) * BATCH
            for n in acknowledged:
                expected = _batch(n)
                got = db.get_key("durable", [e[0] for e in expected], include_vectors=True)
                assert got.missing_ids == []
                for entry, (eid, vector, metadata) in zip(got.entries, expected, strict=True):
                    assert entry.id == eid and entry.metadata == metadata
                    assert entry.vector is not None and np.allclose(entry.vector, vector)
            # Search works over the recovered index.
            probe = _batch(acknowledged[-1])[0]
            assert db.get_sim_n("durable", probe[1], k=1).matches[0].id == probe[0]
    finally:
        restarted.terminate()


def test_sigterm_drains_and_flushes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = spawn("nachbar-db", ["--data-dir", str(data)], tmp_path)
    with DBClient(server.address, timeout=10) as db:
        db.create_store("graceful", DIM)
        db.upsert("graceful", _batch(1))
    assert server.terminate() == 0
    log = server.log()
    assert log.index("NOT_SERVING") < log.index("stopped")

    again = spawn("nachbar-db", ["--data-dir", str(data)], tmp_path)
    try:
        with DBClient(again.address, timeout=10) as db:
            assert db.get_store("graceful").count == BATCH
    finally:
        again.terminate()


def test_corrupt_database_file_refuses_to_start_naming_the_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = spawn("nachbar-db", ["--data-dir", str(data)], tmp_path)
    with DBClient(server.address, timeout=10) as db:
        db.create_store("c", DIM)
        db.upsert("c", _batch(2))
    server.terminate()
    files = sorted(p for p in data.rglob("*") if p.is_file() and p.stat().st_size > 0)
    sqlite_files = [p for p in files if p.read_bytes()[:16] == b"SQLite format 3\x00"]
    assert sqlite_files, files
    target = sqlite_files[0]
    raw = bytearray(target.read_bytes())
    raw[100:4096] = b"\xff" * (4096 - 100)  # garble the schema page
    target.write_bytes(bytes(raw))
    for wal in data.rglob("*-wal"):
        wal.unlink()
    try:
        broken = spawn("nachbar-db", ["--data-dir", str(data)], tmp_path)
    except RuntimeError as error:
        assert target.name in str(error)
    else:
        try:
            with DBClient(broken.address, timeout=10) as db:
                try:
                    db.get_store("c")
                except NachbarError as failure:
                    assert failure.code.name == "DATA_LOSS"
                    assert target.name in failure.message
                else:
                    raise AssertionError("a corrupt store was served as if healthy")
        finally:
            broken.terminate()


def _committed_seq(data: Path) -> int:
    try:
        mark = json.loads((data / "committed.json").read_text())
    except (OSError, ValueError):
        return -1
    return int(mark["store_seqs"].get("1", -1))


def test_damaged_wal_after_a_crash_refuses_to_start_naming_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = spawn("nachbar-db", ["--data-dir", str(data)], tmp_path)
    with DBClient(server.address, timeout=10) as db:
        db.create_store("w", DIM)
        for n in range(40):
            db.upsert("w", _batch(n))
    deadline = time.monotonic() + 30
    while _committed_seq(data) != 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _committed_seq(data) == 40, "the committed mark did not catch up"
    server.kill()
    wal = data / "nachbar.sqlite3-wal"
    with wal.open("r+b") as handle:  # every commit is still in the WAL: flip one in the middle
        handle.seek(wal.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(RuntimeError) as failure:
        spawn("nachbar-db", ["--data-dir", str(data)], tmp_path)
    log = str(failure.value)
    assert "nachbar-db cannot start" in log and "lost committed writes" in log
    assert str(wal) in log and "committed.json" in log
