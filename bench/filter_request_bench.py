"""The issue's filter requests against a nachbar-db server: status, server CPU and wall time.

A nachbar-db child process holds an exact store of --entries entries (64-d vectors, an int field
`n`); each case sends one GetSimN (k=10) over gRPC and records the status the client gets, the
server's CPU seconds for the call (utime + stime from /proc/<pid>/stat, so the client's own
encoding is not counted) and the wall time. Cases:

- flat all_of of N `ne` conditions on `n` (N = 40,000 and 200,000, the sizes the issue measured,
  and 128, the default limit): each is a test per entry unless the server refuses the filter;
- `not` nested D levels deep (D = 99, past protobuf's decoding limit, and 32, the default depth
  limit).

The default store of 100 entries is about the one the issue's figures imply (40,000 conditions
at ~2.6 s of CPU); a server without limits spends (conditions x entries) tests per search, so a
larger store makes the unlimited cases run for minutes.

With --baseline-rev REV a server running git revision REV of this repo answers the same
requests in the same run (exported to a scratch directory, imported through PYTHONPATH).

Run: bench/.venv/bin/python bench/filter_request_bench.py --baseline-rev main  (no peers
needed; a few minutes)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import benchlib
import numpy as np
from benchlib import log, markdown_table

DIM = 64
THIS = "this checkout"


@dataclass(frozen=True)
class Outcome:
    case: str
    version: str
    status: str
    server_cpu_s: float
    wall_s: float
    message: str


def flat_all_of(flt: Any, count: int) -> None:
    from nachbar.v1 import common_pb2

    add = flt.all_of.filters.add
    for i in range(count):
        cond = add().condition
        cond.field = "n"
        cond.op = common_pb2.Condition.OP_NE
        cond.value.int_value = -1 - i  # no entry holds it: every condition is tested


def nested_not(flt: Any, depth: int) -> None:
    from nachbar.v1 import common_pb2

    target = flt
    for _ in range(depth):
        target = target.negate
    target.condition.field = "n"
    target.condition.op = common_pb2.Condition.OP_EXISTS


# Each fills a request's filter in place: copying a deep filter would hit protobuf's decoding
# limit in this process.
CASES: list[tuple[str, Callable[[Any], None]]] = [
    ("flat all_of, 128 ne conditions", partial(flat_all_of, count=128)),
    ("flat all_of, 40,000 ne conditions", partial(flat_all_of, count=40_000)),
    ("flat all_of, 200,000 ne conditions", partial(flat_all_of, count=200_000)),
    ("not nested 32 levels", partial(nested_not, depth=32)),
    ("not nested 99 levels", partial(nested_not, depth=99)),
]


def run(version: str, entries: int, workdir: Path, env: dict[str, str] | None) -> list[Outcome]:
    import grpc

    from nachbar.client import DBClient, Exact
    from nachbar.v1 import db_pb2, db_pb2_grpc

    data = workdir / f"data-{len(version)}-{time.monotonic_ns()}"
    server = benchlib.start_nachbar(
        "nachbar-db", ["--data-dir", str(data), "--fsync", "off"], workdir, env=env
    )
    rng = np.random.default_rng(0)
    vectors = rng.random((entries, DIM), dtype=np.float32) + 0.01
    out: list[Outcome] = []
    try:
        with DBClient(server.address, timeout=600) as client:
            client.create_store("f", DIM, index=Exact())
            for start in range(0, entries, 5000):
                stop = min(entries, start + 5000)
                client.upsert("f", [(str(i), vectors[i], {"n": i}) for i in range(start, stop)])
        benchlib.wait_idle(server)
        options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
        with grpc.insecure_channel(server.address, options=options) as channel:
            stub = db_pb2_grpc.DBServiceStub(channel)
            query = vectors[0].tolist()
            for case, fill in CASES:
                request = db_pb2.GetSimNRequest(store="f", query=query, k=10)
                fill(request.filter)
                cpu_before = benchlib.cpu_seconds(server.proc.pid) or 0.0
                began = time.perf_counter()
                status, message = "OK", ""
                try:
                    stub.GetSimN(request, timeout=600)
                except grpc.RpcError as error:
                    status, message = error.code().name, error.details() or ""
                wall = time.perf_counter() - began
                cpu = (benchlib.cpu_seconds(server.proc.pid) or 0.0) - cpu_before
                log(f"{version}: {case}: {status} {cpu:.2f} s CPU {wall:.2f} s {message[:100]}")
                out.append(Outcome(case, version, status, cpu, wall, message))
    finally:
        server.stop()
    return out


def render(outcomes: Sequence[Outcome], entries: int) -> str:
    rows = [
        [
            o.case,
            o.version,
            o.status,
            f"{o.server_cpu_s:.2f}",
            f"{o.wall_s:.2f}",
            o.message[:140].replace("|", "/"),
        ]
        for o in outcomes
    ]
    headers = ["GetSimN filter", "server", "status", "server CPU s", "wall s", "message"]
    return f"{entries} entries, exact store\n\n" + markdown_table(headers, rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100)
    parser.add_argument("--baseline-rev", default="", help="also run this git revision")
    ns = parser.parse_args(argv)
    log(benchlib.describe_load("before"))
    outcomes: list[Outcome] = []
    with benchlib.scratch_dir("nachbar-filter-request") as workdir:
        if ns.baseline_rev:
            env = benchlib.baseline_tree(ns.baseline_rev, workdir)
            outcomes += run(ns.baseline_rev, ns.entries, workdir, env)
        outcomes += run(THIS, ns.entries, workdir, None)
    log(benchlib.describe_load("after"))
    print(render(outcomes, ns.entries))


if __name__ == "__main__":
    main()
