"""What MMR and recommend by examples add to a GetSimN, against the plain search, in one run.

A nachbar-db child process (this checkout, embedded engine) holds one HNSW store of --entries
embedding-like 384-d vectors. For each of --queries queries the client sends, in rotating
order, four GetSimN requests (k=10, plan auto):

- plain: the query vector;
- mmr: the query vector with mmr_lambda 0.5 (default pool max(4k, 20) = 40);
- average_vector: two positive and one negative example ids, no query;
- best_score: the same examples, strategy best_score (one search per positive, pool 40 each).

Each request's wall time at the client (gRPC round trip included) is recorded; the report gives
p50 / p99 per case and each case's p50 as a multiple of plain's p50 in the same run.

Run: .venv/bin/python bench/explore_bench.py  (no peers needed; about a minute)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

import benchlib
import numpy as np
from benchlib import LatencyStats, log, markdown_table
from db_bench import embedding_like

DIM = 384
K = 10
CASES = ("plain", "mmr", "average_vector", "best_score")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args(argv)

    from nachbar.client import DBClient

    rng = np.random.default_rng(3)
    vectors = embedding_like(args.entries + args.queries, DIM, 100, rng)
    base, queries = vectors[: args.entries], vectors[args.entries :]
    ids = [f"e{i}" for i in range(args.entries)]
    facts = benchlib.machine_facts()
    with benchlib.scratch_dir("nachbar-explore-") as workdir:
        server = benchlib.start_nachbar(
            "nachbar-db", ["--data-dir", str(workdir / "data"), "--fsync", "off"], workdir
        )
        try:
            with DBClient(server.address, timeout=120) as db:
                db.create_store("bench", DIM)
                log(f"loading {args.entries} entries")
                db.upsert("bench", list(zip(ids, base, strict=True)), batch_size=2000)
                examples = rng.integers(0, args.entries, size=(args.queries, 3))

                def call(case: str, q: int) -> Callable[[], Any]:
                    positive = [ids[examples[q, 0]], ids[examples[q, 1]]]
                    negative = [ids[examples[q, 2]]]
                    if case == "plain":
                        return lambda: db.get_sim_n("bench", queries[q], K)
                    if case == "mmr":
                        return lambda: db.get_sim_n("bench", queries[q], K, mmr=0.5)
                    return lambda: db.get_sim_n(
                        "bench", None, K, positive=positive, negative=negative, strategy=case
                    )

                for q in range(min(20, args.queries)):  # warm up every path
                    for case in CASES:
                        call(case, q)()
                before = benchlib.describe_load("before")
                seconds: dict[str, list[float]] = {case: [] for case in CASES}
                for q in range(args.queries):
                    shift = q % len(CASES)
                    for case in CASES[shift:] + CASES[:shift]:
                        fn = call(case, q)
                        start = time.perf_counter()
                        found = fn()
                        seconds[case].append(time.perf_counter() - start)
                        assert len(found.matches) == K, (case, len(found.matches))
                after = benchlib.describe_load("after")
        finally:
            server.stop()

    stats = {case: LatencyStats.of(seconds[case]) for case in CASES}
    plain = stats["plain"].p50_ms
    rows = [
        (case, s.count, s.p50_ms, s.p99_ms, s.p50_ms / plain, s.p50_ms - plain)
        for case, s in stats.items()
    ]
    report = "\n".join(
        [
            f"GetSimN k={K} over gRPC, {args.entries} x {DIM}-d HNSW store (embedded engine), "
            f"{args.queries} queries per case, cases interleaved",
            f"machine: {facts['cpu_model']}, {facts['cpus']} CPUs; {before}; {after}",
            "",
            markdown_table(
                ["case", "n", "p50 ms", "p99 ms", "p50 / plain p50", "p50 added ms"], rows
            ),
        ]
    )
    benchlib.publish("explore", {"machine": facts, "stats": stats}, report)


if __name__ == "__main__":
    main()
