"""nachbar-db's storage engine in-process: filters without a predicate index, and updates.

Two measurements on embedding-like 384-d vectors (as bench/db_bench.py generates them), each
against its own reference in the same run:

- filter: an HNSW store of --entries entries with an int field "bucket" uniform in [0, 100) and
  no predicate index. GetSimN (k=10) p50 over --queries held-out queries, unfiltered and with
  `bucket < 25` (25% of the store), then the same filter after a predicate index on "bucket"
  was created: the filtered/unfiltered ratio and whether the answers equal the indexed ones.
- update: an HNSW store of --base entries, then rounds of three Upserts of --batch vectors,
  timed each (median over --rounds): fresh ids (new slots at the end), fresh ids after as many
  entries were deleted (their slots are reused), and new vectors for existing ids (replaced in
  place); the ratio of the last two to the first. Also the time hnswlib's add_items takes in
  each (most of the difference).

With --baseline-rev REV the same measurements also run on git revision REV of this repo (a
child process importing that revision's code), for a same-run comparison.

Run: .venv/bin/python bench/engine_scale_bench.py --baseline-rev main  (a few minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import benchlib
import numpy as np
from benchlib import log, markdown_table
from db_bench import embedding_like


def filter_costs(entries: int, queries: int, seed: int) -> dict[str, Any]:
    from nachbar.db.engine import Database
    from nachbar.db.filters import Condition, Op
    from nachbar.db.types import Entry, SearchMode, StoreSpec

    rng = np.random.default_rng(seed)
    vectors = embedding_like(entries + queries, 384, 100, rng)
    buckets = rng.integers(0, 100, size=entries)
    flt = Condition("bucket", Op.LT, 25)
    with tempfile.TemporaryDirectory() as folder, Database.open(folder, fsync="off") as db:
        db.create_store(StoreSpec("s", 384))
        log(f"filter: {entries} entries")
        for start in range(0, entries, 2000):
            stop = min(entries, start + 2000)
            db.upsert(
                "s",
                [
                    Entry(f"e{i}", vectors[i], {"bucket": int(buckets[i])})
                    for i in range(start, stop)
                ],
            )
        held_out = vectors[entries:]

        def p50(filtered: bool) -> tuple[float, list[list[str]]]:
            seconds, answers = [], []
            for query in held_out:
                began = time.perf_counter()
                result = db.get_sim_n(
                    "s", query, 10, filter=flt if filtered else None, mode=SearchMode.AUTO
                )
                seconds.append(time.perf_counter() - began)
                answers.append([m.id for m in result.matches])
            return statistics.median(seconds) * 1e3, answers

        p50(True)  # warm-up (and, where cached columns exist, the column's build)
        rounds = [(p50(False)[0], p50(True)) for _ in range(3)]
        unfiltered = statistics.median(r[0] for r in rounds)
        unindexed = statistics.median(r[1][0] for r in rounds)
        unindexed_answers = rounds[-1][1][1]
        db.create_pred_index("s", ["bucket"])
        p50(True)
        indexed, indexed_answers = p50(True)
    return {
        "unfiltered_ms": unfiltered,
        "unindexed_ms": unindexed,
        "indexed_ms": indexed,
        "same_answers": unindexed_answers == indexed_answers,
    }


def update_costs(base: int, batch: int, rounds: int, seed: int) -> dict[str, Any]:
    from nachbar.db import hnsw
    from nachbar.db.engine import Database
    from nachbar.db.types import Entry, StoreSpec

    rng = np.random.default_rng(seed)
    vectors = embedding_like(base + 2 * rounds * batch + batch, 384, 100, rng)
    graph_seconds = [0.0]
    add = hnsw.HnswGraph.add

    def timed_add(self: Any, vectors: Any, labels: Any, threads: int = -1) -> None:
        began = time.perf_counter()
        add(self, vectors, labels, threads)
        graph_seconds[0] += time.perf_counter() - began

    hnsw.HnswGraph.add = timed_add  # type: ignore[method-assign]
    times: dict[str, list[tuple[float, float]]] = {"fresh": [], "reused": [], "replaced": []}
    with tempfile.TemporaryDirectory() as folder, Database.open(folder, fsync="off") as db:
        db.create_store(StoreSpec("s", 384))
        log(f"update: {base} entries")
        for start in range(0, base, 2000):
            stop = min(base, start + 2000)
            db.upsert("s", [Entry(f"e{i}", vectors[i], {"n": i}) for i in range(start, stop)])
        following = base
        live = list(range(base))

        def upsert(kind: str, pairs: Sequence[tuple[int, int]]) -> None:
            entries = [Entry(f"e{i}", vectors[v], {"n": v}) for i, v in pairs]
            graph_seconds[0] = 0.0
            began = time.perf_counter()
            db.upsert("s", entries)
            times[kind].append((time.perf_counter() - began, graph_seconds[0]))

        for _ in range(rounds):
            fresh = list(range(following, following + batch))
            following += batch
            upsert("fresh", [(i, i) for i in fresh])
            live += fresh
            gone = sorted(rng.choice(len(live), batch, replace=False).tolist(), reverse=True)
            db.delete_keys("s", [f"e{live.pop(g)}" for g in gone])
            fresh = list(range(following, following + batch))
            following += batch
            upsert("reused", [(i, i) for i in fresh])
            live += fresh
            targets = rng.choice(live, batch, replace=False).tolist()
            sources = rng.integers(0, len(vectors), batch).tolist()
            upsert("replaced", list(zip(targets, sources, strict=True)))
    hnsw.HnswGraph.add = add  # type: ignore[method-assign]
    return {
        kind: {
            "ms": statistics.median(t for t, _ in samples) * 1e3,
            "graph_ms": statistics.median(g for _, g in samples) * 1e3,
        }
        for kind, samples in times.items()
    }


def measure(ns: argparse.Namespace) -> dict[str, Any]:
    return {
        "filter": filter_costs(ns.entries, ns.queries, ns.seed),
        "update": update_costs(ns.base, ns.batch, ns.rounds, ns.seed),
    }


def run_baseline(ns: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    env = benchlib.baseline_tree(ns.baseline_rev, workdir)
    command = [sys.executable, __file__, "--json", "--entries", str(ns.entries)]
    command += ["--queries", str(ns.queries), "--base", str(ns.base), "--batch", str(ns.batch)]
    command += ["--rounds", str(ns.rounds), "--seed", str(ns.seed)]
    done = subprocess.run(
        command, check=True, stdout=subprocess.PIPE, text=True, env={**os.environ, **env}
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def render(ns: argparse.Namespace, results: dict[str, dict[str, Any]]) -> str:
    machine = benchlib.machine_facts()
    lines = [
        f"## engine_scale_bench: filter at {ns.entries:,} x 384 ({ns.queries} queries), "
        f"updates of {ns.batch} x 384 on {ns.base:,} entries ({ns.rounds} rounds)",
        "",
        f"{machine['date']}; {machine['cpu_model']}, {machine['cpus']} CPUs; load average "
        f"{machine['load_average']}",
        "",
    ]
    rows = []
    for label, result in results.items():
        f = result["filter"]
        rows.append(
            [
                label,
                f"{f['unfiltered_ms']:.3f}",
                f"{f['unindexed_ms']:.3f}",
                f"x{f['unindexed_ms'] / f['unfiltered_ms']:.2f}",
                f"{f['indexed_ms']:.3f}",
                "yes" if f["same_answers"] else "NO",
            ]
        )
    lines.append(
        markdown_table(
            [
                "code",
                "unfiltered p50 ms",
                "25% no index p50 ms",
                "vs unfiltered",
                "25% indexed p50 ms",
                "same answers as indexed",
            ],
            rows,
        )
    )
    lines.append("")
    rows = []
    for label, result in results.items():
        u = result["update"]
        fresh = u["fresh"]["ms"]
        rows.append(
            [
                label,
                f"{fresh:.0f} ({u['fresh']['graph_ms']:.0f})",
                f"{u['reused']['ms']:.0f} ({u['reused']['graph_ms']:.0f})",
                f"x{u['reused']['ms'] / fresh:.2f}",
                f"{u['replaced']['ms']:.0f} ({u['replaced']['graph_ms']:.0f})",
                f"x{u['replaced']['ms'] / fresh:.2f}",
            ]
        )
    lines.append(
        markdown_table(
            [
                "code",
                "fresh ms (hnswlib)",
                "reused slots ms (hnswlib)",
                "vs fresh",
                "replaced vectors ms (hnswlib)",
                "vs fresh",
            ],
            rows,
        )
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--base", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--baseline-rev", default="")
    parser.add_argument("--json", action="store_true", help="print the results as JSON only")
    ns = parser.parse_args(argv)
    if ns.json:
        print(json.dumps(measure(ns)))
        return
    results = {"this checkout": measure(ns)}
    if ns.baseline_rev:
        with benchlib.scratch_dir("engine-scale-") as workdir:
            results[ns.baseline_rev] = run_baseline(ns, workdir)
    benchlib.publish("engine_scale_bench", {"results": results}, render(ns, results))


if __name__ == "__main__":
    main()
