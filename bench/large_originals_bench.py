"""Reads of a store whose entries keep large originals: status, wall time and response size.

A nachbar-db child process (default --max-message-bytes, 64 MiB) holds three entries whose
metadata keeps a --megabytes original under `_nachbar_image` (where nachbar-ai keeps images) and
a short caption; together they are larger than one message may be. The Python client (its
receive limit is the same 64 MiB) then reads them: GetSimN k=3 as is, leaving the originals out
(exclude_metadata_keys, max_metadata_value_bytes, include_metadata=false), and GetKey of all
three, which the client fetches in as many responses as needed.

With --baseline-rev REV a server running git revision REV of this repo answers the same reads
in the same run (exported to a scratch directory, imported through PYTHONPATH).

Run: bench/.venv/bin/python bench/large_originals_bench.py --baseline-rev main  (no peers
needed; about a minute)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchlib
import numpy as np
from benchlib import log, markdown_table

MB = 1024 * 1024
IMAGE = "_nachbar_image"
THIS = "this checkout"


@dataclass(frozen=True)
class Outcome:
    read: str
    version: str
    status: str
    wall_s: float
    returned_mb: float  # metadata bytes the caller got
    message: str


def returned_bytes(entries: Sequence[Any]) -> int:
    total = 0
    for entry in entries:
        for value in entry.metadata.values():
            total += len(value) if isinstance(value, bytes | str) else 8
    return total


def run(version: str, megabytes: float, workdir: Path, env: dict[str, str] | None) -> list[Outcome]:
    from nachbar.client import DBClient, NachbarError

    data = workdir / f"data-{len(version)}-{time.monotonic_ns()}"
    server = benchlib.start_nachbar(
        "nachbar-db", ["--data-dir", str(data), "--fsync", "off"], workdir, env=env
    )
    rng = np.random.default_rng(0)
    out: list[Outcome] = []
    try:
        with DBClient(server.address, timeout=600) as db:
            db.create_store("originals", 4)
            for i in range(3):
                original = rng.bytes(int(megabytes * MB))
                meta = {"caption": f"photo {i}", IMAGE: original}
                db.upsert("originals", [(f"e{i}", [1.0, i + 1.0, 0.0, 0.0], meta)])
            query = [1.0, 1.0, 0.0, 0.0]
            reads: list[tuple[str, Callable[[], Sequence[Any]]]] = [
                ("GetSimN k=3", lambda: db.get_sim_n("originals", query, k=3).matches),
                (
                    "GetSimN k=3, exclude_metadata_keys=[_nachbar_image]",
                    lambda: (
                        db.get_sim_n("originals", query, k=3, exclude_metadata_keys=[IMAGE]).matches
                    ),
                ),
                (
                    "GetSimN k=3, max_metadata_value_bytes=65536",
                    lambda: (
                        db.get_sim_n(
                            "originals", query, k=3, max_metadata_value_bytes=65536
                        ).matches
                    ),
                ),
                (
                    "GetSimN k=3, include_metadata=false",
                    lambda: db.get_sim_n("originals", query, k=3, include_metadata=False).matches,
                ),
                (
                    "GetKey of the 3 ids",
                    lambda: db.get_key("originals", ["e0", "e1", "e2"]).entries,
                ),
            ]
            for name, read in reads:
                began = time.perf_counter()
                status, message, got = "OK", "", 0
                try:
                    entries = read()
                    got = returned_bytes(entries)
                    message = f"{len(entries)} entries"
                except NachbarError as error:
                    status, message = error.code.name, error.message
                wall = time.perf_counter() - began
                log(f"{version}: {name}: {status} {wall:.2f} s {message[:120]}")
                out.append(Outcome(name, version, status, wall, got / MB, message))
    finally:
        server.stop()
    return out


def render(outcomes: Sequence[Outcome], megabytes: float) -> str:
    rows = [
        [
            o.read,
            o.version,
            o.status,
            f"{o.wall_s:.2f}",
            f"{o.returned_mb:.1f}",
            o.message[:220].replace("|", "/"),
        ]
        for o in outcomes
    ]
    headers = ["read", "server", "status", "wall s", "metadata returned (MB)", "message"]
    title = f"3 entries, each with a {megabytes:g} MiB original"
    return f"{title}\n\n" + markdown_table(headers, rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=float, default=22.0, help="size of each original")
    parser.add_argument("--baseline-rev", default="", help="also run this git revision")
    ns = parser.parse_args(argv)
    log(benchlib.describe_load("before"))
    outcomes: list[Outcome] = []
    with benchlib.scratch_dir("nachbar-large-originals") as workdir:
        if ns.baseline_rev:
            env = benchlib.baseline_tree(ns.baseline_rev, workdir)
            outcomes += run(ns.baseline_rev, ns.megabytes, workdir, env)
        outcomes += run(THIS, ns.megabytes, workdir, None)
    log(benchlib.describe_load("after"))
    print(render(outcomes, ns.megabytes))


if __name__ == "__main__":
    main()
