"""Memory nachbar-db spends per Upsert: peak RSS growth per MB of request.

For each payload shape a fresh nachbar-db child process gets one warm-up upsert, then one large
Upsert (or several at once with --concurrent); the result is the growth of the server's peak
resident set (VmHWM, /proc/<pid>/status) over its resident set just before, divided by the
size of the request on the wire. The request itself is the reference: a server that kept only
the bytes it received would show about 1 MB per MB; everything above that is copies the upsert
path makes.

The store is an exact (brute-force) store, so that no HNSW graph build adds its own memory.

Shapes (each about --megabytes of request):
- vectors: 384-d float32 vectors, each with one small int metadata field;
- bytes:   three entries whose metadata holds a large bytes value (nachbar-ai's stored images);
- text:    three entries whose metadata holds a large string (nachbar-ai's stored texts).

With --baseline-rev REV the same requests also go to a server running git revision REV of
this repo (exported to a scratch directory), alternating with this checkout's server shape by
shape, and the table adds the ratio of the two.

Run: .venv/bin/python bench/upsert_memory_bench.py --baseline-rev main  (no peers needed; a few
minutes)
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchlib
import numpy as np
from benchlib import log, markdown_table

MB = 1024 * 1024
SHAPES = ("vectors", "bytes", "text")


@dataclass(frozen=True)
class Config:
    megabytes: float
    concurrent: int
    shapes: tuple[str, ...]
    baseline_rev: str


@dataclass(frozen=True)
class Measure:
    shape: str
    version: str  # "this checkout" or the baseline revision
    requests: int
    refused: int  # answered RESOURCE_EXHAUSTED by admission control (the in-flight budget)
    request_mb: float  # wire size of one request
    rss_before_mb: float
    peak_growth_mb: float
    kept_mb: float  # RSS growth still there after the requests returned (the stored data)

    @property
    def growth_per_request_mb(self) -> float:
        """Peak growth per MB of the requests the server took on."""
        taken = self.requests - self.refused
        return self.peak_growth_mb / (self.request_mb * taken) if taken else float("nan")


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def _reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if not permitted."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def make_request(shape: str, megabytes: float, seed: int) -> Any:
    from nachbar.v1 import db_pb2

    rng = np.random.default_rng(seed)
    request = db_pb2.UpsertRequest(store="m")
    target = int(megabytes * MB)
    if shape == "vectors":
        count = max(1, target // (384 * 4 + 40))
        vectors = rng.random((count, 384), dtype=np.float32)
        for i in range(count):
            entry = request.entries.add(id=f"{seed}-{i}", vector=vectors[i].tolist())
            entry.metadata["n"].int_value = i
        return request
    per_entry = target // 3
    for i in range(3):
        entry = request.entries.add(id=f"{seed}-{i}", vector=rng.random(384).tolist())
        if shape == "bytes":
            entry.metadata["_nachbar_image"].bytes_value = rng.bytes(per_entry)
        else:
            letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz ", dtype=np.uint8)
            text = letters[rng.integers(0, len(letters), per_entry)].tobytes().decode("ascii")
            entry.metadata["_nachbar_text"].string_value = text
    return request


def measure(
    shape: str, config: Config, workdir: Path, version: str, env: dict[str, str] | None
) -> Measure:
    import grpc

    from nachbar.client import DBClient, Exact
    from nachbar.v1 import db_pb2_grpc

    data = workdir / f"{shape}-{len(version)}-{time.monotonic_ns()}"
    server = benchlib.start_nachbar(
        "nachbar-db", ["--data-dir", str(data), "--fsync", "normal"], workdir, env=env
    )
    try:
        with DBClient(server.address, timeout=600) as client:
            # Exact index: an HNSW graph would add its own (kept) memory and minutes of build
            # time to the vectors shape without changing what the upsert path copies.
            client.create_store("m", 384, index=Exact())
        requests = [
            make_request(shape, config.megabytes, seed) for seed in range(config.concurrent)
        ]
        warm = make_request(shape, 1.0, 99)
        options = [("grpc.max_send_message_length", 512 * MB)]
        with grpc.insecure_channel(server.address, options=options) as channel:
            stub = db_pb2_grpc.DBServiceStub(channel)
            stub.Upsert(warm, timeout=600)
            time.sleep(0.5)
            pid = server.proc.pid
            if not _reset_peak(pid):
                log("cannot reset VmHWM; the peak includes the warm-up")
            before = _status_kb(pid, "VmRSS")
            errors: list[grpc.RpcError] = []

            def send(request: Any) -> None:
                try:
                    stub.Upsert(request, timeout=600)
                except grpc.RpcError as error:
                    errors.append(error)

            threads = [threading.Thread(target=send, args=(r,)) for r in requests]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            refused = [e for e in errors if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED]
            if len(refused) < len(errors):
                raise RuntimeError(f"upsert failed: {errors[0]}")
            if refused:
                log(f"{len(refused)} refused: {refused[0].details()}")
            peak = _status_kb(pid, "VmHWM")
            time.sleep(0.5)
            after = _status_kb(pid, "VmRSS")
    finally:
        server.stop()
    return Measure(
        shape=shape,
        version=version,
        requests=config.concurrent,
        refused=len(refused),
        request_mb=requests[0].ByteSize() / MB,
        rss_before_mb=before / 1024,
        peak_growth_mb=(peak - before) / 1024,
        kept_mb=(after - before) / 1024,
    )


def render(measures: Sequence[Measure]) -> str:
    current = {m.shape: m for m in measures if m.version == THIS}
    rows = []
    for m in measures:
        ratio = ""
        if m.version != THIS and m.shape in current:
            ratio = f"{current[m.shape].peak_growth_mb / m.peak_growth_mb:.2f}"
        rows.append(
            [
                m.shape,
                m.version,
                m.requests,
                m.refused,
                f"{m.request_mb:.1f}",
                f"{m.rss_before_mb:.0f}",
                f"{m.peak_growth_mb:.0f}",
                f"{m.growth_per_request_mb:.2f}",
                f"{m.kept_mb:.0f}",
                ratio,
            ]
        )
    return markdown_table(
        [
            "shape",
            "server",
            "requests at once",
            "refused (RESOURCE_EXHAUSTED)",
            "MB per request",
            "RSS before (MB)",
            "peak RSS growth (MB)",
            "peak growth per MB taken on",
            "kept after (MB)",
            "this checkout / baseline (peak growth)",
        ],
        rows,
    )


THIS = "this checkout"


def parse_args(argv: Sequence[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=float, default=60.0, help="size of each request")
    parser.add_argument("--concurrent", type=int, default=1, help="requests sent at once")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated shapes")
    parser.add_argument(
        "--baseline-rev", default="", help="also measure this git revision, e.g. main"
    )
    ns = parser.parse_args(argv)
    shapes = tuple(s for s in ns.shapes.split(",") if s)
    unknown = set(shapes) - set(SHAPES)
    if unknown:
        parser.error(f"unknown shapes {sorted(unknown)}; use {', '.join(SHAPES)}")
    return Config(
        megabytes=ns.megabytes,
        concurrent=ns.concurrent,
        shapes=shapes,
        baseline_rev=ns.baseline_rev,
    )


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_args(argv)
    log(benchlib.describe_load("before"))
    with benchlib.scratch_dir("nachbar-upsert-memory") as workdir:
        baseline = (
            benchlib.baseline_tree(config.baseline_rev, workdir) if config.baseline_rev else None
        )
        measures = []
        for shape in config.shapes:
            if baseline is not None:
                measures.append(measure(shape, config, workdir, config.baseline_rev, baseline))
            measures.append(measure(shape, config, workdir, THIS, None))
    log(benchlib.describe_load("after"))
    print(render(measures))


if __name__ == "__main__":
    main()
