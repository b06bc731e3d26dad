"""nachbar-db against raw hnswlib (in-process) and chromadb's server, in one run.

Data: embedding-like vectors (a Zipf-sized mixture of clusters with low-rank anisotropic
spread around a shared direction, L2-normalised), held-out queries, exact ground truth by numpy.

Measured per system, on the same data with the same HNSW M and ef_construction:
- ingest rate in batches of 1000 (nachbar over gRPC with fsync=full);
- the smallest ef from a ladder that reaches the target recall@10 on tuning queries (separate
  from the measured ones), then recall on the measured queries;
- single-client latency p50/p99 and throughput with several client threads;
- filtered search at 1% and 10% selectivity: p50 latency and recall against exact filtered
  ground truth.

Latency passes interleave the systems in blocks of --block queries (rotating who goes first),
and throughput passes alternate in short rounds, so load from other processes falls on all of
them alike. Blocks rather than single queries, because a query right after another system's
lets that system's leftover work (chromadb's filtered queries take 20-35 ms) and cold caches
land on it; --block 1 measures that query-by-query interleaving.

With --engine milvus the systems are nachbar-db on the Milvus engine and the same Milvus used
directly through pymilvus (a collection as a Milvus user would make it: the "bucket" metadata a
typed scalar field), both on one Milvus: a milvus-lite server started here, or --milvus-uri
(`bash scripts/milvus_server.sh bench` runs this on a fresh Milvus standalone server). What the
ratio shows is the cost of nachbar's translation: typed JSON metadata (and typed columns for
"bucket", declared as a predicate index at creation) and guarded filters, the planner's counts,
the extra gRPC hop, the upsert's count of existing ids.
Both read with consistency "bounded" (Milvus's default), so neither waits for time ticks.

Footprint and restarts (--footprint, on by default): after the searches, each server's resident
set (VmRSS of its process) and the bytes its data directory takes on disk, against the raw
vectors (n x 384 x 4 bytes) and hnswlib's index (vectors + graph links, `index_file_size`);
then nachbar-db is stopped with SIGTERM and started again on its data, and killed with SIGKILL
and started again: the seconds from the start of the new process to the first answered query,
and to the first query answered from the HNSW graph (a server serves exact scans while its graph
loads), and the resident set after the restart.

Large runs: --data-cache DIR (default bench/data) keeps the generated vectors and the exact
ground truth as .npy files, so a second run (or one after an interruption) skips generating
them; progress is logged every 50,000 ingested vectors. At 1M x 384 (1.5 GB of vectors) run
without chromadb (--systems hnswlib,nachbar) and measure chromadb at a smaller --n.

Run: bench/.venv/bin/python bench/db_bench.py [--n 100000 --queries 1000]
     bench/.venv/bin/python bench/db_bench.py --n 1000000 --systems hnswlib,nachbar \
         --throughput-requests 2000 --pauses-ms ""
     bench/.venv/bin/python bench/db_bench.py --engine milvus [--milvus-uri http://...]
         [--baseline-rev REV]   # REV's nachbar-db as one more system, same run
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import benchlib
import numpy as np
import numpy.typing as npt
from benchlib import ChildServer, LatencyStats, Throughput, log, markdown_table

FloatMatrix = npt.NDArray[np.float32]
IdMatrix = npt.NDArray[np.int64]

EF_LADDER = (10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 384, 512)
WARMUP_QUERIES = 50
STORE = "bench"
BUCKETS = 100  # metadata "bucket" is uniform in [0, 100): bucket == 7 is 1%, bucket < 10 is 10%


@dataclass(frozen=True)
class Config:
    n: int
    queries: int
    tuning_queries: int
    filtered_queries: int
    k: int
    m: int
    ef_construction: int
    target_recall: float
    threads: int
    throughput_requests: int
    rounds: int
    batch: int
    clusters: int
    seed: int
    systems: tuple[str, ...]
    block: int
    pauses_ms: tuple[float, ...]
    engine: str = "embedded"
    milvus_uri: str = ""
    # A git revision of this repo: its nachbar-db runs as one more system, in the same run.
    baseline_rev: str = ""
    data_cache: str = ""
    footprint: bool = True


@dataclass(frozen=True)
class FilterSpec:
    """One metadata condition on "bucket", expressed for each system."""

    label: str
    op: str  # "eq" or "lt"
    value: int

    def mask(self, buckets: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        return buckets == self.value if self.op == "eq" else buckets < self.value


FILTERS = (FilterSpec("1%", "eq", 7), FilterSpec("10%", "lt", 10))


@dataclass(frozen=True)
class Dataset:
    base: FloatMatrix
    buckets: npt.NDArray[np.int64]
    queries: FloatMatrix
    tuning: FloatMatrix


def embedding_like(count: int, dim: int, clusters: int, rng: np.random.Generator) -> FloatMatrix:
    """Vectors shaped like sentence embeddings rather than isotropic noise.

    Real embeddings sit in a cone around a common direction, their topics have very unequal
    sizes, and each topic spreads along a few dozen directions much more than the rest.
    """
    rank, spread, isotropic, common_weight = 64, 0.6, 0.35, 0.6
    common = rng.standard_normal(dim)
    common /= np.linalg.norm(common)
    centers = rng.standard_normal((clusters, dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    centers += common_weight * common
    sizes = 1.0 / np.arange(1, clusters + 1) ** 0.7
    assignment = rng.choice(clusters, size=count, p=sizes / sizes.sum())
    scales = spread * np.arange(1, rank + 1) ** -0.5
    out = np.empty((count, dim), dtype=np.float32)
    for cluster in range(clusters):
        members = np.flatnonzero(assignment == cluster)
        if members.size == 0:
            continue
        basis, _ = np.linalg.qr(rng.standard_normal((dim, rank)))
        along = (rng.standard_normal((members.size, rank)) * scales) @ basis.T
        noise = rng.standard_normal((members.size, dim)) * (isotropic / np.sqrt(dim))
        out[members] = centers[cluster] + along + noise
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def cached_dataset(config: Config, dim: int = 384) -> Dataset:
    """`make_dataset`, kept in --data-cache as .npy files (generating 1M vectors takes minutes)."""
    if not config.data_cache:
        return make_dataset(config, dim)
    folder = Path(config.data_cache)
    stem = (
        f"embedding-like-n{config.n}-q{config.queries}-t{config.tuning_queries}-"
        f"c{config.clusters}-s{config.seed}-d{dim}"
    )
    parts = ("base", "buckets", "queries", "tuning")
    paths = {part: folder / f"{stem}-{part}.npy" for part in parts}
    if all(path.exists() for path in paths.values()):
        log(f"vectors from {folder}/{stem}-*.npy")
        return Dataset(*(np.load(paths[part]) for part in parts))
    data = make_dataset(config, dim)
    folder.mkdir(parents=True, exist_ok=True)
    for part in parts:
        tmp = paths[part].with_suffix(".tmp.npy")
        np.save(tmp, getattr(data, part))
        os.replace(tmp, paths[part])  # a complete file or none: an interrupted run resumes
    return data


def cached_truth(
    config: Config,
    name: str,
    compute: Callable[[], IdMatrix],
) -> IdMatrix:
    if not config.data_cache:
        return compute()
    path = Path(config.data_cache) / (
        f"truth-n{config.n}-q{config.queries}-t{config.tuning_queries}-c{config.clusters}-"
        f"s{config.seed}-k{config.k}-{name}.npy"
    )
    if path.exists():
        cached: IdMatrix = np.load(path)
        return cached
    truth = compute()
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, truth)
    os.replace(tmp, path)
    return truth


def make_dataset(config: Config, dim: int = 384) -> Dataset:
    rng = np.random.default_rng(config.seed)
    total = config.n + config.queries + config.tuning_queries
    vectors = embedding_like(total, dim, config.clusters, rng)
    vectors = vectors[rng.permutation(total)]  # held-out queries come from every cluster
    base = vectors[: config.n]
    queries = vectors[config.n : config.n + config.queries]
    tuning = vectors[config.n + config.queries :]
    buckets = rng.integers(0, BUCKETS, size=config.n).astype(np.int64)
    return Dataset(base, buckets, queries, tuning)


def exact_top_k(
    base: FloatMatrix,
    queries: FloatMatrix,
    k: int,
    mask: npt.NDArray[np.bool_] | None = None,
) -> IdMatrix:
    """Ids of the k most cosine-similar base rows (rows are unit length, so dot products)."""
    candidates = np.arange(base.shape[0]) if mask is None else np.flatnonzero(mask)
    subset = base[candidates]
    out = np.full((queries.shape[0], k), -1, dtype=np.int64)
    take = min(k, candidates.size)
    for start in range(0, queries.shape[0], 256):
        scores = queries[start : start + 256] @ subset.T
        top = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        out[start : start + 256, :take] = candidates[np.take_along_axis(top, order, axis=1)]
    return out


# --- the systems --------------------------------------------------------------------------


SearchFn = Callable[[FloatMatrix, FilterSpec | None], list[int]]


class System(Protocol):
    name: str
    durability: str

    def ingest(self, data: Dataset, batch: int) -> None: ...

    def settle(self) -> float: ...

    def set_ef(self, ef: int) -> None: ...

    def searcher(self) -> SearchFn:
        """A search function with its own connection, for one thread."""
        ...

    def round_trip(self) -> Callable[[], object] | None:
        """The cheapest request the server answers (a transport floor), if it is a server."""
        ...

    def close(self) -> None: ...


class HnswlibSystem:
    """The library nachbar and chroma both build on, in-process: the floor for overhead."""

    name = "hnswlib (in-process)"
    durability = "none (memory only)"

    def __init__(self, config: Config, dim: int) -> None:
        import hnswlib

        self._index: Any = hnswlib.Index(space="cosine", dim=dim)
        self._index.init_index(
            max_elements=config.n, M=config.m, ef_construction=config.ef_construction
        )
        self._k = config.k
        self._masks: dict[str, npt.NDArray[np.bool_]] = {}

    def ingest(self, data: Dataset, batch: int) -> None:
        for start in range(0, data.base.shape[0], batch):
            rows = data.base[start : start + batch]
            self._index.add_items(rows, np.arange(start, start + rows.shape[0]))
            progress(self.name, start + rows.shape[0], data.base.shape[0], batch)
        self._masks = {f.label: f.mask(data.buckets) for f in FILTERS}

    def settle(self) -> float:
        return 0.0

    def set_ef(self, ef: int) -> None:
        self._index.set_ef(ef)

    def searcher(self) -> SearchFn:
        def search(query: FloatMatrix, spec: FilterSpec | None) -> list[int]:
            allowed: Callable[[int], bool] | None = None
            if spec is not None:
                mask = self._masks[spec.label]

                def allowed(label: int) -> bool:
                    return bool(mask[label])

            labels, _ = self._index.knn_query(query, k=self._k, num_threads=1, filter=allowed)
            return [int(x) for x in labels[0]]

        return search

    def round_trip(self) -> Callable[[], object] | None:
        return None

    def index_bytes(self) -> int:
        """hnswlib's index as it saves it: vectors, graph links and labels."""
        return int(self._index.index_file_size())

    def close(self) -> None:
        pass


class NachbarSystem:
    name = "nachbar-db (gRPC)"
    durability = "fsync=full (SQLite)"

    def __init__(self, config: Config, dim: int, workdir: Path, *, baseline_rev: str = "") -> None:
        from nachbar.client import DBClient, Hnsw, Metric

        self._config = config
        # The baseline's store has its own name (letters only, so its collection is
        # nachbar_<name>): on Milvus both systems share one server.
        self._store = STORE + ("base" if baseline_rev else "")
        self.data_dir = workdir / "data"
        self._workdir = workdir
        args = ["--data-dir", str(self.data_dir), "--fsync", "full"]
        if config.engine == "milvus":
            self.name = "nachbar-db on Milvus (gRPC)"
            self.durability = "Milvus's (consistency bounded)"
            args = ["--engine", "milvus", "--milvus-uri", config.milvus_uri]
            args += ["--milvus-consistency", "bounded"]
        self._env = benchlib.baseline_tree(baseline_rev, workdir) if baseline_rev else None
        if baseline_rev:
            self.name = f"baseline {baseline_rev} {self.name}"
        self._args = args
        self.server: ChildServer = benchlib.start_nachbar(
            "nachbar-db", args, workdir, env=self._env
        )
        self._client = DBClient(self.server.address, timeout=600)
        self._client.create_store(
            self._store,
            dim,
            metric=Metric.COSINE,
            index=Hnsw(m=config.m, ef_construction=config.ef_construction),
            predicate_indexes=["bucket"],
        )
        self._ef = 0
        self._searcher_clients: list[DBClient] = []
        self.plans: set[str] = set()
        self.short_results = 0

    def ingest(self, data: Dataset, batch: int) -> None:
        rows = data.base
        step = max(batch, PROGRESS_EVERY)
        for start in range(0, rows.shape[0], step):
            stop = min(start + step, rows.shape[0])
            entries = (
                (str(i), rows[i], {"bucket": int(data.buckets[i])}) for i in range(start, stop)
            )
            self._client.upsert(self._store, entries, batch_size=batch)
            progress(self.name, stop, rows.shape[0], step)

    def settle(self) -> float:
        if self._config.engine == "milvus":
            return settle_milvus(self._config.milvus_uri, f"nachbar_{self._store}")
        return benchlib.wait_idle(self.server)

    def set_ef(self, ef: int) -> None:
        self._ef = ef

    def searcher(self) -> SearchFn:
        from nachbar.client import DBClient, Field, SearchMode

        client = DBClient(self.server.address, timeout=60)
        self._searcher_clients.append(client)
        k = self._config.k
        store = self._store

        def search(query: FloatMatrix, spec: FilterSpec | None) -> list[int]:
            condition = None
            if spec is not None:
                field_ = Field("bucket")
                condition = field_ == spec.value if spec.op == "eq" else field_ < spec.value
            # Unfiltered: HNSW, whose ef is what is tuned. Filtered: the planner's choice.
            mode = SearchMode.HNSW if spec is None else SearchMode.AUTO
            result = client.get_sim_n(store, query[0], k, filter=condition, ef=self._ef, mode=mode)
            self.plans.add(f"{'unfiltered' if spec is None else spec.label}: {result.plan}")
            if len(result.matches) < k:
                self.short_results += 1
            return [int(m.id) for m in result.matches]

        return search

    def round_trip(self) -> Callable[[], object] | None:
        return self._client.ping

    def restart(self, query: FloatMatrix, kill: bool) -> Restart:
        """Stop the server (SIGTERM, or SIGKILL with `kill`), start it again on its data and
        time how soon it answers `query`, and how soon from its HNSW graph."""
        from nachbar.client import DBClient, SearchMode

        for client in (*self._searcher_clients, self._client):
            client.close()
        self._searcher_clients = []
        began = time.perf_counter()
        if kill:
            self.server.proc.kill()
            self.server.proc.wait(30)
        else:
            self.server.stop(timeout=1800)
        stopped = time.perf_counter() - began
        began = time.perf_counter()
        self.server = benchlib.start_nachbar(
            "nachbar-db", self._args, self._workdir, env=self._env, timeout=3600
        )
        self._client = DBClient(self.server.address, timeout=600)
        k = self._config.k
        answered = graph = 0.0
        while True:
            result = self._client.get_sim_n(
                self._store, query[0], k, mode=SearchMode.AUTO, ef=self._ef
            )
            now = time.perf_counter() - began
            if len(result.matches) == k and not answered:
                answered = now
            if result.plan == "hnsw":
                graph = now
                break
            time.sleep(0.1)
        return Restart(stop_seconds=stopped, serve_seconds=answered, graph_seconds=graph)

    def close(self) -> None:
        for client in (*self._searcher_clients, self._client):
            client.close()
        self.server.stop(timeout=1800)


def settle_milvus(uri: str, collection: str, timeout: float = 600.0) -> float:
    """Flush a collection and wait until Milvus has indexed every row, so that neither system
    is measured while the other's index is still being built."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri)
    start = time.monotonic()
    try:
        client.flush(collection)
        while time.monotonic() - start < timeout:
            index = client.describe_index(collection, client.list_indexes(collection)[0])
            if not index or int(index.get("pending_index_rows", 0) or 0) == 0:
                break
            time.sleep(1.0)
    finally:
        client.close()
    return time.monotonic() - start


class MilvusDirectSystem:
    """The same Milvus through pymilvus, as its users write it: "bucket" a typed INT64 field."""

    name = "Milvus direct (pymilvus)"
    durability = "Milvus's (consistency bounded)"
    collection = "direct_bench"

    def __init__(self, config: Config, dim: int) -> None:
        from pymilvus import DataType, MilvusClient

        self._config = config
        self._client = MilvusClient(uri=config.milvus_uri)
        if self._client.has_collection(self.collection):
            self._client.drop_collection(self.collection)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("bucket", DataType.INT64)
        index = MilvusClient.prepare_index_params()
        index.add_index(
            "vector",
            index_type="HNSW",
            metric_type="COSINE",
            params={"M": config.m, "efConstruction": config.ef_construction},
        )
        self._client.create_collection(
            self.collection, schema=schema, index_params=index, consistency_level="Bounded"
        )
        self._ef = EF_LADDER[0]
        self._clients: list[Any] = []

    def ingest(self, data: Dataset, batch: int) -> None:
        for start in range(0, data.base.shape[0], batch):
            stop = min(start + batch, data.base.shape[0])
            rows = [
                {"id": str(i), "vector": data.base[i].tolist(), "bucket": int(data.buckets[i])}
                for i in range(start, stop)
            ]
            self._client.insert(self.collection, rows)

    def settle(self) -> float:
        return settle_milvus(self._config.milvus_uri, self.collection)

    def set_ef(self, ef: int) -> None:
        self._ef = ef

    def searcher(self) -> SearchFn:
        from pymilvus import MilvusClient

        client = MilvusClient(uri=self._config.milvus_uri, dedicated=True)
        self._clients.append(client)
        k = self._config.k

        def search(query: FloatMatrix, spec: FilterSpec | None) -> list[int]:
            expr = ""
            if spec is not None:
                expr = f"bucket == {spec.value}" if spec.op == "eq" else f"bucket < {spec.value}"
            # The metadata comes back with each hit, as nachbar's GetSimN returns it.
            hits = client.search(
                self.collection,
                data=[query[0].tolist()],
                filter=expr,
                limit=k,
                output_fields=["bucket"],
                search_params={"metric_type": "COSINE", "params": {"ef": max(self._ef, k)}},
                consistency_level="Bounded",
            )
            return [int(hit["id"]) for hit in hits[0]]

        return search

    def round_trip(self) -> Callable[[], object] | None:
        version: Callable[[], object] = self._client.get_server_version
        return version

    def close(self) -> None:
        for client in (*self._clients, self._client):
            client.close()


class ChromaSystem:
    name = "chromadb server (HTTP)"
    durability = "chroma defaults (persistent --path)"

    def __init__(self, config: Config, workdir: Path) -> None:
        chromadb = benchlib.import_peer("chromadb")
        self._chromadb = chromadb
        self._config = config
        self._workdir = workdir
        self.server = benchlib.start_chroma(workdir)
        self._client = chromadb.HttpClient(host="127.0.0.1", port=self.server.port)
        self._collection = self._client.create_collection(
            STORE,
            embedding_function=None,
            configuration={
                "hnsw": {
                    "space": "cosine",
                    "max_neighbors": config.m,
                    "ef_construction": config.ef_construction,
                    "ef_search": EF_LADDER[0],
                }
            },
        )
        self._ef = EF_LADDER[0]
        self.data_dir = workdir

    def ingest(self, data: Dataset, batch: int) -> None:
        for start in range(0, data.base.shape[0], batch):
            stop = min(start + batch, data.base.shape[0])
            self._collection.add(
                ids=[str(i) for i in range(start, stop)],
                embeddings=data.base[start:stop],
                metadatas=[{"bucket": int(b)} for b in data.buckets[start:stop]],
            )
            progress(self.name, stop, data.base.shape[0], batch)

    def settle(self) -> float:
        return benchlib.wait_idle(self.server)

    def set_ef(self, ef: int) -> None:
        if ef == self._ef:
            return
        # chroma reads ef_search only when it loads a collection's index (1.5: a modified value
        # is stored but ignored by the running server), so the server restarts on its data.
        self._ef = ef
        self._collection.modify(configuration={"hnsw": {"ef_search": ef}})
        self.server.stop()
        self.server = benchlib.start_chroma(self._workdir)
        self._client = self._chromadb.HttpClient(host="127.0.0.1", port=self.server.port)
        self._collection = self._client.get_collection(STORE, embedding_function=None)

    def searcher(self) -> SearchFn:
        client = self._chromadb.HttpClient(host="127.0.0.1", port=self.server.port)
        collection = client.get_collection(STORE, embedding_function=None)
        k = self._config.k

        def search(query: FloatMatrix, spec: FilterSpec | None) -> list[int]:
            where = None
            if spec is not None:
                where = (
                    {"bucket": spec.value} if spec.op == "eq" else {"bucket": {"$lt": spec.value}}
                )
            # Metadata and distances: what nachbar's GetSimN returns with each match.
            result = collection.query(
                query_embeddings=query,
                n_results=k,
                where=where,
                include=["metadatas", "distances"],
            )
            return [int(i) for i in result["ids"][0]]

        return search

    def round_trip(self) -> Callable[[], object] | None:
        heartbeat: Callable[[], object] = self._client.heartbeat
        return heartbeat

    def close(self) -> None:
        self.server.stop()


# --- measurements -------------------------------------------------------------------------

PROGRESS_EVERY = 50_000


def progress(name: str, done: int, total: int, step: int) -> None:
    if done == total or done // PROGRESS_EVERY != (done - step) // PROGRESS_EVERY:
        log(f"{name}: {done:,} / {total:,} ingested")


@dataclass(frozen=True)
class Restart:
    stop_seconds: float  # SIGTERM until the process exited (0 for SIGKILL)
    serve_seconds: float  # new process started until the first query was answered
    graph_seconds: float  # ... until the first query answered from the HNSW graph


def resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def disk_bytes(path: Path) -> int:
    """Bytes the files under `path` take on disk (allocated blocks)."""
    total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            try:
                total += os.stat(os.path.join(folder, name)).st_blocks * 512
            except FileNotFoundError:
                continue  # a temporary file that went away
    return total


@dataclass
class SystemReport:
    name: str
    durability: str
    ingest_seconds: float = 0.0
    settle_seconds: float = 0.0
    first_query_ms: float = 0.0
    ef: int = 0
    tuning_curve: list[tuple[int, float]] = field(default_factory=list)
    recall: float = 0.0
    latency: LatencyStats | None = None
    throughput: float = 0.0
    filtered: dict[str, tuple[LatencyStats, float]] = field(default_factory=dict)
    round_trip: LatencyStats | None = None
    # p50 with a pause of this many ms before each query (a client that does other work).
    paused: dict[float, LatencyStats] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    rss_bytes: int = 0  # resident set of the server after the searches (0: in-process)
    disk_bytes: int = 0
    index_bytes: int = 0  # hnswlib only: vectors + links as index_file_size() reports
    restarts: dict[str, Restart] = field(default_factory=dict)
    rss_after_restart: int = 0


def search_all(
    search: SearchFn, queries: FloatMatrix, spec: FilterSpec | None = None
) -> list[list[int]]:
    return [search(queries[i : i + 1], spec) for i in range(queries.shape[0])]


def tune_ef(
    system: System,
    data: Dataset,
    truth_tuning: IdMatrix,
    truth_measured: IdMatrix,
    config: Config,
    report: SystemReport,
) -> None:
    """Smallest ladder ef whose recall on the tuning queries reaches the target; if the
    measured queries then fall short, the next rungs are tried (and that is noted)."""
    chosen = EF_LADDER[-1]
    for ef in EF_LADDER:
        system.set_ef(ef)
        search = system.searcher()
        recall = benchlib.recall_at_k(search_all(search, data.tuning), truth_tuning, config.k)
        report.tuning_curve.append((ef, recall))
        if recall >= config.target_recall:
            chosen = ef
            break
    for ef in EF_LADDER[EF_LADDER.index(chosen) :]:
        if ef != chosen:
            system.set_ef(ef)
        found = search_all(system.searcher(), data.queries)
        recall = benchlib.recall_at_k(found, truth_measured, config.k)
        report.ef, report.recall = ef, recall
        if recall >= config.target_recall:
            break
        report.notes.append(f"ef={ef} reached only {recall:.3f} on the measured queries")


def interleaved_order(queries: int, systems: int, block: int) -> list[tuple[int, int]]:
    """(system, query) pairs: blocks of `block` queries go to every system in turn, the block
    after block j starting with system j mod n. block=1 interleaves query by query."""
    order: list[tuple[int, int]] = []
    for j, first in enumerate(range(0, queries, block)):
        indexes = range(first, min(first + block, queries))
        for turn in range(systems):
            order.extend(((j + turn) % systems, i) for i in indexes)
    return order


def interleaved_latency(
    searches: Sequence[SearchFn],
    queries: FloatMatrix,
    spec: FilterSpec | None,
    k: int,
    truth: IdMatrix,
    block: int,
    pause: float = 0.0,
) -> list[tuple[LatencyStats, float]]:
    """Every query to every system, interleaved in blocks (see `interleaved_order`), each
    after `pause` seconds of sleep when given."""
    count = len(searches)
    seconds: list[list[float]] = [[] for _ in searches]
    found: list[dict[int, list[int]]] = [{} for _ in searches]
    for which, i in interleaved_order(queries.shape[0], count, block):
        if pause:
            time.sleep(pause)
        start = time.perf_counter()
        ids = searches[which](queries[i : i + 1], spec)
        seconds[which].append(time.perf_counter() - start)
        found[which][i] = ids
    return [
        (
            LatencyStats.of(seconds[s]),
            benchlib.recall_at_k([found[s][i] for i in range(queries.shape[0])], truth, k),
        )
        for s in range(count)
    ]


def alternating_throughput(
    systems: Sequence[System], queries: FloatMatrix, config: Config
) -> list[float]:
    """Requests per second with `threads` clients, in alternating rounds per system."""
    totals = [Throughput(config.threads, 0, 0.0) for _ in systems]
    per_round = max(config.threads, config.throughput_requests // config.rounds)
    for _ in range(config.rounds):
        for s, system in enumerate(systems):

            def make_worker(_thread: int, system: System = system) -> Callable[[int], object]:
                search = system.searcher()
                return lambda index: search(queries[index % len(queries)][None, :], None)

            run = benchlib.run_threads(make_worker, config.threads, per_round)
            previous = totals[s]
            totals[s] = Throughput(
                config.threads, previous.requests + run.requests, previous.seconds + run.seconds
            )
    return [t.per_second for t in totals]


def measure_footprint(
    systems: Sequence[System], reports: Sequence[SystemReport], data: Dataset
) -> None:
    """Resident set and disk of each server; nachbar-db's restarts (see the module docstring)."""
    for system, report in zip(systems, reports, strict=True):
        if isinstance(system, HnswlibSystem):
            report.index_bytes = system.index_bytes()
            continue
        server = getattr(system, "server", None)
        folder = getattr(system, "data_dir", None)
        if server is not None:
            report.rss_bytes = resident_bytes(server.proc.pid)
        if folder is not None:
            report.disk_bytes = disk_bytes(folder)
        if isinstance(system, NachbarSystem) and system.durability.startswith("fsync"):
            for label, kill in (("SIGTERM", False), ("SIGKILL", True)):
                log(f"{system.name}: restart after {label}")
                restart = system.restart(data.queries[:1], kill)
                report.restarts[label] = restart
                log(
                    f"{system.name}: after {label} answered in {restart.serve_seconds:.1f} s, "
                    f"from the graph in {restart.graph_seconds:.1f} s"
                )
                if label == "SIGTERM":
                    search = system.searcher()
                    for i in range(WARMUP_QUERIES):
                        search(data.queries[i % len(data.queries)][None, :], None)
                    report.rss_after_restart = resident_bytes(system.server.proc.pid)
            report.disk_bytes = max(report.disk_bytes, disk_bytes(system.data_dir))


def build_systems(config: Config, dim: int, workdir: Path) -> list[System]:
    systems: list[System] = []
    for name in config.systems:
        if name == "nachbar":
            systems.append(NachbarSystem(config, dim, workdir / "nachbar"))
            if config.baseline_rev:
                systems.append(
                    NachbarSystem(
                        config, dim, workdir / "baseline", baseline_rev=config.baseline_rev
                    )
                )
        elif name == "hnswlib":
            systems.append(HnswlibSystem(config, dim))
        elif name == "chroma":
            systems.append(ChromaSystem(config, workdir / "chroma"))
        elif name == "milvus":
            systems.append(MilvusDirectSystem(config, dim))
    return systems


def run(config: Config) -> dict[str, Any]:
    facts = benchlib.machine_facts()
    log(f"generating {config.n} x 384 vectors in {config.clusters} clusters")
    data = cached_dataset(config)
    dim = data.base.shape[1]
    log("exact ground truth")
    truth = cached_truth(config, "queries", lambda: exact_top_k(data.base, data.queries, config.k))
    truth_tuning = cached_truth(
        config, "tuning", lambda: exact_top_k(data.base, data.tuning, config.k)
    )
    filtered_queries = data.queries[: config.filtered_queries]
    filtered_truth = {
        f.label: cached_truth(
            config,
            f"filtered{config.filtered_queries}-{f.op}{f.value}",
            lambda f=f: exact_top_k(data.base, filtered_queries, config.k, f.mask(data.buckets)),  # type: ignore[misc]
        )
        for f in FILTERS
    }
    similarity = data.queries[:200] @ data.base[:2000].T
    data_facts = {
        "mean_cosine_random_pair": float(similarity.mean()),
        "mean_cosine_nearest": float(
            np.mean(np.sum(data.queries[:200] * data.base[truth[:200, 0]], axis=1))
        ),
    }

    reports: list[SystemReport] = []
    with benchlib.scratch_dir("nachbar-db-bench-") as workdir:
        lite: ChildServer | None = None
        if config.engine == "milvus" and not config.milvus_uri:
            lite = benchlib.start_milvus_lite(workdir / "milvus-lite")
            config = replace(config, milvus_uri=f"http://{lite.address}")
            facts["milvus"] = "milvus-lite server (python -m milvus_lite server)"
        elif config.engine == "milvus":
            facts["milvus"] = config.milvus_uri
        systems = build_systems(config, dim, workdir)
        try:
            searches: list[SearchFn] = []
            for system in systems:
                report = SystemReport(system.name, system.durability)
                log(f"{system.name}: ingesting {config.n} vectors in batches of {config.batch}")
                start = time.perf_counter()
                system.ingest(data, config.batch)
                report.ingest_seconds = time.perf_counter() - start
                report.settle_seconds = system.settle()
                first = system.searcher()
                start = time.perf_counter()
                first(data.queries[:1], None)
                report.first_query_ms = (time.perf_counter() - start) * 1e3
                log(f"{system.name}: tuning ef for recall@{config.k} >= {config.target_recall}")
                tune_ef(system, data, truth_tuning, truth, config, report)
                log(f"{system.name}: ef={report.ef} recall={report.recall:.4f}")
                search = system.searcher()
                for i in range(WARMUP_QUERIES):
                    search(data.tuning[i % len(data.tuning)][None, :], None)
                searches.append(search)
                reports.append(report)

            log(f"latency, 1 client, {config.queries} queries, systems interleaved")
            for report, (stats, recall) in zip(
                reports,
                interleaved_latency(searches, data.queries, None, config.k, truth, config.block),
                strict=True,
            ):
                report.latency = stats
                if abs(recall - report.recall) > 1e-9:
                    report.notes.append(f"recall in the latency pass: {recall:.4f}")

            log("transport floor: the cheapest request each server answers, interleaved")
            floors = [(r, s.round_trip()) for r, s in zip(reports, systems, strict=True)]
            timed: dict[int, list[float]] = {}
            for which, _ in interleaved_order(config.queries, len(floors), config.block):
                call = floors[which][1]
                if call is not None:
                    start = time.perf_counter()
                    call()
                    timed.setdefault(which, []).append(time.perf_counter() - start)
            for which, samples in timed.items():
                floors[which][0].round_trip = LatencyStats.of(samples)

            paused_queries = data.queries[: min(300, config.queries)]
            for pause_ms in config.pauses_ms:
                log(
                    f"latency with a {pause_ms:g} ms pause before each query, "
                    f"{len(paused_queries)} queries"
                )
                for report, (stats, _) in zip(
                    reports,
                    interleaved_latency(
                        searches,
                        paused_queries,
                        None,
                        config.k,
                        truth[: len(paused_queries)],
                        config.block,
                        pause_ms / 1e3,
                    ),
                    strict=True,
                ):
                    report.paused[pause_ms] = stats

            log(f"throughput, {config.threads} client threads, {config.rounds} rounds")
            for report, qps in zip(
                reports, alternating_throughput(systems, data.queries, config), strict=True
            ):
                report.throughput = qps

            for spec in FILTERS:
                log(f"filtered search at {spec.label} selectivity, {len(filtered_queries)} queries")
                for report, result in zip(
                    reports,
                    interleaved_latency(
                        searches,
                        filtered_queries,
                        spec,
                        config.k,
                        filtered_truth[spec.label],
                        config.block,
                    ),
                    strict=True,
                ):
                    report.filtered[spec.label] = result
            if config.footprint:
                measure_footprint(systems, reports, data)
            for system, report in zip(systems, reports, strict=True):
                if isinstance(system, NachbarSystem):
                    report.notes.append(f"plans used: {sorted(system.plans)}")
                    if system.short_results:
                        report.notes.append(
                            f"{system.short_results} searches returned fewer than k results"
                        )
        finally:
            for system in systems:
                system.close()
            if lite is not None:
                lite.stop()
    facts["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return {"config": config, "machine": facts, "data": data_facts, "systems": reports}


# --- report -------------------------------------------------------------------------------


def _by_name(reports: Sequence[SystemReport], prefix: str) -> SystemReport | None:
    return next((r for r in reports if r.name.startswith(prefix)), None)


def render(result: dict[str, Any]) -> str:
    config: Config = result["config"]
    reports: list[SystemReport] = result["systems"]
    machine = result["machine"]
    lines = [
        f"## db_bench: {config.n:,} x 384 vectors, {config.queries} queries, k={config.k}, "
        f"M={config.m}, ef_construction={config.ef_construction}, latency interleaved in "
        f"blocks of {config.block} queries",
        "",
        f"{machine['date']}; {machine['cpu_model']}, {machine['cpus']} CPUs, "
        f"{machine['memory_gib']} GiB; load average before {machine['load_average']}, "
        f"after {machine['load_average_after']}",
        f"data: mean cosine of random pairs {result['data']['mean_cosine_random_pair']:.3f}, "
        f"of each query's nearest neighbour {result['data']['mean_cosine_nearest']:.3f}",
        "",
    ]
    rows = []
    for r in reports:
        assert r.latency is not None
        rows.append(
            [
                r.name,
                r.durability,
                f"{config.n / r.ingest_seconds:,.0f}",
                f"{r.settle_seconds:.1f}",
                f"{r.first_query_ms:.1f}",
                r.ef,
                f"{r.recall:.4f}",
                f"{r.latency.p50_ms:.3f}",
                f"{r.latency.p99_ms:.3f}",
                f"{r.throughput:,.0f}",
            ]
        )
    lines.append(
        markdown_table(
            [
                "system",
                "durability",
                "ingest vec/s",
                "settle s",
                "1st query ms",
                "ef",
                "recall@10",
                "p50 ms",
                "p99 ms",
                f"QPS ({config.threads} threads)",
            ],
            rows,
        )
    )
    lines.append("")
    frows = []
    for r in reports:
        row: list[object] = [r.name]
        for spec in FILTERS:
            stats, recall = r.filtered[spec.label]
            row += [f"{stats.p50_ms:.3f}", f"{stats.p99_ms:.3f}", f"{recall:.4f}"]
        frows.append(row)
    headers = ["system"]
    for spec in FILTERS:
        headers += [f"{spec.label} p50 ms", f"{spec.label} p99 ms", f"{spec.label} recall"]
    lines.append(markdown_table(headers, frows))
    lines.append("")

    nachbar = _by_name(reports, "nachbar")
    chroma = _by_name(reports, "chromadb")
    raw = _by_name(reports, "hnswlib")
    direct = _by_name(reports, "Milvus direct")
    baseline = _by_name(reports, "baseline nachbar")
    if nachbar is not None and nachbar.latency is not None and direct is not None:
        assert direct.latency is not None
        cost = nachbar.latency.p50_ms / direct.latency.p50_ms
        lines.append("nachbar-db's translation cost over the same Milvus used directly:")
        for which in (nachbar, baseline):
            if which is None or which.latency is None:
                continue
            lines.append(
                f"- {which.name}: p50 latency x{which.latency.p50_ms / direct.latency.p50_ms:.2f}"
                f" at recall {which.recall:.3f} vs {direct.recall:.3f}"
                f" (ef {which.ef} vs {direct.ef}), p99 "
                f"x{which.latency.p99_ms / direct.latency.p99_ms:.2f}, QPS "
                f"x{direct.throughput / which.throughput:.2f}, ingest time "
                f"x{which.ingest_seconds / direct.ingest_seconds:.2f}"
                + "".join(
                    f", filtered {s.label} p50 x"
                    f"{which.filtered[s.label][0].p50_ms / direct.filtered[s.label][0].p50_ms:.2f}"
                    for s in FILTERS
                )
            )
        lines.append(
            f"- target: p50 at equal recall <= 1.3x Milvus direct: x{cost:.2f} -> "
            f"{benchlib.verdict(cost <= 1.3)}"
        )
        lines.append("")
    elif nachbar is not None and nachbar.latency is not None:
        lines.append("ratios (higher = nachbar better):")
        for other in (chroma, raw):
            if other is None or other.latency is None:
                continue
            lines.append(
                f"- vs {other.name}: p50 latency"
                f" x{other.latency.p50_ms / nachbar.latency.p50_ms:.2f}"
                f", p99 x{other.latency.p99_ms / nachbar.latency.p99_ms:.2f}"
                f", QPS x{nachbar.throughput / other.throughput:.2f}"
                f", ingest x{other.ingest_seconds / nachbar.ingest_seconds:.2f}"
                + "".join(
                    f", filtered {s.label} p50 x"
                    f"{other.filtered[s.label][0].p50_ms / nachbar.filtered[s.label][0].p50_ms:.2f}"
                    for s in FILTERS
                )
            )
        lines.append("")
        lines.append("targets:")
        if chroma is not None and chroma.latency is not None:
            speedup = chroma.latency.p50_ms / nachbar.latency.p50_ms
            both = nachbar.recall >= config.target_recall and chroma.recall >= config.target_recall
            lines.append(
                f"- single-client GetSimN p50 >= 3x faster than chromadb at recall >= "
                f"{config.target_recall}: x{speedup:.2f} (recall {nachbar.recall:.3f} vs "
                f"{chroma.recall:.3f}) -> {benchlib.verdict(speedup >= 3.0 and both)}"
            )
        p50_10 = nachbar.filtered["10%"][0].p50_ms
        lines.append(
            f"- filtered GetSimN at 10% selectivity < 2 ms (p50): {p50_10:.3f} ms -> "
            f"{benchlib.verdict(p50_10 < 2.0)}"
        )
    lines.extend(render_footprint(config, reports))
    floors = [f"{r.name} {r.round_trip.p50_ms:.3f} ms" for r in reports if r.round_trip is not None]
    pauses = sorted({p for r in reports for p in r.paused})
    if pauses:
        lines.append("")
        lines.append("single-client p50 ms with a pause before each query (idle wake-ups count):")
        lines.append("")
        lines.append(
            benchlib.markdown_table(
                ["system", "no pause", *(f"{p:g} ms pause" for p in pauses)],
                [
                    [
                        r.name,
                        f"{r.latency.p50_ms:.3f}" if r.latency else "-",
                        *(f"{r.paused[p].p50_ms:.3f}" if p in r.paused else "-" for p in pauses),
                    ]
                    for r in reports
                ],
            )
        )
        nachbar, chroma = _by_name(reports, "nachbar"), _by_name(reports, "chromadb")
        if nachbar and chroma and nachbar.latency and chroma.latency:
            ratios = [f"no pause x{chroma.latency.p50_ms / nachbar.latency.p50_ms:.2f}"]
            ratios += [
                f"{p:g} ms x{chroma.paused[p].p50_ms / nachbar.paused[p].p50_ms:.2f}"
                for p in pauses
                if p in chroma.paused and p in nachbar.paused
            ]
            lines.append("")
            lines.append("p50 ratio chromadb / nachbar: " + ", ".join(ratios))
    if floors:
        lines.append("")
        lines.append(
            "transport floor, p50 of the cheapest request (nachbar Ping, chroma heartbeat): "
            + ", ".join(floors)
        )
    notes = [(r.name, n) for r in reports for n in r.notes]
    if notes:
        lines.append("")
        lines.append("notes:")
        lines.extend(f"- {name}: {note}" for name, note in notes)
    curves = "; ".join(
        f"{r.name}: " + ", ".join(f"ef {ef} -> {rec:.3f}" for ef, rec in r.tuning_curve)
        for r in reports
    )
    lines.append(f"- ef tuning (recall on {config.tuning_queries} tuning queries): {curves}")
    return "\n".join(lines)


def render_footprint(config: Config, reports: Sequence[SystemReport]) -> list[str]:
    if not config.footprint:
        return []
    mb = 1e6
    raw_vectors = config.n * 384 * 4
    raw = _by_name(reports, "hnswlib")
    reference = raw.index_bytes if raw is not None and raw.index_bytes else 0
    lines = [
        "",
        f"footprint: raw vectors {raw_vectors / mb:,.0f} MB"
        + (f"; hnswlib's index (vectors + links) {reference / mb:,.0f} MB" if reference else ""),
        "",
    ]
    rows = []
    for r in reports:
        if not (r.rss_bytes or r.disk_bytes):
            continue
        rows.append(
            [
                r.name,
                f"{r.rss_bytes / mb:,.0f}",
                f"{r.rss_after_restart / mb:,.0f}" if r.rss_after_restart else "-",
                f"x{max(r.rss_bytes, r.rss_after_restart) / reference:.2f}" if reference else "-",
                f"{r.disk_bytes / mb:,.0f}",
                f"x{r.disk_bytes / raw_vectors:.2f}",
            ]
        )
    lines.append(
        markdown_table(
            [
                "system",
                "RSS MB",
                "RSS after restart MB",
                "RSS / hnswlib index",
                "disk MB",
                "disk / raw vectors",
            ],
            rows,
        )
    )
    for r in reports:
        for label, restart in r.restarts.items():
            lines.append(
                f"- {r.name} after {label}: stopped in {restart.stop_seconds:.1f} s; the new "
                f"process answered in {restart.serve_seconds:.1f} s, from its HNSW graph in "
                f"{restart.graph_seconds:.1f} s"
            )
    nachbar = _by_name(reports, "nachbar")
    if nachbar is not None and nachbar.rss_bytes and reference:
        rss = max(nachbar.rss_bytes, nachbar.rss_after_restart) / reference
        disk = nachbar.disk_bytes / raw_vectors
        lines.append(
            f"- targets: RSS <= 1.5x (vectors + links): x{rss:.2f} -> "
            f"{benchlib.verdict(rss <= 1.5)}; disk <= 2x raw vectors: x{disk:.2f} -> "
            f"{benchlib.verdict(disk <= 2.0)}"
        )
    return lines


def parse_args(argv: Sequence[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="vectors to store")
    parser.add_argument("--queries", type=int, default=1000, help="measured held-out queries")
    parser.add_argument(
        "--tuning-queries", type=int, default=200, help="separate held-out queries used to pick ef"
    )
    parser.add_argument(
        "--filtered-queries",
        type=int,
        default=500,
        help="queries per filtered measurement (at most --queries)",
    )
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--m", type=int, default=16, help="HNSW M for every system")
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--threads", type=int, default=8, help="client threads for QPS")
    parser.add_argument(
        "--throughput-requests", type=int, default=3000, help="requests per system in the QPS pass"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds the QPS requests are split into"
    )
    parser.add_argument("--batch", type=int, default=1000, help="ingest batch size")
    parser.add_argument("--clusters", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--block",
        type=int,
        default=50,
        help="latency passes hand each system this many queries in turn (1: query by query)",
    )
    parser.add_argument(
        "--pauses-ms",
        default="1,3",
        help="comma-separated pauses before each query for the single-client "
        "latency of a client that does other work between queries",
    )
    parser.add_argument(
        "--systems",
        default="",
        help="comma-separated subset of hnswlib,nachbar,chroma,milvus (default: "
        "hnswlib,nachbar,chroma; with --engine milvus: nachbar,milvus)",
    )
    parser.add_argument(
        "--engine",
        default="embedded",
        choices=["embedded", "milvus"],
        help="nachbar-db's engine; milvus compares it with the same Milvus used directly",
    )
    parser.add_argument(
        "--milvus-uri",
        default="",
        help="with --engine milvus: the Milvus to use; default: a milvus-lite server started here",
    )
    parser.add_argument(
        "--baseline-rev",
        default="",
        help="a git revision of this repo: its nachbar-db runs as one more system in the same "
        "run (before/after a change)",
    )
    parser.add_argument(
        "--data-cache",
        default=str(Path(__file__).resolve().parent / "data"),
        help="folder that keeps generated vectors and ground truth as .npy ('' turns it off)",
    )
    parser.add_argument(
        "--no-footprint",
        action="store_true",
        help="skip the resident set, disk and restart measurements",
    )
    ns = parser.parse_args(argv)
    default = "nachbar,milvus" if ns.engine == "milvus" else "hnswlib,nachbar,chroma"
    systems = tuple(s.strip() for s in (ns.systems or default).split(",") if s.strip())
    unknown = set(systems) - {"hnswlib", "nachbar", "chroma", "milvus"}
    if unknown or not systems:
        parser.error(f"--systems takes hnswlib, nachbar, chroma and/or milvus, got {ns.systems!r}")
    if "milvus" in systems and ns.engine != "milvus":
        parser.error("the milvus system needs --engine milvus")
    if ns.n < ns.k or ns.queries < 1 or ns.tuning_queries < 1:
        parser.error("need --n >= --k, and at least one query and one tuning query")
    return Config(
        n=ns.n,
        queries=ns.queries,
        tuning_queries=ns.tuning_queries,
        filtered_queries=min(ns.filtered_queries, ns.queries),
        k=ns.k,
        m=ns.m,
        ef_construction=ns.ef_construction,
        target_recall=ns.target_recall,
        threads=ns.threads,
        throughput_requests=ns.throughput_requests,
        rounds=ns.rounds,
        batch=ns.batch,
        clusters=ns.clusters,
        seed=ns.seed,
        systems=systems,
        block=max(1, ns.block),
        pauses_ms=tuple(float(p) for p in ns.pauses_ms.split(",") if p.strip()),
        engine=ns.engine,
        milvus_uri=ns.milvus_uri,
        baseline_rev=ns.baseline_rev,
        data_cache=ns.data_cache,
        footprint=not ns.no_footprint,
    )


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_args(argv)
    result = run(config)
    benchlib.publish("db_bench", result, render(result))


if __name__ == "__main__":
    main()
