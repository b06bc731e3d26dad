"""nachbar-db after kill -9: how long until it listens, serves and searches its graph again; and
what a graph checkpoint costs the readers and writers of a store meanwhile.

One store of --n x 384 embedding-like vectors (db_bench's generator), fsync=full, checkpoint
flags at their defaults unless given. kill -9 is taken at several moments:

- during-ingest: while batches of --batch are upserted, once --kill-at of --n are acknowledged;
- after-ingest: right after the last batch of --n was acknowledged;
- during-checkpoint: while a background graph checkpoint is being written (a *.hnsw.tmp file
  exists), after re-upserting enough entries to trigger one;
- graceful: SIGTERM instead, for the clean restart as a reference.

For each restart, measured from the moment the killed process was gone: the port file written
(port open), health SERVING, the first GetSimN answered (retried while UNAVAILABLE), and the
first GetSimN answered from the HNSW graph (plan "hnsw"; exact scans answer before that). Every
acknowledged entry must be there after the restart.

Reference in the same run (--reference-bin): the nachbar-db of another installation (the code
before this change), given the same ingest and killed right after it; with --reference-on-copy,
started instead on a copy of the data directory that the after-ingest kill left (no second
ingest). --scenarios runs a part of the above, and --workdir keeps the data for a later run.

Checkpoint pause, in-process on the same data after the runs: a reader thread (GetSimN k=10) and
a writer thread (upserts of 10 entries) run back to back while the graph is checkpointed the way
the background does it (Database.flush) and, in the same run, the old way (hnswlib's save_index
under the store's read lock). Reported: the longest and p99 latency inside each save's window
against the baseline around it.

Run: .venv/bin/python bench/recovery_bench.py [--n 200000] [--reference-bin PATH/nachbar-db]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchlib
import db_bench
import numpy as np
from benchlib import log, markdown_table

STORE = "bench"
DIM = 384
TARGET_SECONDS = 10.0
WRITE_EVERY_SECONDS = 0.05
# In the order they run; each leaves the server running on the data for the next.
SCENARIOS = ("during-ingest", "after-ingest", "during-checkpoint", "graceful")


@dataclass(frozen=True)
class Config:
    n: int
    batch: int
    kill_at: float
    clusters: int
    seed: int
    checkpoint_changes: int | None
    checkpoint_seconds: float | None
    reference_bin: Path | None
    pause_seconds: float
    workdir: Path | None
    pause_only: bool
    skip_pause: bool = False
    reference_on_copy: bool = False
    scenarios: tuple[str, ...] = SCENARIOS


@dataclass
class Restart:
    scenario: str
    server: str
    acknowledged: int
    found: int = 0
    port_s: float = float("nan")
    serving_s: float = float("nan")
    first_search_s: float = float("nan")
    hnsw_s: float = float("nan")
    # CPU the new process had used when it first answered a search: less sensitive than wall
    # time to what else runs on the machine.
    cpu_to_serve_s: float = float("nan")
    graph: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def serves_s(self) -> float:
        return max(self.serving_s, self.first_search_s)


class Server:
    """nachbar-db as a child process, started without waiting, killed or stopped on demand."""

    def __init__(self, binary: Path, data_dir: Path, workdir: Path, label: str, extra: list[str]):
        workdir.mkdir(parents=True, exist_ok=True)
        self.port_file = workdir / f"{label}.port"
        self.port_file.unlink(missing_ok=True)
        self.log_path = workdir / f"{label}.log"
        # The log is appended to across restarts; this run's lines start here.
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        command = [
            str(binary),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--port-file",
            str(self.port_file),
            "--exit-with-parent",
            "--data-dir",
            str(data_dir),
            "--fsync",
            "full",
            *extra,
        ]
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)

    def port(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(self.port_file.read_text().strip())
        return None

    @property
    def address(self) -> str:
        port = self.port()
        assert port is not None
        return f"127.0.0.1:{port}"

    def log(self) -> str:
        """This process's log lines."""
        with self.log_path.open("rb") as handle:
            handle.seek(self.log_offset)
            return handle.read().decode(errors="replace")

    def kill(self) -> float:
        """SIGKILL; returns the moment the process was gone."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        return time.perf_counter()

    def terminate(self) -> float:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(600)
        return time.perf_counter()


def measure_restart(
    server: Server, began: float, probe: np.ndarray, result: Restart, timeout: float = 900
) -> None:
    """Poll the new process until it listens, serves, answers a search and searches its
    graph; times are from `began` (the old process gone)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from nachbar.client import DBClient, NachbarError

    deadline = began + timeout
    while server.port() is None:
        if server.proc.poll() is not None or time.perf_counter() > deadline:
            raise benchlib.BenchSetupError(f"nachbar-db did not start:\n{server.log()}")
        time.sleep(0.01)
    result.port_s = time.perf_counter() - began
    with grpc.insecure_channel(server.address) as channel, DBClient(server.address) as client:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            now = time.perf_counter()
            if now > deadline:
                raise benchlib.BenchSetupError(f"nachbar-db never served:\n{server.log()}")
            if result.serving_s != result.serving_s:  # nan: not yet
                with contextlib.suppress(grpc.RpcError):
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        result.serving_s = time.perf_counter() - began
            try:
                answer = client.get_sim_n(STORE, probe, k=10, timeout=60)
            except NachbarError as error:
                if error.code.name != "UNAVAILABLE":
                    raise
                time.sleep(0.02)
                continue
            now = time.perf_counter() - began
            if result.first_search_s != result.first_search_s:
                result.first_search_s = now
                result.cpu_to_serve_s = benchlib.cpu_seconds(server.proc.pid) or float("nan")
            if answer.plan == "hnsw":
                result.hnsw_s = now
                break
            time.sleep(0.05)
        serving = health_pb2.HealthCheckResponse.SERVING
        with contextlib.suppress(grpc.RpcError):
            while health.Check(health_pb2.HealthCheckRequest(), timeout=5).status != serving:
                time.sleep(0.02)
        if result.serving_s != result.serving_s:
            result.serving_s = time.perf_counter() - began
        result.found = client.get_store(STORE).count
    # The server logs how its graph came back just after installing it: give the line time.
    patterns = (r"rebuilding its HNSW graph: [^\n]*", r"replayed \d+ later changes")
    logged_by = time.perf_counter() + 10
    while not result.graph and time.perf_counter() < logged_by:
        text = server.log()
        for pattern in patterns:
            found = re.findall(pattern, text)
            if found:
                result.graph = found[-1]
                break
        else:
            time.sleep(0.1)
    if result.found < result.acknowledged:
        result.notes.append(f"LOST {result.acknowledged - result.found} acknowledged entries")


def checkpoint_lines(log_text: str) -> list[str]:
    return re.findall(r"graph checkpoint of [^\n]*", log_text)


class Ingest:
    """Upserts batches in a thread; counts what was acknowledged."""

    def __init__(self, address: str, vectors: np.ndarray, batch: int, start: int, stop: int):
        self.acknowledged = start
        self._address = address
        self._vectors = vectors
        self._batch = batch
        self._stop_at = stop
        self.seconds = 0.0
        self.error: BaseException | None = None
        self.began = time.perf_counter()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from nachbar.client import DBClient, NachbarError

        self.began = began = time.perf_counter()
        with DBClient(self._address, timeout=120) as client:
            while self.acknowledged < self._stop_at:
                start = self.acknowledged
                stop = min(self._stop_at, start + self._batch)
                entries = [
                    (f"id{i}", self._vectors[i], {"bucket": i % 100}) for i in range(start, stop)
                ]
                try:
                    client.upsert(STORE, entries, batch_size=len(entries))
                except NachbarError as error:
                    self.error = error  # the server was killed under it
                    return
                self.acknowledged = stop
        self.seconds = time.perf_counter() - began


def run_scenarios(config: Config, workdir: Path, vectors: np.ndarray) -> list[Restart]:
    """Run the chosen scenarios in order on workdir/data (a later one may start from the data
    an earlier run left there)."""
    from nachbar.client import DBClient

    binary = benchlib.BIN_DIR / "nachbar-db"
    extra = checkpoint_flags(config)
    data_dir = workdir / "data"
    probe = vectors[config.n]  # a held-out vector
    results: list[Restart] = []
    server = Server(binary, data_dir, workdir, "db", extra)
    wait_port(server)
    benchlib.wait_serving(as_child(server), 600)
    with DBClient(server.address) as client:
        client.create_store(STORE, DIM, metric="cosine", if_not_exists=True)
        present = client.get_store(STORE).count

    if "during-ingest" in config.scenarios:
        kill_at = int(config.n * config.kill_at) // config.batch * config.batch
        ingest = Ingest(server.address, vectors, config.batch, present, config.n)
        ingest.thread.start()
        while ingest.acknowledged < kill_at and ingest.thread.is_alive():
            time.sleep(0.01)
        log(f"during-ingest: {ingest.acknowledged} acknowledged, killing")
        rate = (ingest.acknowledged - present) / (time.perf_counter() - ingest.began)
        gone = server.kill()
        ingest.thread.join(60)
        checkpoints_before = checkpoint_lines(server.log())
        restart = Restart("during-ingest", "nachbar", ingest.acknowledged)
        restart.notes.append(
            f"ingest {rate:,.0f}/s with {len(checkpoints_before)} checkpoints during it"
        )
        server = Server(binary, data_dir, workdir, "db", extra)
        measure_restart(server, gone, probe, restart)
        results.append(restart)
        present = restart.found
        log(f"  {restart}")

    if "after-ingest" in config.scenarios:
        ingest = Ingest(server.address, vectors, config.batch, present, config.n)
        ingest.thread.run()
        log(f"after-ingest: {ingest.acknowledged} acknowledged, killing")
        gone = server.kill()
        if config.reference_bin is not None and config.reference_on_copy:
            # The reference restarts later from this very state; the clock starts after the copy.
            shutil.copytree(data_dir, workdir / "reference-data", dirs_exist_ok=True)
            gone = time.perf_counter()
        restart = Restart("after-ingest", "nachbar", ingest.acknowledged)
        server = Server(binary, data_dir, workdir, "db", extra)
        measure_restart(server, gone, probe, restart)
        results.append(restart)
        present = restart.found
        log(f"  {restart}")

    if "during-checkpoint" in config.scenarios:
        # Re-upsert entries (then add new ones) until a checkpoint starts writing.
        index_dir = data_dir / "indexes"
        ingest = Ingest(server.address, vectors, config.batch, 0, config.n)
        ingest.thread.start()
        deadline = time.monotonic() + 900
        while not list(index_dir.glob("*.hnsw.tmp")):
            if time.monotonic() > deadline or not ingest.thread.is_alive():
                raise benchlib.BenchSetupError("no checkpoint started while re-upserting")
            time.sleep(0.005)
        log("during-checkpoint: a graph is being written, killing")
        gone = server.kill()
        ingest.thread.join(60)
        restart = Restart("during-checkpoint", "nachbar", max(present, ingest.acknowledged))
        server = Server(binary, data_dir, workdir, "db", extra)
        measure_restart(server, gone, probe, restart)
        results.append(restart)
        log(f"  {restart}")

    if "graceful" in config.scenarios:
        gone = server.terminate()
        restart = Restart("graceful", "nachbar", present)
        server = Server(binary, data_dir, workdir, "db", extra)
        measure_restart(server, gone, probe, restart)
        results.append(restart)
        log(f"  {restart}")
    server.terminate()
    return results


def run_reference(config: Config, workdir: Path, vectors: np.ndarray) -> list[Restart]:
    from nachbar.client import DBClient

    assert config.reference_bin is not None
    data_dir = workdir / "reference-data"
    probe = vectors[config.n]
    if config.reference_on_copy:
        # The data directory the after-ingest kill left, as this code wrote it.
        restart = Restart("after-ingest (copy)", "reference", config.n)
        began = time.perf_counter()
        server = Server(config.reference_bin, data_dir, workdir, "reference", [])
        measure_restart(server, began, probe, restart)
        server.terminate()
        log(f"  {restart}")
        return [restart]
    server = Server(config.reference_bin, data_dir, workdir, "reference", [])
    wait_port(server)
    benchlib.wait_serving(as_child(server), 120)
    with DBClient(server.address) as client:
        client.create_store(STORE, DIM, metric="cosine")
    ingest = Ingest(server.address, vectors, config.batch, 0, config.n)
    ingest.thread.run()
    log(f"reference after-ingest: {ingest.acknowledged} acknowledged in {ingest.seconds:.0f} s")
    gone = server.kill()
    restart = Restart("after-ingest", "reference", ingest.acknowledged)
    restart.notes.append(f"ingest {config.n / ingest.seconds:,.0f}/s")
    server = Server(config.reference_bin, data_dir, workdir, "reference", [])
    measure_restart(server, gone, probe, restart)
    server.terminate()
    log(f"  {restart}")
    return [restart]


def checkpoint_flags(config: Config) -> list[str]:
    flags = []
    if config.checkpoint_changes is not None:
        flags += ["--graph-checkpoint-changes", str(config.checkpoint_changes)]
    if config.checkpoint_seconds is not None:
        flags += ["--graph-checkpoint-seconds", str(config.checkpoint_seconds)]
    return flags


def wait_port(server: Server) -> None:
    deadline = time.monotonic() + 120
    while server.port() is None:
        if server.proc.poll() is not None or time.monotonic() > deadline:
            raise benchlib.BenchSetupError(f"nachbar-db did not start:\n{server.log()}")
        time.sleep(0.02)


def as_child(server: Server) -> benchlib.ChildServer:
    port = server.port()
    assert port is not None
    return benchlib.ChildServer("nachbar-db", server.proc, port, server.log_path)


# --- checkpoint pause -----------------------------------------------------------------------


@dataclass(frozen=True)
class PauseStats:
    way: str
    save_s: float
    held_s: float
    reader_max_ms: float
    reader_p99_ms: float
    reader_baseline_p99_ms: float
    writer_max_ms: float
    writer_baseline_p99_ms: float
    reads: int
    writes: int


def measure_checkpoint_pause(
    data_dir: Path, vectors: np.ndarray, n: int, baseline_s: float
) -> list[PauseStats]:
    from nachbar.db import recovery
    from nachbar.db.engine import Database
    from nachbar.db.types import Entry

    db = Database.open(data_dir, fsync="full", checkpoint_seconds=0, checkpoint_changes=0)
    try:
        db.wait_for_indexes()
        state = db._stores[STORE]
        stop = threading.Event()
        reads: list[tuple[float, float]] = []  # (start, seconds)
        writes: list[tuple[float, float]] = []
        rng = np.random.default_rng(7)

        def reader() -> None:
            while not stop.is_set():
                query = vectors[int(rng.integers(n))]
                start = time.perf_counter()
                db.get_sim_n(STORE, query, 10)
                reads.append((start, time.perf_counter() - start))

        def writer() -> None:
            # Paced: back-to-back writes would keep readers out by themselves (a waiting
            # writer holds new readers back), which is not what is measured here.
            position = 0
            while not stop.wait(WRITE_EVERY_SECONDS):
                ids = range(position, position + 10)
                batch = [Entry(f"id{i}", vectors[i], {"bucket": i % 100}) for i in ids]
                start = time.perf_counter()
                db.upsert(STORE, batch)
                writes.append((start, time.perf_counter() - start))
                position = (position + 10) % (n - 10)

        def new_way() -> float:
            saved = recovery.save_graph(state, fsync=True)
            assert saved is not None, "nothing to checkpoint: the writer changed nothing"
            return saved.held_seconds

        def old_way() -> float:
            target = data_dir / "old-way.hnsw"
            began = time.perf_counter()
            with state.lock.read():
                assert state.graph is not None
                state.graph._index.save_index(str(target))
            held = time.perf_counter() - began
            with target.open("rb") as handle:
                os.fsync(handle.fileno())
            target.unlink()
            return held

        threads = [threading.Thread(target=t, daemon=True) for t in (reader, writer)]
        for thread in threads:
            thread.start()
        out = []
        ways = (("snapshot (this change)", new_way), ("save_index (before)", old_way))
        try:
            for way, save in ways:
                time.sleep(baseline_s)
                began = time.perf_counter()
                held = save()
                ended = time.perf_counter()
                time.sleep(baseline_s)
                out.append(window_stats(way, reads, writes, began, ended, held, baseline_s))
                log(f"checkpoint pause: {out[-1]}")
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
        return out
    finally:
        db.close()


def window_stats(
    way: str,
    reads: Sequence[tuple[float, float]],
    writes: Sequence[tuple[float, float]],
    began: float,
    ended: float,
    held: float,
    baseline_s: float,
) -> PauseStats:
    def split(calls: Sequence[tuple[float, float]]) -> tuple[list[float], list[float]]:
        inside = [s for start, s in calls if start + s >= began and start <= ended]
        around = [  # wholly outside the window, within baseline_s of it
            s
            for start, s in calls
            if (began - baseline_s <= start and start + s < began)
            or ended < start <= ended + baseline_s
        ]
        return inside or [0.0], around or [0.0]

    reads_in, reads_out = split(reads)
    writes_in, writes_out = split(writes)
    return PauseStats(
        way=way,
        save_s=ended - began,
        held_s=held,
        reader_max_ms=1e3 * max(reads_in),
        reader_p99_ms=1e3 * float(np.percentile(reads_in, 99)),
        reader_baseline_p99_ms=1e3 * float(np.percentile(reads_out, 99)),
        writer_max_ms=1e3 * max(writes_in),
        writer_baseline_p99_ms=1e3 * float(np.percentile(writes_out, 99)),
        reads=len(reads_in),
        writes=len(writes_in),
    )


# --- report ---------------------------------------------------------------------------------


def report(config: Config, restarts: list[Restart], pauses: list[PauseStats], loads: Any) -> str:
    rows = []
    for r in restarts:
        rows.append(
            [
                r.scenario,
                r.server,
                f"{r.acknowledged:,} / {r.found:,}",
                f"{r.port_s:.2f}",
                f"{r.serving_s:.2f}",
                f"{r.first_search_s:.2f}",
                f"{r.hnsw_s:.2f}",
                f"{r.cpu_to_serve_s:.1f}",
                benchlib.verdict(r.serves_s <= TARGET_SECONDS and r.found >= r.acknowledged),
                "; ".join([r.graph, *r.notes]).strip("; "),
            ]
        )
    parts = [
        f"## recovery_bench: {config.n:,} x {DIM}, fsync=full, batches of {config.batch}",
        "",
        f"{loads['before']}; {loads['after']}",
    ]
    if restarts:
        parts += [
            "",
            "Seconds after the killed process was gone; serves = SERVING and a GetSimN answered; "
            f"target: serves within {TARGET_SECONDS:.0f} s with nothing acknowledged lost.",
            "",
            markdown_table(
                [
                    "kill -9",
                    "server",
                    "acknowledged / found",
                    "port open s",
                    "SERVING s",
                    "first GetSimN s",
                    "GetSimN from HNSW s",
                    "CPU s to serve",
                    "serves <= 10 s",
                    "graph",
                ],
                rows,
            ),
        ]
    if pauses:
        parts += [
            "",
            "Checkpoint of the whole graph while one reader (GetSimN k=10, back to back) and one "
            f"writer (an upsert of 10 every {WRITE_EVERY_SECONDS * 1e3:.0f} ms) run in-process; "
            "latencies inside the save's window vs the baseline around it:",
            "",
            markdown_table(
                [
                    "save",
                    "save s",
                    "writers held s",
                    "reader max ms",
                    "reader p99 ms (baseline)",
                    "writer max ms (baseline p99)",
                    "reads / writes in window",
                ],
                [
                    [
                        p.way,
                        f"{p.save_s:.2f}",
                        f"{p.held_s:.3f}",
                        f"{p.reader_max_ms:.0f}",
                        f"{p.reader_p99_ms:.1f} ({p.reader_baseline_p99_ms:.1f})",
                        f"{p.writer_max_ms:.0f} ({p.writer_baseline_p99_ms:.0f})",
                        f"{p.reads} / {p.writes}",
                    ]
                    for p in pauses
                ],
            ),
        ]
    return "\n".join(parts) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--kill-at", type=float, default=0.9, help="share of --n acknowledged")
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-changes", type=int, default=None)
    parser.add_argument("--checkpoint-seconds", type=float, default=None)
    parser.add_argument("--reference-bin", type=Path, default=None)
    parser.add_argument(
        "--reference-on-copy",
        action="store_true",
        help="start --reference-bin on a copy of the data directory the after-ingest kill left "
        "(instead of ingesting --n into it again)",
    )
    parser.add_argument("--pause-seconds", type=float, default=3.0, help="baseline window")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the data here")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, run in this order: {', '.join(SCENARIOS)} (with --workdir, a "
        "later run may go on from the data an earlier one left)",
    )
    parser.add_argument(
        "--skip-pause", action="store_true", help="leave out the checkpoint pause measurement"
    )
    parser.add_argument(
        "--pause-only",
        action="store_true",
        help="only the checkpoint pause, on the data an earlier run left in --workdir",
    )
    ns = parser.parse_args(argv)
    scenarios = tuple(name for name in ns.scenarios.split(",") if name)
    unknown = sorted(set(scenarios) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}")
    if ns.reference_on_copy and "after-ingest" not in scenarios:
        parser.error("--reference-on-copy copies what the after-ingest scenario leaves: run it")
    return Config(
        n=ns.n,
        batch=ns.batch,
        kill_at=ns.kill_at,
        clusters=ns.clusters,
        seed=ns.seed,
        checkpoint_changes=ns.checkpoint_changes,
        checkpoint_seconds=ns.checkpoint_seconds,
        reference_bin=ns.reference_bin,
        pause_seconds=ns.pause_seconds,
        workdir=ns.workdir,
        pause_only=ns.pause_only,
        skip_pause=ns.skip_pause,
        reference_on_copy=ns.reference_on_copy,
        scenarios=scenarios,
    )


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_args(argv)
    loads = {"before": benchlib.describe_load("before")}
    rng = np.random.default_rng(config.seed)
    vectors = db_bench.embedding_like(config.n + 1, DIM, config.clusters, rng)
    workdir_context: contextlib.AbstractContextManager[Path] = (
        contextlib.nullcontext(config.workdir)
        if config.workdir is not None
        else benchlib.scratch_dir("nachbar-recovery-")
    )
    with workdir_context as workdir:
        workdir.mkdir(parents=True, exist_ok=True)
        log(f"workdir {workdir}")
        restarts: list[Restart] = []
        if not config.pause_only:
            restarts = run_scenarios(config, workdir, vectors)
            if config.reference_bin is not None:
                restarts += run_reference(config, workdir, vectors)
        pauses: list[PauseStats] = []
        if not config.skip_pause:
            pauses = measure_checkpoint_pause(
                workdir / "data", vectors, config.n, config.pause_seconds
            )
    loads["after"] = benchlib.describe_load("after")
    benchlib.publish(
        "recovery_bench",
        {
            "config": config,
            "machine": benchlib.machine_facts(),
            "restarts": restarts,
            "pauses": pauses,
        },
        report(config, restarts, pauses, loads),
    )


if __name__ == "__main__":
    main()
