"""What a filter costs nachbar-db per search, against the one-condition filter in the same run.

An exact store of --entries entries (16-d vectors, an int field `n`, a float field `x`, a string
field `tag`; no predicate index unless --indexed) answers GetSimN (k=10) through the engine,
in-process, with filters of the shapes below; each is timed in CPU seconds (time.process_time,
median of --rounds) and reported as a multiple of the one-condition filter's time. The point is
the shape of the cost: equality tests joined by any_of, or an `in`, should cost about one
condition whatever their number; unrelated conditions cost one pass each, which the condition
limit (128 by default) bounds.

With --baseline-rev REV the same measurements also run on git revision REV of this repo (in a
child process importing that revision's code), for a same-run comparison.

Run: bench/.venv/bin/python bench/filter_cost_bench.py --baseline-rev main --entries 2000
(no peers needed; a few minutes: a baseline without filter compilation took over 7 minutes at
100,000 entries, its `in` shape alone 32 s per search at 2,000)
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import benchlib
import numpy as np
from benchlib import log, markdown_table

DIM = 16
# nachbar-db's default limits (only numbers here, so that a baseline without limits runs too).
MAX_CONDITIONS = 128
MAX_VALUES = 65_536


@dataclass(frozen=True)
class Config:
    entries: int
    conditions: int
    rounds: int
    indexed: bool
    baseline_rev: str


def shapes(conditions: int) -> list[tuple[str, Any]]:
    # Only the filter types every version has.
    from nachbar.db.filters import AllOf, AnyOf, Condition, Op

    count = conditions
    far = 10**9  # values no entry holds: every condition is tested, none short-cuts
    return [
        ("1 condition (reference)", Condition("n", Op.EQ, far)),
        (
            f"{count} eq on one field, any_of",
            AnyOf(tuple(Condition("n", Op.EQ, far + i) for i in range(count))),
        ),
        (
            f"{count} ne on one field, all_of",
            AllOf(tuple(Condition("n", Op.NE, far + i) for i in range(count))),
        ),
        (
            f"in with {MAX_VALUES} values",
            Condition("n", Op.IN, values=tuple(range(far, far + MAX_VALUES))),
        ),
        (
            f"{count} gt on one field, any_of",
            AnyOf(tuple(Condition("x", Op.GT, 1e12 + i) for i in range(count))),
        ),
        (
            f"{count} eq on {count} fields, any_of",
            AnyOf(tuple(Condition(f"f{i}", Op.EQ, 1) for i in range(count))),
        ),
    ]


def cpu_seconds(call: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.process_time()
        call()
        times.append(time.process_time() - start)
    return statistics.median(times)


def run(config: Config) -> list[tuple[str, float]]:
    from nachbar.db.engine import Database
    from nachbar.db.types import Entry, ExactConfig, StoreSpec

    rng = np.random.default_rng(0)
    with (
        tempfile.TemporaryDirectory() as data,
        Database.open(data, fsync="off", checkpoint_seconds=0) as db,
    ):
        indexes = ("n", "x", "tag") if config.indexed else ()
        db.create_store(StoreSpec("s", DIM, index=ExactConfig(), predicate_indexes=indexes))
        vectors = rng.random((config.entries, DIM), dtype=np.float32) + 0.01
        for start in range(0, config.entries, 5000):
            db.upsert(
                "s",
                [
                    Entry(str(i), vectors[i], {"n": i, "x": float(i), "tag": f"t{i % 50}"})
                    for i in range(start, min(config.entries, start + 5000))
                ],
            )
        query = vectors[0]
        out = []
        for name, flt in shapes(config.conditions):
            search = partial(db.get_sim_n, "s", query, 10, filter=flt)
            seconds = cpu_seconds(search, config.rounds)
            out.append((name, seconds))
            log(f"{name}: {seconds * 1000:.1f} ms CPU")
    return out


def run_baseline(config: Config, workdir: Path) -> list[tuple[str, float]]:
    env = benchlib.baseline_tree(config.baseline_rev, workdir)
    command = [sys.executable, __file__, "--json", "--entries", str(config.entries)]
    command += ["--conditions", str(config.conditions), "--rounds", str(config.rounds)]
    if config.indexed:
        command.append("--indexed")
    done = subprocess.run(  # its progress log goes to our stderr
        command, check=True, stdout=subprocess.PIPE, text=True, env={**os.environ, **env}
    )
    return [(name, seconds) for name, seconds in json.loads(done.stdout)]


def render(
    config: Config,
    results: Sequence[tuple[str, float]],
    baseline: Sequence[tuple[str, float]] | None,
) -> str:
    reference = results[0][1]
    headers = ["filter", "CPU ms per GetSimN", "vs 1 condition"]
    if baseline is not None:
        headers += [f"{config.baseline_rev}: CPU ms", f"{config.baseline_rev}: vs 1 condition"]
    rows = []
    for position, (name, seconds) in enumerate(results):
        row = [name, f"{seconds * 1000:.1f}", f"{seconds / reference:.1f}x"]
        if baseline is not None:
            old = baseline[position][1]
            row += [f"{old * 1000:.1f}", f"{old / baseline[0][1]:.1f}x"]
        rows.append(row)
    title = f"{config.entries} entries, {'indexed' if config.indexed else 'no predicate index'}"
    return f"{title}\n\n" + markdown_table(headers, rows)


def parse_args(argv: Sequence[str] | None = None) -> tuple[Config, bool]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--conditions", type=int, default=MAX_CONDITIONS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--indexed", action="store_true", help="index n, x and tag")
    parser.add_argument("--baseline-rev", default="", help="also measure this git revision")
    parser.add_argument("--json", action="store_true", help="print the results as JSON only")
    ns = parser.parse_args(argv)
    return Config(ns.entries, ns.conditions, ns.rounds, ns.indexed, ns.baseline_rev), ns.json


def main(argv: Sequence[str] | None = None) -> None:
    config, as_json = parse_args(argv)
    if as_json:
        print(json.dumps(run(config)))
        return
    log(benchlib.describe_load("before"))
    baseline = None
    if config.baseline_rev:
        with benchlib.scratch_dir("nachbar-filter-cost") as workdir:
            baseline = run_baseline(config, workdir)
    results = run(config)
    log(benchlib.describe_load("after"))
    print(render(config, results, baseline))


if __name__ == "__main__":
    main()
