"""What TLS + API keys + metrics cost: the same traffic against a plain pair of servers and a
secured pair (TLS, an API keys file, a metrics endpoint; nachbar-ai reaching nachbar-db over
TLS with its own key), both running in this run, measured in alternating rounds.

  (a) GetSimN p50 over nachbar-db: one client, `--queries` searches per round and server, on
      `--count` x 384 clustered vectors (HNSW, k 10);
  (b) Embed throughput over nachbar-ai: batches of 32 STS-B sentences, and single sentences,
      from one client.

Target: the secured servers at most 10% slower. Tracing stays off in both (it is off by
default); its cost is not part of this measure. A scraper reads every metrics endpoint each
`--scrape-seconds` (Prometheus' own default is 60 s), so the work a scrape does for the
requests since the last one is in the measure.

Run: .venv/bin/python bench/security_bench.py [--count 20000 --queries 500 --rounds 6]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.certs, for the CA

import onnx_reference as ref
from benchlib import (
    DEFAULT_MODEL_DIR,
    BenchSetupError,
    ChildServer,
    LatencyStats,
    Tally,
    describe_load,
    free_port,
    log,
    machine_facts,
    markdown_table,
    publish,
    scratch_dir,
    start_nachbar,
    verdict,
)

BATCH = 32
TARGET_SLOWDOWN = 1.10
SECURED = "TLS + keys + metrics"
CONTROL = "plain, second copy"


@dataclass(frozen=True)
class Pair:
    """A db and an ai server, and how a client reaches them."""

    name: str
    db: ChildServer
    ai: ChildServer | None  # db-only variants split the cost into its parts
    client: dict[str, Any]
    metrics_ports: tuple[int, ...] = ()


def _certs(workdir: Path) -> Any:
    try:
        from tests.certs import make_cert_set
    except ImportError as error:
        raise BenchSetupError(f"making test certificates needs `cryptography` ({error})") from None
    return make_cert_set(workdir / "certs")


def start_pairs(workdir: Path, model_dir: Path) -> list[Pair]:
    """plain, a second plain copy (the control), TLS + keys + metrics (these three with
    nachbar-ai), then db-only: TLS alone, and keys + metrics alone."""
    import grpc

    from nachbar.server.auth import Role, create_key

    certs = _certs(workdir)
    keys = workdir / "keys.json"
    _, user_key = create_key(keys, Role.ADMIN)  # the bench creates its store
    _, service_key = create_key(keys, Role.ADMIN)
    (workdir / "service.key").write_text(service_key)
    tls_only = ["--tls-cert", str(certs.server.cert), "--tls-key", str(certs.server.key)]
    metrics = {name: free_port() for name in ("secure db", "secure ai", "keys db")}

    def keys_metrics(name: str) -> list[str]:
        return ["--api-keys-file", str(keys), "--metrics-port", str(metrics[name])]

    credentials = grpc.ssl_channel_credentials(certs.ca.read_bytes())
    ai_common = ["--model-dir", str(model_dir), "--models", ref.TEXT_MODEL]
    plain_db = start_nachbar("nachbar-db", ["--data-dir", str(workdir / "plain")], workdir / "p")
    plain_ai = start_nachbar(
        "nachbar-ai", ["--db-port", str(plain_db.port), *ai_common], workdir / "p"
    )
    secure_db = start_nachbar(
        "nachbar-db",
        ["--data-dir", str(workdir / "secure"), *tls_only, *keys_metrics("secure db")],
        workdir / "s",
        credentials=credentials,
    )
    secure_ai = start_nachbar(
        "nachbar-ai",
        [
            *("--db-port", str(secure_db.port), *ai_common, *tls_only),
            *keys_metrics("secure ai"),
            *("--db-tls-ca", str(certs.ca), "--db-api-key-file", str(workdir / "service.key")),
        ],
        workdir / "s",
        credentials=credentials,
    )
    tls_db = start_nachbar(
        "nachbar-db",
        ["--data-dir", str(workdir / "tls"), *tls_only],
        workdir / "t",
        credentials=credentials,
    )
    keys_db = start_nachbar(
        "nachbar-db", ["--data-dir", str(workdir / "keys"), *keys_metrics("keys db")], workdir / "k"
    )
    # A second plain pair, started last: the spread between two identical servers is the
    # noise floor (and any bias of start order) that the ratios above must be read against.
    control_db = start_nachbar(
        "nachbar-db", ["--data-dir", str(workdir / "control")], workdir / "c"
    )
    control_ai = start_nachbar(
        "nachbar-ai", ["--db-port", str(control_db.port), *ai_common], workdir / "c"
    )
    return [
        Pair("plain", plain_db, plain_ai, {"api_key": ""}),
        Pair(CONTROL, control_db, control_ai, {"api_key": ""}),
        Pair(
            SECURED,
            secure_db,
            secure_ai,
            {"api_key": user_key, "tls_ca": certs.ca},
            (metrics["secure db"], metrics["secure ai"]),
        ),
        Pair("TLS only", tls_db, None, {"api_key": "", "tls_ca": certs.ca}),
        Pair("keys + metrics only", keys_db, None, {"api_key": user_key}, (metrics["keys db"],)),
    ]


class Scraper:
    """Reads every metrics endpoint of `pairs` each `seconds`, as Prometheus would."""

    def __init__(self, pairs: Sequence[Pair], seconds: float) -> None:
        self.urls = [f"http://127.0.0.1:{port}/metrics" for p in pairs for port in p.metrics_ports]
        self.seconds = seconds
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.wait(self.seconds):
            for url in self.urls:
                with urllib.request.urlopen(url, timeout=10) as reply:
                    reply.read()
                self.scrapes += 1


def clustered(count: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    centers = rng.standard_normal((64, dim)).astype(np.float32)
    points = centers[rng.integers(0, 64, count)] + 0.3 * rng.standard_normal((count, dim))
    points = points.astype(np.float32)
    normalized: np.ndarray = points / np.linalg.norm(points, axis=1, keepdims=True)
    return normalized


def search_pass(pairs: Sequence[Pair], args: argparse.Namespace) -> dict[str, LatencyStats]:
    from nachbar.client import DBClient

    rng = np.random.default_rng(7)
    vectors = clustered(args.count, 384, rng)
    queries = vectors[rng.integers(0, args.count, args.queries)] + 0.05 * rng.standard_normal(
        (args.queries, 384)
    ).astype(np.float32)
    clients = {p.name: DBClient(p.db.address, timeout=60, **p.client) for p in pairs}
    for pair in pairs:
        client = clients[pair.name]
        client.create_store("bench", dimension=384)
        for start in range(0, args.count, 1000):
            chunk = vectors[start : start + 1000]
            client.upsert("bench", [(str(start + i), v) for i, v in enumerate(chunk)])
        for query in queries[:50]:  # warm up
            client.get_sim_n("bench", query, k=10)
    seconds: dict[str, list[float]] = {p.name: [] for p in pairs}
    # Blocks of `--block` queries, alternating servers and who goes first, so that background
    # load falls on both alike.
    blocks = [queries[i : i + args.block] for i in range(0, len(queries), args.block)]
    for number in range(args.rounds):
        for index, block in enumerate(blocks):
            for offset in range(len(pairs)):
                pair = pairs[(number + index + offset) % len(pairs)]
                client = clients[pair.name]
                for query in block:
                    started = time.perf_counter()
                    client.get_sim_n("bench", query, k=10)
                    seconds[pair.name].append(time.perf_counter() - started)
    for client in clients.values():
        client.close()
    return {name: LatencyStats.of(values) for name, values in seconds.items()}


def embed_pass(pairs: Sequence[Pair], args: argparse.Namespace) -> dict[str, Tally]:
    """Each request goes to every nachbar-ai in turn (rotating who goes first), so the
    background load, which swamps a 5% difference over whole rounds here, falls on all alike."""
    from nachbar.client import AIClient

    texts = ref.sts_sentences(args.texts)
    serving = [p for p in pairs if p.ai is not None]
    clients = {p.name: AIClient(p.ai.address, timeout=120, **p.client) for p in serving if p.ai}
    tallies = {
        f"{p.name}, {kind}": Tally(f"{p.name}, {kind}")
        for p in serving
        for kind in ("batch 32", "single")
    }
    requests = [("batch 32", texts[i : i + BATCH]) for i in range(0, len(texts), BATCH)]
    requests += [("single", [text]) for text in texts[: len(texts) // 4]]
    for client in clients.values():
        client.embed(ref.TEXT_MODEL, texts[:BATCH])  # warm up
    turn = 0
    for _ in range(args.rounds):
        for kind, inputs in requests:
            turn += 1
            for offset in range(len(serving)):
                pair = serving[(turn + offset) % len(serving)]
                started = time.perf_counter()
                clients[pair.name].embed(ref.TEXT_MODEL, inputs)
                tally = tallies[f"{pair.name}, {kind}"]
                tally.seconds += time.perf_counter() - started
                tally.items += len(inputs)
    for client in clients.values():
        client.close()
    return tallies


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000, help="vectors in the store")
    parser.add_argument("--queries", type=int, default=500, help="searches per round and server")
    parser.add_argument("--texts", type=int, default=256, help="texts per round and path")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--block", type=int, default=50, help="searches per server in a row")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument(
        "--scrape-seconds", type=float, default=5.0, help="how often metrics are scraped"
    )
    args = parser.parse_args(argv)
    ref.ensure_built(args.model_dir, [ref.TEXT_MODEL])
    load_before = describe_load("before")
    with scratch_dir("nachbar-security-bench-") as workdir:
        pairs = start_pairs(workdir, args.model_dir)
        by_name = {pair.name: pair for pair in pairs}
        plain, secure = by_name["plain"], by_name[SECURED]
        try:
            with Scraper(pairs, args.scrape_seconds) as scraper:
                log("GetSimN over nachbar-db")
                latency = search_pass(pairs, args)
                log("Embed over nachbar-ai")
                throughput = embed_pass(pairs, args)
        finally:
            for pair in pairs:
                if pair.ai is not None:
                    pair.ai.stop()
                pair.db.stop()
    load_after = describe_load("after")
    p50_ratio = latency[secure.name].p50_ms / latency[plain.name].p50_ms
    rows: list[list[object]] = [
        [f"GetSimN p50 ms ({name})", stats.p50_ms, f"p99 {stats.p99_ms:.3f} ms, n={stats.count}"]
        for name, stats in latency.items()
    ]
    rows.append(["GetSimN p50, secured / plain", p50_ratio, verdict(p50_ratio <= TARGET_SLOWDOWN)])
    for part in ("TLS only", "keys + metrics only", CONTROL):
        rows.append(
            [f"GetSimN p50, {part} / plain", latency[part].p50_ms / latency[plain.name].p50_ms, ""]
        )
    ratios = {}
    for kind in ("batch 32", "single"):
        plain_rate = throughput[f"{plain.name}, {kind}"].per_second
        secure_rate = throughput[f"{secure.name}, {kind}"].per_second
        control_rate = throughput[f"{CONTROL}, {kind}"].per_second
        ratios[kind] = plain_rate / secure_rate
        rows.append([f"Embed {kind}, texts/s (plain)", plain_rate, ""])
        rows.append([f"Embed {kind}, texts/s (secured)", secure_rate, ""])
        rows.append([f"Embed {kind}, texts/s ({CONTROL})", control_rate, ""])
        rows.append(
            [
                f"Embed {kind}: time secured / plain",
                ratios[kind],
                verdict(ratios[kind] <= TARGET_SLOWDOWN),
            ]
        )
        rows.append(
            [f"Embed {kind}: time {CONTROL} / plain", plain_rate / control_rate, "noise floor"]
        )
    report = "\n".join(
        [
            f"security_bench: {args.count} x 384 vectors, {args.queries} searches and "
            f"{args.texts} texts per round and path, {args.rounds} rounds, "
            f"{scraper.scrapes} metrics scrapes (every {args.scrape_seconds:g} s)",
            f"{load_before}; {load_after}",
            "",
            markdown_table(["measure", "value", "note"], rows),
        ]
    )
    publish(
        "security_bench",
        {
            "args": vars(args),
            "machine": machine_facts(),
            "latency": latency,
            "throughput": throughput,
            "p50_ratio": p50_ratio,
            "embed_ratios": ratios,
        },
        report,
    )


if __name__ == "__main__":
    main()
