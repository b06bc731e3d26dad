"""Why nachbar-db holds a float32 copy of every vector beside hnswlib's: reading vectors back.

An exact scan (a narrow filter, a store whose graph is still loading) and the float64
re-scoring of the graph's candidates read the vectors of arbitrary entries on every query. This
measures the three places they could come from, for the same rows of one store of --entries
embedding-like 384-d vectors, per row read:

- the store's float32 matrix (numpy fancy indexing: what nachbar-db does);
- hnswlib's own copy through its Python binding (`get_items`), were the store to hold none;
- the store's SQLite file (nachbar-db's entries table, by id, in the page cache), likewise.

Also the memory of the per-entry Python objects the store keeps (id strings, the id -> slot
dict, metadata dicts) at --entries, as RSS growth, and of the metadata as encoded JSON instead.

Run: .venv/bin/python bench/vector_access_bench.py [--entries 100000]  (about a minute)
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import benchlib
import hnswlib
import numpy as np
from benchlib import log, markdown_table
from db_bench import embedding_like

DIM = 384
ROWS = (50, 1000, 3000)
REPEATS = 5


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _best_of(read: Callable[[], object]) -> float:
    times = []
    for _ in range(REPEATS):
        began = time.perf_counter()
        read()
        times.append(time.perf_counter() - began)
    return min(times)


def access_costs(entries: int, seed: int) -> list[dict[str, Any]]:
    from nachbar.db.engine import DB_FILE, Database
    from nachbar.db.types import Entry, StoreSpec

    rng = np.random.default_rng(seed)
    vectors = embedding_like(entries, DIM, 100, rng)
    graph = hnswlib.Index(space="cosine", dim=DIM)
    graph.init_index(max_elements=entries, M=16, ef_construction=40)
    graph.add_items(vectors, np.arange(entries))
    rows_out = []
    with tempfile.TemporaryDirectory() as folder:
        with Database.open(folder, fsync="off", checkpoint_seconds=0) as db:
            db.create_store(StoreSpec("s", DIM))
            for start in range(0, entries, 5000):
                db.upsert(
                    "s",
                    [
                        Entry(f"e{i}", vectors[i], {"bucket": i % 100})
                        for i in range(start, min(entries, start + 5000))
                    ],
                )
        database = Path(folder) / DB_FILE
        connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        store_id = connection.execute("SELECT store_id FROM stores WHERE name = 's'").fetchone()[0]
        for count in ROWS:
            slots = np.sort(rng.choice(entries, count, replace=False))
            ids = [f"e{i}" for i in slots.tolist()]
            marks = ",".join("?" * count)
            query = f"SELECT vector FROM entries WHERE store_id = ? AND id IN ({marks})"

            def from_sqlite(ids: Sequence[str] = ids, query: str = query) -> np.ndarray:
                found = connection.execute(query, (store_id, *ids)).fetchall()
                blob = b"".join(row[0] for row in found)
                return np.frombuffer(blob, dtype="<f4").reshape(len(found), DIM)

            assert len(from_sqlite()) == count

            def from_matrix(slots: np.ndarray = slots) -> np.ndarray:
                rows: np.ndarray = vectors[slots]
                return rows

            def from_hnswlib(slots: np.ndarray = slots) -> object:
                return graph.get_items(slots)

            matrix = _best_of(from_matrix)
            binding = _best_of(from_hnswlib)
            sqlite = _best_of(from_sqlite)
            rows_out.append(
                {
                    "rows": count,
                    "matrix_ms": matrix * 1e3,
                    "hnswlib_ms": binding * 1e3,
                    "sqlite_ms": sqlite * 1e3,
                }
            )
            log(
                f"{count} rows: matrix {matrix * 1e3:.3f} ms, hnswlib {binding * 1e3:.2f} ms, "
                f"SQLite {sqlite * 1e3:.2f} ms"
            )
        connection.close()
    return rows_out


def python_objects(entries: int) -> dict[str, float]:
    """RSS growth of the store's per-entry Python objects, built the way the store holds them."""
    before = _rss_mb()
    ids = [f"e{i:07d}" for i in range(entries)]
    after_ids = _rss_mb()
    slot_of = dict(zip(ids, range(entries), strict=True))
    after_map = _rss_mb()
    metas = [{"bucket": i % 100} for i in range(entries)]
    after_metas = _rss_mb()
    encoded = [json.dumps(m, separators=(",", ":")).encode() for m in metas]
    after_encoded = _rss_mb()
    assert len(slot_of) == len(encoded) == entries
    return {
        "ids_mb": after_ids - before,
        "slot_of_mb": after_map - after_ids,
        "metadata_dicts_mb": after_metas - after_map,
        "metadata_json_mb": after_encoded - after_metas,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--objects", type=int, default=1_000_000, help="entries for the memory")
    parser.add_argument("--seed", type=int, default=5)
    ns = parser.parse_args(argv)
    load_before = benchlib.describe_load("before")
    costs = access_costs(ns.entries, ns.seed)
    objects = python_objects(ns.objects)
    rows = [
        [
            c["rows"],
            f"{c['matrix_ms']:.3f} ({c['matrix_ms'] * 1e3 / c['rows']:.2f} us/row)",
            f"{c['hnswlib_ms']:.2f} ({c['hnswlib_ms'] * 1e3 / c['rows']:.1f} us/row, "
            f"x{c['hnswlib_ms'] / c['matrix_ms']:.0f})",
            f"{c['sqlite_ms']:.2f} ({c['sqlite_ms'] * 1e3 / c['rows']:.1f} us/row, "
            f"x{c['sqlite_ms'] / c['matrix_ms']:.0f})",
        ]
        for c in costs
    ]
    report = "\n".join(
        [
            f"## vector_access_bench: {ns.entries:,} x {DIM} vectors, best of {REPEATS}",
            "",
            f"{load_before}; {benchlib.describe_load('after')}",
            "",
            markdown_table(
                ["rows read", "store's float32 matrix ms", "hnswlib get_items ms", "SQLite ms"],
                rows,
            ),
            "",
            f"per-entry Python objects at {ns.objects:,} entries (RSS growth): id strings "
            f"{objects['ids_mb']:.0f} MB, id -> slot dict {objects['slot_of_mb']:.0f} MB, "
            f"metadata dicts {{'bucket': int}} {objects['metadata_dicts_mb']:.0f} MB "
            f"(as JSON bytes {objects['metadata_json_mb']:.0f} MB)",
        ]
    )
    benchlib.publish(
        "vector_access_bench",
        {"entries": ns.entries, "access": costs, "python_objects": objects},
        report,
    )


if __name__ == "__main__":
    main()
