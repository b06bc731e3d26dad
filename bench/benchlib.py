"""Shared pieces of the benchmarks: child servers, latency statistics, machine facts, tables.

Every benchmark compares nachbar against a reference measured in the same run, because
absolute times on a shared machine say little; the ratios are the result.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
# Console scripts (nachbar-db, nachbar-ai, chroma) of the environment running the benchmark.
BIN_DIR = Path(sys.executable).parent
DEFAULT_MODEL_DIR = Path(os.environ.get("NACHBAR_BENCH_MODEL_DIR", "/tmp/nachbar-bench-models"))

T = TypeVar("T")


class BenchSetupError(RuntimeError):
    """The benchmark cannot run: a peer, a model or a server is missing."""


def import_peer(module: str) -> Any:
    """Import a peer library that only bench/.venv has (chromadb, fastembed)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise BenchSetupError(
            f"{module} is not installed in {sys.executable}: run bench/setup.sh and start the "
            f"benchmark with bench/.venv/bin/python ({error})"
        ) from None


# --- statistics ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyStats:
    count: int
    p50_ms: float
    p99_ms: float
    mean_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> LatencyStats:
        if not seconds:
            raise ValueError("no latencies were recorded")
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        return cls(
            count=len(ms),
            p50_ms=float(np.percentile(ms, 50)),
            p99_ms=float(np.percentile(ms, 99)),
            mean_ms=float(ms.mean()),
        )


def time_each(calls: Sequence[Callable[[], T]]) -> tuple[list[float], list[T]]:
    """Run the calls one after another; the seconds each took and what each returned."""
    seconds: list[float] = []
    results: list[T] = []
    for call in calls:
        start = time.perf_counter()
        results.append(call())
        seconds.append(time.perf_counter() - start)
    return seconds, results


@dataclass(frozen=True)
class Throughput:
    threads: int
    requests: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds


@dataclass
class Tally:
    """One measured path: the items it processed and the seconds they took, over all rounds."""

    name: str
    items: int = 0
    seconds: float = 0.0

    @property
    def per_second(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0


def timed_rounds(paths: Sequence[tuple[Tally, Callable[[], int]]], rounds: int) -> None:
    """Each round runs every path once, starting with a different one each round (so no path
    always runs first or last); a path returns how many items it processed."""
    for number in range(rounds):
        for offset in range(len(paths)):
            tally, work = paths[(number + offset) % len(paths)]
            start = time.perf_counter()
            tally.items += work()
            tally.seconds += time.perf_counter() - start


def run_threads(
    make_worker: Callable[[int], Callable[[int], object]], threads: int, requests: int
) -> Throughput:
    """`requests` calls spread over `threads` threads, each pulling the next request index.

    `make_worker(thread_number)` runs before the clock starts (to open a client per thread) and
    returns the function that serves one request index.
    """
    workers = [make_worker(n) for n in range(threads)]
    counter = iter(range(requests))
    lock = threading.Lock()
    errors: list[BaseException] = []
    start_line = threading.Barrier(threads + 1)

    def loop(worker: Callable[[int], object]) -> None:
        start_line.wait()
        while True:
            with lock:
                index = next(counter, None)
            if index is None or errors:
                return
            try:
                worker(index)
            except BaseException as error:  # re-raised in the caller's thread below
                errors.append(error)
                return

    pool = [threading.Thread(target=loop, args=(w,), daemon=True) for w in workers]
    for thread in pool:
        thread.start()
    start_line.wait()
    start = time.perf_counter()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return Throughput(threads=threads, requests=requests, seconds=elapsed)


def recall_at_k(found: Sequence[Sequence[int]], truth: np.ndarray, k: int) -> float:
    """Mean share of the true k nearest that were returned (truth rows may hold -1 padding)."""
    total = 0.0
    for got, expected in zip(found, truth, strict=True):
        wanted = {int(i) for i in expected[:k] if i >= 0}
        if not wanted:
            total += 1.0
            continue
        total += len(wanted.intersection(int(i) for i in got[:k])) / len(wanted)
    return total / len(found)


# --- child processes ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class ChildServer:
    """A server run as a child process, stopped with SIGTERM (then SIGKILL) on close."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _script(name: str, bin_dir: Path = BIN_DIR) -> str:
    path = bin_dir / name
    if not path.exists():
        raise BenchSetupError(
            f"{path} does not exist: run bench/setup.sh and start the benchmark with "
            "bench/.venv/bin/python"
        )
    return str(path)


def start_nachbar(
    script: str,
    args: Sequence[str],
    workdir: Path,
    *,
    timeout: float = 120.0,
    bin_dir: Path = BIN_DIR,
    env: dict[str, str] | None = None,
    credentials: Any = None,
) -> ChildServer:
    """Start nachbar-db or nachbar-ai (or the executable at an absolute path) on a free port and
    wait until it reports SERVING. `bin_dir` picks the installation: another checkout's
    `.venv/bin` runs that version. `env` adds to the environment (PYTHONPATH from
    `baseline_tree` runs another revision's code); `credentials`: grpc channel credentials for a
    server that serves TLS."""
    workdir.mkdir(parents=True, exist_ok=True)
    name = Path(script).name
    port_file = workdir / f"{name}.port"
    port_file.unlink(missing_ok=True)
    log_path = workdir / f"{name}.log"
    command = [
        _script(script, bin_dir),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--port-file",
        str(port_file),
        "--exit-with-parent",
        "--log-level",
        "warning",
        *args,
    ]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    deadline = time.monotonic() + timeout
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise BenchSetupError(
                f"{script} did not start: {' '.join(command)}\n{log_path.read_text()}"
            )
        time.sleep(0.05)
    server = ChildServer(name, proc, int(port_file.read_text().strip()), log_path)
    wait_serving(server, deadline - time.monotonic(), credentials)
    return server


def wait_serving(server: ChildServer, timeout: float, credentials: Any = None) -> None:
    from nachbar.cli.health import wait_until_serving

    report = wait_until_serving(
        server.address,
        max(timeout, 1.0),
        alive=lambda: server.proc.poll() is None,
        credentials=credentials,
    )
    if not report.serving:
        server.stop()
        raise BenchSetupError(f"{server.name} never became SERVING:\n{server.log_tail()}")


def start_chroma(workdir: Path, *, timeout: float = 60.0) -> ChildServer:
    """`chroma run` on a free loopback port with its data under `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = workdir / "chroma.log"
    command = [
        _script("chroma"),
        "run",
        "--path",
        str(workdir / "data"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    server = ChildServer("chroma", proc, port, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return server
        time.sleep(0.1)
    server.stop()
    raise BenchSetupError(f"chroma did not start: {' '.join(command)}\n{server.log_tail()}")


def start_milvus_lite(workdir: Path, *, timeout: float = 60.0) -> ChildServer:
    """milvus-lite's gRPC server (`python -m milvus_lite server`) on a free loopback port: one
    Milvus that nachbar-db (a child process) and the benchmark's own pymilvus clients share."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = workdir / "milvus-lite.log"
    command = [
        sys.executable,
        "-m",
        "milvus_lite",
        "server",
        "--data-dir",
        str(workdir / "data"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    server = ChildServer("milvus-lite", proc, port, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return server
        time.sleep(0.1)
    server.stop()
    raise BenchSetupError(f"milvus-lite did not start: {' '.join(command)}\n{server.log_tail()}")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime, fields 14 and 15 of stat(5), counted after the ")" that ends the name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_idle(
    server: ChildServer,
    *,
    busy_share: float = 0.05,
    quiet_seconds: float = 2.0,
    timeout: float = 120.0,
) -> float:
    """Wait until a server stops working in the background (index builds, compaction), so
    its leftover work neither helps nor hurts what is measured next. Returns seconds waited."""
    start = time.monotonic()
    quiet_since: float | None = None
    last = _cpu_seconds(server.proc.pid)
    while time.monotonic() - start < timeout:
        time.sleep(0.5)
        now = _cpu_seconds(server.proc.pid)
        busy = (now - last) / 0.5
        last = now
        if busy > busy_share:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_seconds:
            break
    return time.monotonic() - start


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def baseline_tree(rev: str, workdir: Path) -> dict[str, str]:
    """The environment that makes Python import nachbar from git revision `rev` of this repo:
    its files exported under `workdir` and laid out by import path (nachbar.db = db/, ...), put
    first on PYTHONPATH. Compares two versions in the same run, on the same machine load."""
    source = workdir / f"baseline-{rev}"
    source.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", rev], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    package = workdir / f"baseline-{rev}-path" / "nachbar"
    package.mkdir(parents=True, exist_ok=True)
    layout = {"db": "db", "ai": "ai", "server": "server", "cli": "cli"}
    layout |= {"client": "clients/python", "v1": "proto/nachbar/v1"}
    for name, folder in layout.items():
        (package / name).symlink_to(source / folder)
    return {"PYTHONPATH": str(package.parent)}


# --- machine facts and reporting ------------------------------------------------------------


def _lscpu_model() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1024 * 1024)
    return 0.0


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a process has used so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_facts() -> dict[str, Any]:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_model": _lscpu_model(),
        "cpus": cpus,
        "memory_gib": round(_memory_gib(), 1),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def describe_load(label: str) -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {label}: {one:.2f} {five:.2f} {fifteen:.2f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value)

    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines.extend("| " + " | ".join(cell(v) for v in row) + " |" for row in rows)
    return "\n".join(lines)


def verdict(met: bool) -> str:
    return "MET" if met else "NOT MET"


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """Keep the raw numbers of a run next to the printed report (bench/results/, gitignored)."""
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(_jsonable(payload), indent=2) + "\n")
    return path


def publish(name: str, payload: dict[str, Any], report: str) -> None:
    """Print a run's report and keep its raw numbers in bench/results/<name>.json."""
    print(report)
    path = write_results(name, {**payload, "report": report})
    log(f"raw numbers in {path}")


def log(message: str) -> None:
    """Progress on stderr, so stdout carries only the report."""
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)
