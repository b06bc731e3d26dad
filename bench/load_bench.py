"""nachbar-db and chromadb's server under the same mixed and saturating load, in one run.

Data: embedding-like 384-d vectors as db_bench makes them (`--size` of them preloaded, with
metadata `bucket` uniform in [0, 100) under a predicate index in nachbar), into one store per
system.

Phases, each run on every system in turn (the systems alternate in rounds):

1. **Mixed load.** `--clients` threads, each with its own connection, for `--seconds` per
   system: every thread draws its next operation from the mix (plain search k=10, search
   filtered to 10% of the store, GetKey of 5 ids, upsert of `--upsert-batch` new entries,
   delete of 5 entries it upserted before) and sends it as soon as the last one returns.
   Per-operation p50/p99, total operations per second, and errors by status.
2. **Interactive under bulk ingest.** One client's GetSimN p50/p99 on an idle server, then the
   same client (a pause of `--pause-ms` between queries) while `--bulk-clients` threads upsert
   batches of `--bulk-batch` new vectors into the same store as fast as the server takes them.
   The target compares the loaded p99 with the idle p50.
3. **Large batches** (nachbar only; `--big-batches 0` skips it). That many upserts of
   `--big-entries` entries (about 60 MB each at the default) sent at once; the statuses they
   get and how far the server's resident memory rises above where it was.

nachbar-db runs with fsync=full and its default admission settings; chromadb with its defaults
(persistent --path). Client threads live in this process; the CPU seconds the server and this
process used are reported next to each phase.

Run: bench/.venv/bin/python bench/load_bench.py [--size 100000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shlex
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import benchlib
import numpy as np
import numpy.typing as npt
from benchlib import ChildServer, LatencyStats, log, markdown_table
from db_bench import embedding_like

FloatMatrix = npt.NDArray[np.float32]

STORE = "load"
DIM = 384
BUCKETS = 100
FILTER_BELOW = 10  # bucket < 10: 10% of the entries
GET_IDS = 5
DELETE_IDS = 5
# Operation mix of the mixed-load phase, by weight.
MIX: tuple[tuple[str, int], ...] = (
    ("search", 35),
    ("filtered search", 15),
    ("get key", 20),
    ("upsert", 20),
    ("delete", 10),
)
OPERATIONS = tuple(name for name, _ in MIX)
MIB = 1024 * 1024
INTERACTIVE_DEADLINE = 10.0  # seconds an interactive client waits for a search under bulk load


@dataclass(frozen=True)
class Config:
    size: int
    clients: int
    seconds: float
    rounds: int
    k: int
    upsert_batch: int
    bulk_clients: int
    bulk_batch: int
    idle_queries: int
    pause_ms: float
    big_batches: int
    big_entries: int
    clusters: int
    seed: int
    systems: tuple[str, ...]
    baseline_db: str | None
    phases: tuple[str, ...]
    nachbar_args: tuple[str, ...]


# --- the systems ------------------------------------------------------------------------------


class Session(Protocol):
    """One client connection to a system: the operations of the load."""

    def search(self, query: FloatMatrix, filtered: bool) -> int: ...

    def get_keys(self, ids: Sequence[str]) -> int: ...

    def upsert(self, ids: Sequence[str], vectors: FloatMatrix, buckets: Sequence[int]) -> None: ...

    def delete(self, ids: Sequence[str]) -> None: ...

    def close(self) -> None: ...


class System(Protocol):
    name: str
    durability: str
    server: ChildServer

    def session(self, timeout: float = 120.0) -> Session:
        """A new connection; `timeout` is the deadline of each call where the client has one."""
        ...

    def close(self) -> None: ...


def status_name(error: BaseException) -> str:
    """The gRPC status or HTTP error class an operation failed with."""
    code = getattr(error, "code", None)
    name = getattr(code, "name", None)
    if isinstance(name, str):
        return name
    return type(error).__name__


class NachbarSession:
    def __init__(self, address: str, k: int, timeout: float = 120.0) -> None:
        from nachbar.client import DBClient, Field

        self._client = DBClient(address, timeout=timeout)
        self._filter = Field("bucket") < FILTER_BELOW
        self._k = k

    def search(self, query: FloatMatrix, filtered: bool) -> int:
        result = self._client.get_sim_n(
            STORE, query, self._k, filter=self._filter if filtered else None
        )
        return len(result.matches)

    def get_keys(self, ids: Sequence[str]) -> int:
        return len(self._client.get_key(STORE, ids).entries)

    def upsert(self, ids: Sequence[str], vectors: FloatMatrix, buckets: Sequence[int]) -> None:
        entries = [
            (i, v, {"bucket": int(b)}) for i, v, b in zip(ids, vectors, buckets, strict=True)
        ]
        self._client.upsert(STORE, entries, batch_size=max(1, len(entries)))

    def delete(self, ids: Sequence[str]) -> None:
        self._client.delete_keys(STORE, ids)

    def close(self) -> None:
        self._client.close()


class NachbarSystem:
    durability = "fsync=full (SQLite)"

    def __init__(self, config: Config, workdir: Path, executable: str = "nachbar-db") -> None:
        from nachbar.client import DBClient, Hnsw, Metric

        self._config = config
        self.name = "nachbar-db (gRPC)"
        if executable != "nachbar-db":
            self.name = f"nachbar-db baseline ({executable})"
        extra = config.nachbar_args if executable == "nachbar-db" else ()
        self.server = benchlib.start_nachbar(
            executable, ["--data-dir", str(workdir / "data"), "--fsync", "full", *extra], workdir
        )
        with DBClient(self.server.address, timeout=600) as client:
            client.create_store(
                STORE, DIM, metric=Metric.COSINE, index=Hnsw(), predicate_indexes=["bucket"]
            )

    def session(self, timeout: float = 120.0) -> NachbarSession:
        return NachbarSession(self.server.address, self._config.k, timeout)

    def close(self) -> None:
        self.server.stop()


class ChromaSession:
    def __init__(self, port: int, k: int) -> None:
        chromadb = benchlib.import_peer("chromadb")
        self._client = chromadb.HttpClient(host="127.0.0.1", port=port)
        self._collection = self._client.get_collection(STORE, embedding_function=None)
        self._k = k

    def search(self, query: FloatMatrix, filtered: bool) -> int:
        result = self._collection.query(
            query_embeddings=query[None, :],
            n_results=self._k,
            where={"bucket": {"$lt": FILTER_BELOW}} if filtered else None,
            include=["metadatas", "distances"],
        )
        return len(result["ids"][0])

    def get_keys(self, ids: Sequence[str]) -> int:
        return len(self._collection.get(ids=list(ids), include=["metadatas"])["ids"])

    def upsert(self, ids: Sequence[str], vectors: FloatMatrix, buckets: Sequence[int]) -> None:
        self._collection.upsert(
            ids=list(ids), embeddings=vectors, metadatas=[{"bucket": int(b)} for b in buckets]
        )

    def delete(self, ids: Sequence[str]) -> None:
        self._collection.delete(ids=list(ids))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()


class ChromaSystem:
    name = "chromadb server (HTTP)"
    durability = "chroma defaults (persistent --path)"

    def __init__(self, config: Config, workdir: Path) -> None:
        chromadb = benchlib.import_peer("chromadb")
        self._config = config
        self.server = benchlib.start_chroma(workdir)
        client = chromadb.HttpClient(host="127.0.0.1", port=self.server.port)
        client.create_collection(
            STORE, embedding_function=None, configuration={"hnsw": {"space": "cosine"}}
        )

    def session(self, timeout: float = 120.0) -> ChromaSession:
        return ChromaSession(self.server.port, self._config.k)  # its HTTP client has no deadline

    def close(self) -> None:
        self.server.stop()


# --- data -------------------------------------------------------------------------------------


@dataclass
class Data:
    base: FloatMatrix
    buckets: npt.NDArray[np.int64]
    queries: FloatMatrix
    fresh: FloatMatrix  # vectors for new entries written during the load

    def fresh_rows(self, start: int, count: int) -> FloatMatrix:
        rows = np.arange(start, start + count) % len(self.fresh)
        out: FloatMatrix = self.fresh[rows]
        return out


def make_data(config: Config) -> Data:
    rng = np.random.default_rng(config.seed)
    queries, fresh = 1000, 20_000
    vectors = embedding_like(config.size + queries + fresh, DIM, config.clusters, rng)
    vectors = vectors[rng.permutation(len(vectors))]
    return Data(
        base=vectors[: config.size],
        buckets=rng.integers(0, BUCKETS, size=config.size).astype(np.int64),
        queries=vectors[config.size : config.size + queries],
        fresh=vectors[config.size + queries :],
    )


def preload(system: System, data: Data, batch: int = 1000) -> float:
    session = system.session()
    start = time.perf_counter()
    try:
        for first in range(0, len(data.base), batch):
            rows = slice(first, min(first + batch, len(data.base)))
            ids = [str(i) for i in range(rows.start, rows.stop)]
            session.upsert(ids, data.base[rows], data.buckets[rows].tolist())
    finally:
        session.close()
    return time.perf_counter() - start


# --- phase 1: mixed load ------------------------------------------------------------------------


@dataclass
class Tally:
    """Latencies and errors of one phase, per operation."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    error_examples: dict[str, str] = field(default_factory=dict)
    wall_seconds: float = 0.0
    server_cpu_seconds: float = 0.0
    client_cpu_seconds: float = 0.0

    def record(self, operation: str, seconds: float) -> None:
        self.seconds.setdefault(operation, []).append(seconds)

    def fail(self, operation: str, error: BaseException) -> None:
        key = f"{operation}: {status_name(error)}"
        self.errors[key] += 1
        self.error_examples.setdefault(key, str(error)[:200])

    def merge(self, other: Tally) -> None:
        for operation, values in other.seconds.items():
            self.seconds.setdefault(operation, []).extend(values)
        self.errors.update(other.errors)
        for key, text in other.error_examples.items():
            self.error_examples.setdefault(key, text)
        self.wall_seconds += other.wall_seconds
        self.server_cpu_seconds += other.server_cpu_seconds
        self.client_cpu_seconds += other.client_cpu_seconds

    @property
    def completed(self) -> int:
        return sum(len(v) for v in self.seconds.values())

    @property
    def per_second(self) -> float:
        return self.completed / self.wall_seconds if self.wall_seconds else 0.0

    def stats(self, operation: str) -> LatencyStats | None:
        values = self.seconds.get(operation)
        return LatencyStats.of(values) if values else None


@dataclass
class MixedWorker:
    """One client thread of the mixed load: its own session, random stream and entries."""

    number: int
    session: Session
    data: Data
    config: Config
    tally: Tally = field(default_factory=Tally)
    mine: list[str] = field(default_factory=list)  # ids it upserted and has not deleted
    written: int = 0

    def run(self, stop_at: float, start_line: threading.Barrier) -> None:
        rng = random.Random(self.config.seed * 1000 + self.number)
        names = [name for name, _ in MIX]
        weights = [weight for _, weight in MIX]
        start_line.wait()
        while time.perf_counter() < stop_at:
            operation = rng.choices(names, weights)[0]
            if operation == "delete" and len(self.mine) < DELETE_IDS:
                operation = "upsert"
            call = self._call(operation, rng)
            start = time.perf_counter()
            try:
                call()
            except Exception as error:  # counted per status; the load goes on
                self.tally.fail(operation, error)
                continue
            self.tally.record(operation, time.perf_counter() - start)

    def _call(self, operation: str, rng: random.Random) -> Callable[[], object]:
        data = self.data
        if operation in ("search", "filtered search"):
            query = data.queries[rng.randrange(len(data.queries))]
            return lambda: self.session.search(query, operation == "filtered search")
        if operation == "get key":
            ids = [str(rng.randrange(len(data.base))) for _ in range(GET_IDS)]
            return lambda: self.session.get_keys(ids)
        if operation == "upsert":
            count = self.config.upsert_batch
            ids = [f"m{self.number}-{self.written + i}" for i in range(count)]
            vectors = data.fresh_rows(self.number * 100_003 + self.written, count)
            buckets = [rng.randrange(BUCKETS) for _ in range(count)]
            self.written += count

            def upsert() -> None:
                self.session.upsert(ids, vectors, buckets)
                self.mine.extend(ids)

            return upsert
        doomed = [self.mine.pop(rng.randrange(len(self.mine))) for _ in range(DELETE_IDS)]
        return lambda: self.session.delete(doomed)


def mixed_round(system: System, workers: list[MixedWorker], seconds: float) -> Tally:
    """All workers against `system` for `seconds`; returns this round's tally."""
    for worker in workers:
        worker.tally = Tally()
    start_line = threading.Barrier(len(workers) + 1)
    server_cpu = benchlib.cpu_seconds(system.server.proc.pid) or 0.0
    client_cpu = time.process_time()
    stop_at = time.perf_counter() + seconds
    threads = [
        threading.Thread(target=w.run, args=(stop_at, start_line), daemon=True) for w in workers
    ]
    for thread in threads:
        thread.start()
    start_line.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    round_tally = Tally()
    for worker in workers:
        round_tally.merge(worker.tally)
    round_tally.wall_seconds = time.perf_counter() - start
    round_tally.server_cpu_seconds = (
        benchlib.cpu_seconds(system.server.proc.pid) or 0.0
    ) - server_cpu
    round_tally.client_cpu_seconds = time.process_time() - client_cpu
    return round_tally


# --- phase 2: interactive reads under bulk ingest -------------------------------------------


@dataclass
class InteractiveReport:
    idle: LatencyStats | None = None
    loaded: LatencyStats | None = None
    bulk_vectors_per_second: float = 0.0
    bulk_errors: Counter[str] = field(default_factory=Counter)
    interactive_errors: Counter[str] = field(default_factory=Counter)
    error_examples: dict[str, str] = field(default_factory=dict)
    server_cpu_share: float = 0.0  # of the machine's CPUs, while loaded


def interactive_idle(system: System, data: Data, count: int) -> LatencyStats:
    session = system.session()
    try:
        for i in range(20):  # warm the connection
            session.search(data.queries[i], False)
        seconds = []
        for i in range(count):
            query = data.queries[i % len(data.queries)]
            start = time.perf_counter()
            session.search(query, False)
            seconds.append(time.perf_counter() - start)
    finally:
        session.close()
    return LatencyStats.of(seconds)


def interactive_under_bulk(
    system: System, data: Data, config: Config, report: InteractiveReport, offset: int
) -> None:
    stop = threading.Event()
    lock = threading.Lock()
    written = [0]

    def bulk(number: int) -> None:
        session = system.session()
        batch = config.bulk_batch
        n = 0
        try:
            while not stop.is_set():
                ids = [f"b{offset}-{number}-{n + i}" for i in range(batch)]
                vectors = data.fresh_rows(offset + number * 7919 + n, batch)
                buckets = [(n + i) % BUCKETS for i in range(batch)]
                try:
                    session.upsert(ids, vectors, buckets)
                except Exception as error:  # counted; the ingest goes on
                    with lock:
                        key = status_name(error)
                        report.bulk_errors[key] += 1
                        report.error_examples.setdefault(f"bulk {key}", str(error)[:200])
                    time.sleep(0.05)
                    continue
                n += batch
                with lock:
                    written[0] += batch
        finally:
            session.close()

    reader = system.session(timeout=INTERACTIVE_DEADLINE)
    for i in range(20):
        reader.search(data.queries[i], False)
    bulk_threads = [
        threading.Thread(target=bulk, args=(n,), daemon=True) for n in range(config.bulk_clients)
    ]
    for thread in bulk_threads:
        thread.start()
    time.sleep(min(2.0, config.seconds / 4))  # let the ingest reach its pace first
    with lock:
        written_before = written[0]
    server_cpu = benchlib.cpu_seconds(system.server.proc.pid) or 0.0
    start = time.perf_counter()
    seconds: list[float] = []
    i = 0
    while time.perf_counter() - start < config.seconds:
        query = data.queries[i % len(data.queries)]
        i += 1
        began = time.perf_counter()
        try:
            reader.search(query, False)
        except Exception as error:  # counted; the reads go on
            key = status_name(error)
            report.interactive_errors[key] += 1
            report.error_examples.setdefault(f"interactive {key}", str(error)[:200])
            continue
        seconds.append(time.perf_counter() - began)
        time.sleep(config.pause_ms / 1e3)
    elapsed = time.perf_counter() - start
    with lock:
        ingested = written[0] - written_before
    cpus = benchlib.machine_facts()["cpus"]
    server_cpu = (benchlib.cpu_seconds(system.server.proc.pid) or 0.0) - server_cpu
    stop.set()
    for thread in bulk_threads:
        thread.join(timeout=600)
    reader.close()
    report.loaded = LatencyStats.of(seconds) if seconds else None
    report.bulk_vectors_per_second = ingested / elapsed
    report.server_cpu_share = server_cpu / elapsed / cpus


# --- phase 3: large batches at once (nachbar) -----------------------------------------------


@dataclass
class BigBatchReport:
    batches: int = 0
    request_mib: float = 0.0
    statuses: Counter[str] = field(default_factory=Counter)
    messages: dict[str, str] = field(default_factory=dict)
    rss_before_mib: float = 0.0
    rss_peak_mib: float = 0.0
    seconds: float = 0.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def big_batches(system: NachbarSystem, data: Data, config: Config) -> BigBatchReport:
    import grpc

    from nachbar.v1 import common_pb2, db_pb2, db_pb2_grpc

    report = BigBatchReport(batches=config.big_batches)
    count = config.big_entries
    rows = data.fresh_rows(0, count)
    requests = []
    for b in range(config.big_batches):
        request = db_pb2.UpsertRequest(store=STORE)
        for i in range(count):
            entry = request.entries.add(id=f"big{b}-{i}", vector=rows[i].tolist())
            entry.metadata["bucket"].CopyFrom(common_pb2.MetadataValue(int_value=i % BUCKETS))
        requests.append(request)
    report.request_mib = requests[0].ByteSize() / MIB
    pid = system.server.proc.pid
    report.rss_before_mib = report.rss_peak_mib = rss_mib(pid)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            report.rss_peak_mib = max(report.rss_peak_mib, rss_mib(pid))

    options = [("grpc.max_send_message_length", 256 * 1024 * 1024)]
    lock = threading.Lock()

    def send(request: Any) -> None:
        with grpc.insecure_channel(system.server.address, options=options) as channel:
            stub = db_pb2_grpc.DBServiceStub(channel)
            try:
                stub.Upsert(request, timeout=600)
                status, message = "OK", ""
            except grpc.RpcError as error:
                status, message = error.code().name, error.details() or ""
        with lock:
            report.statuses[status] += 1
            report.messages.setdefault(status, message[:300])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    senders = [threading.Thread(target=send, args=(r,)) for r in requests]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join()
    report.seconds = time.perf_counter() - start
    time.sleep(0.5)
    done.set()
    sampler.join()
    return report


# --- the run --------------------------------------------------------------------------------


@dataclass
class SystemReport:
    name: str
    durability: str
    preload_seconds: float = 0.0
    mixed: Tally = field(default_factory=Tally)
    interactive: InteractiveReport = field(default_factory=InteractiveReport)
    big: BigBatchReport | None = None


def build_systems(config: Config, workdir: Path) -> list[System]:
    systems: list[System] = []
    for name in config.systems:
        if name == "nachbar":
            systems.append(NachbarSystem(config, workdir / "nachbar"))
        elif name == "chroma":
            systems.append(ChromaSystem(config, workdir / "chroma"))
    if config.baseline_db:
        systems.append(NachbarSystem(config, workdir / "baseline", config.baseline_db))
    return systems


def run(config: Config) -> dict[str, Any]:
    facts = benchlib.machine_facts()
    log(f"generating {config.size} x {DIM} vectors in {config.clusters} clusters")
    data = make_data(config)
    reports: list[SystemReport] = []
    with benchlib.scratch_dir("nachbar-load-bench-") as workdir:
        systems = build_systems(config, workdir)
        try:
            for system in systems:
                report = SystemReport(system.name, system.durability)
                log(f"{system.name}: preloading {config.size} vectors")
                report.preload_seconds = preload(system, data)
                benchlib.wait_idle(system.server)
                reports.append(report)

            if "mixed" in config.phases:
                mixed_phase(config, data, systems, reports)
            if "interactive" in config.phases:
                log("interactive GetSimN: idle, then under bulk ingest")
                for number, (system, report) in enumerate(zip(systems, reports, strict=True)):
                    report.interactive.idle = interactive_idle(system, data, config.idle_queries)
                    interactive_under_bulk(system, data, config, report.interactive, number * 10**6)
                    benchlib.wait_idle(system.server, timeout=60)
            if "big" in config.phases:
                for system, report in zip(systems, reports, strict=True):
                    if isinstance(system, NachbarSystem):
                        log(
                            f"{system.name}: {config.big_batches} upserts of "
                            f"{config.big_entries} entries at once"
                        )
                        report.big = big_batches(system, data, config)
        finally:
            for system in systems:
                system.close()
    facts["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return {"config": config, "machine": facts, "systems": reports}


def mixed_phase(
    config: Config, data: Data, systems: list[System], reports: list[SystemReport]
) -> None:
    log(f"mixed load: {config.clients} clients, {config.rounds} alternating rounds")
    workers = [
        [MixedWorker(n, system.session(), data, config) for n in range(config.clients)]
        for system in systems
    ]
    try:
        per_round = config.seconds / config.rounds
        for number in range(config.rounds):
            for offset in range(len(systems)):
                s = (number + offset) % len(systems)
                log(f"  round {number + 1}: {systems[s].name}")
                reports[s].mixed.merge(mixed_round(systems[s], workers[s], per_round))
                benchlib.wait_idle(systems[s].server, timeout=30)
    finally:
        for group in workers:
            for worker in group:
                worker.session.close()


# --- report ---------------------------------------------------------------------------------


def _by_prefix(reports: Sequence[SystemReport], prefix: str) -> SystemReport | None:
    return next((r for r in reports if r.name.startswith(prefix)), None)


def render(result: dict[str, Any]) -> str:
    config: Config = result["config"]
    reports: list[SystemReport] = result["systems"]
    machine = result["machine"]
    cpus = machine["cpus"]
    lines = [
        f"## load_bench: {config.size:,} x {DIM} store, {config.clients} mixed clients for "
        f"{config.seconds:g} s per system ({config.rounds} alternating rounds), "
        f"{config.bulk_clients} bulk clients x {config.bulk_batch} vectors",
        "",
        f"{machine['date']}; {machine['cpu_model']}, {cpus} CPUs, {machine['memory_gib']} GiB; "
        f"load average before {machine['load_average']}, after "
        f"{machine['load_average_after']}",
        "",
        "mix: "
        + ", ".join(f"{name} {weight}%" for name, weight in MIX)
        + f" (upserts of {config.upsert_batch} new entries, GetKey of {GET_IDS} ids, deletes "
        f"of {DELETE_IDS} ids, filters match 10%)",
        "",
    ]
    rows = []
    for r in reports:
        m = r.mixed
        rows.append(
            [
                r.name,
                r.durability,
                f"{config.size / r.preload_seconds:,.0f}",
                f"{m.per_second:,.0f}",
                m.completed,
                sum(m.errors.values()),
                f"{m.server_cpu_seconds / m.wall_seconds / cpus:.0%}" if m.wall_seconds else "-",
                f"{m.client_cpu_seconds / m.wall_seconds / cpus:.0%}" if m.wall_seconds else "-",
            ]
        )
    lines.append(
        markdown_table(
            [
                "system",
                "durability",
                "preload vec/s",
                "mixed ops/s",
                "ops",
                "errors",
                "server CPU",
                "client CPU",
            ],
            rows,
        )
    )
    lines.append("")
    op_rows = []
    for r in reports:
        for operation in OPERATIONS:
            stats = r.mixed.stats(operation)
            if stats is None:
                continue
            errors = sum(n for key, n in r.mixed.errors.items() if key.startswith(operation + ":"))
            op_rows.append(
                [
                    r.name,
                    operation,
                    stats.count,
                    f"{stats.count / r.mixed.wall_seconds:,.0f}",
                    f"{stats.p50_ms:.2f}",
                    f"{stats.p99_ms:.2f}",
                    errors,
                ]
            )
    lines.append(
        markdown_table(
            ["system", "operation", "count", "ops/s", "p50 ms", "p99 ms", "errors"], op_rows
        )
    )
    lines.append("")
    int_rows = []
    for r in reports:
        i = r.interactive
        if i.idle is None:
            continue
        loaded = i.loaded
        int_rows.append(
            [
                r.name,
                f"{i.idle.p50_ms:.2f}",
                f"{i.idle.p99_ms:.2f}",
                f"{loaded.p50_ms:.2f}" if loaded else "none answered",
                f"{loaded.p99_ms:.2f}" if loaded else "-",
                f"x{loaded.p99_ms / i.idle.p50_ms:.1f}" if loaded else "-",
                f"{i.bulk_vectors_per_second:,.0f}",
                f"{i.server_cpu_share:.0%}",
                sum(i.bulk_errors.values()) + sum(i.interactive_errors.values()),
            ]
        )
    lines.append(
        f"interactive GetSimN (1 client, {config.pause_ms:g} ms between queries) while "
        f"{config.bulk_clients} clients upsert batches of {config.bulk_batch} into the same store:"
    )
    lines.append("")
    lines.append(
        markdown_table(
            [
                "system",
                "idle p50 ms",
                "idle p99 ms",
                "loaded p50 ms",
                "loaded p99 ms",
                "loaded p99 / idle p50",
                "bulk vec/s",
                "server CPU",
                "errors",
            ],
            int_rows,
        )
    )
    lines.append("")
    for r in reports:
        if r.big is None:
            continue
        b = r.big
        lines.append(
            f"{r.name}: {b.batches} upserts of {config.big_entries:,} entries "
            f"({b.request_mib:.1f} MiB each) sent at once: "
            + ", ".join(f"{status} x{n}" for status, n in sorted(b.statuses.items()))
            + f" in {b.seconds:.1f} s; server RSS {b.rss_before_mib:,.0f} MiB before, peak "
            f"{b.rss_peak_mib:,.0f} MiB (+{b.rss_peak_mib - b.rss_before_mib:,.0f} MiB)"
        )
        for status, message in sorted(b.messages.items()):
            if message:
                lines.append(f"- {status}: {message}")
        lines.append("")

    nachbar = _by_prefix(reports, "nachbar-db (")
    chroma = _by_prefix(reports, "chromadb")
    lines.append("targets:")
    if nachbar is not None and nachbar.interactive.idle and nachbar.interactive.loaded:
        ratio = nachbar.interactive.loaded.p99_ms / nachbar.interactive.idle.p50_ms
        lines.append(
            f"- interactive GetSimN p99 under bulk ingest <= 10x its idle p50: "
            f"{nachbar.interactive.loaded.p99_ms:.2f} / {nachbar.interactive.idle.p50_ms:.2f} ms "
            f"= x{ratio:.1f} -> {benchlib.verdict(ratio <= 10)}"
        )
    if nachbar is not None and chroma is not None and chroma.mixed.per_second:
        ratio = nachbar.mixed.per_second / chroma.mixed.per_second
        errors = sum(nachbar.mixed.errors.values())
        lines.append(
            f"- mixed-load throughput >= 3x chromadb's with 0 errors: "
            f"{nachbar.mixed.per_second:,.0f} vs {chroma.mixed.per_second:,.0f} ops/s = "
            f"x{ratio:.2f}, {errors} errors -> {benchlib.verdict(ratio >= 3 and errors == 0)}"
        )
    examples = [
        (r.name, key, text)
        for r in reports
        for key, text in {**r.mixed.error_examples, **r.interactive.error_examples}.items()
    ]
    if examples:
        lines.append("")
        lines.append("errors seen (first message of each kind):")
        lines.extend(f"- {name}, {key}: {text}" for name, key, text in examples)
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=20_000, help="entries preloaded per system")
    parser.add_argument("--clients", type=int, default=32, help="mixed-load client threads")
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="mixed load per system; also the loaded phase"
    )
    parser.add_argument("--rounds", type=int, default=2, help="alternating mixed-load rounds")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--upsert-batch", type=int, default=10, help="entries per mixed upsert")
    parser.add_argument("--bulk-clients", type=int, default=4, help="bulk ingest threads")
    parser.add_argument("--bulk-batch", type=int, default=1000, help="vectors per bulk upsert")
    parser.add_argument("--idle-queries", type=int, default=500)
    parser.add_argument(
        "--pause-ms", type=float, default=2.0, help="pause between interactive queries under load"
    )
    parser.add_argument(
        "--big-batches", type=int, default=6, help="large upserts sent at once (0: skip)"
    )
    parser.add_argument(
        "--phases", default="mixed,interactive,big", help="comma-separated phases to run"
    )
    parser.add_argument(
        "--nachbar-args", default="", help="extra nachbar-db flags, e.g. '--bulk-workers 1'"
    )
    parser.add_argument(
        "--big-entries", type=int, default=40_000, help="entries per large upsert (~60 MB)"
    )
    parser.add_argument("--clusters", type=int, default=300)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--systems", default="nachbar,chroma", help="comma-separated subset of nachbar,chroma"
    )
    parser.add_argument(
        "--baseline-db",
        help="also load the nachbar-db executable at this absolute path (another build, e.g. "
        "before a change) as one more system",
    )
    ns = parser.parse_args(argv)
    phases = tuple(p.strip() for p in ns.phases.split(",") if p.strip())
    if set(phases) - {"mixed", "interactive", "big"}:
        parser.error(f"--phases takes mixed, interactive and/or big, got {ns.phases!r}")
    if not ns.big_batches:
        phases = tuple(p for p in phases if p != "big")
    systems = tuple(s.strip() for s in ns.systems.split(",") if s.strip())
    if not systems or set(systems) - {"nachbar", "chroma"}:
        parser.error(f"--systems takes nachbar and/or chroma, got {ns.systems!r}")
    if ns.size < 100 or ns.clients < 1 or ns.rounds < 1 or ns.seconds <= 0:
        parser.error("need --size >= 100, --clients >= 1, --rounds >= 1 and --seconds > 0")
    return Config(
        size=ns.size,
        clients=ns.clients,
        seconds=ns.seconds,
        rounds=ns.rounds,
        k=ns.k,
        upsert_batch=ns.upsert_batch,
        bulk_clients=ns.bulk_clients,
        bulk_batch=ns.bulk_batch,
        idle_queries=ns.idle_queries,
        pause_ms=ns.pause_ms,
        big_batches=ns.big_batches,
        big_entries=ns.big_entries,
        clusters=ns.clusters,
        seed=ns.seed,
        systems=systems,
        baseline_db=ns.baseline_db,
        phases=phases,
        nachbar_args=tuple(shlex.split(ns.nachbar_args)),
    )


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_args(argv)
    result = run(config)
    benchlib.publish("load_bench", result, render(result))


if __name__ == "__main__":
    main()
