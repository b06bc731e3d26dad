"""Do query adapters and re-scorers help? Held-out retrieval quality and cost, end to end.

Through real nachbar-db and nachbar-ai processes, on two stores built from Debian packages
(never committed: they are the packages' own, under their licences):

* text -> text, `manpages-dev` (eval_data.py): the one-line NAME description of a Linux man page
  -> the page, embedded with all-minilm-l6-v2 (pages truncated to its limit);
* text -> image, Open Clip Art (`openclipart-svg`, public domain): each drawing's title -> the
  drawing, rendered from SVG to PNG with cairosvg and indexed with the ConSE image model
  (imagenet-conse-minilm-l6, queried with all-minilm-l6-v2). A seeded sample of drawings with a
  title (--cliparts, default 2,000) keeps the run short.

The queries are split once (seeded) into training and test queries; the adapter and the
re-scorer are trained (TrainAdapter / TrainRescorer) on the training queries only, and every
figure here is over the test queries, which training never saw. Reported: MRR@10 and
recall@10 for the frozen baseline, the adapter, the re-scorer (top 50 reranked), and both; the
training time; and GetSimN's p50 latency per configuration, timed in interleaved rounds so that
background load falls on all alike, with the adapter's share of the frozen p50.

    bench/.venv/bin/python bench/tailor_eval.py
    bench/.venv/bin/python bench/tailor_eval.py --only text --queries 400
"""

from __future__ import annotations

import argparse
import io
import random
import re
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchlib
import numpy as np
from benchlib import describe_load, log, markdown_table
from eval_data import load_set, write_set

from nachbar.client import AIClient, Example, Image, TrainedInfo, TrainSettings

TEXT_MODEL = "all-minilm-l6-v2"
IMAGE_MODEL = "imagenet-conse-minilm-l6"
CLIPART_CACHE = Path(__file__).resolve().parent / ".cache" / "openclipart"
CUTOFF = 10
RERANK_CANDIDATES = 50
_TITLE = re.compile(r"<cc:Work[^>]*>.*?<dc:title>([^<]*)</dc:title>", re.S)


@dataclass
class Task:
    name: str
    store: str
    query_model: str
    index_model: str
    documents: list[tuple[str, Any]]  # (id, text or Image)
    queries: list[tuple[str, set[str]]]  # (query text, relevant ids)


@dataclass
class Scores:
    mrr: float
    recall: float
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms)


# -- data ------------------------------------------------------------------------------------


def manpages_task(limit: int) -> Task:
    try:
        data = load_set("manpages-dev")
    except FileNotFoundError:
        write_set("manpages-dev")
        data = load_set("manpages-dev")
    queries = [(data.queries[q], rel) for q, rel in sorted(data.qrels.items()) if q in data.queries]
    random.Random(7).shuffle(queries)
    return Task(
        "text -> text (manpages-dev)",
        "tailor_man",
        TEXT_MODEL,
        TEXT_MODEL,
        sorted(data.corpus.items()),
        queries[:limit] if limit else queries,
    )


def clipart_root() -> Path:
    root = CLIPART_CACHE / "root" / "usr" / "share" / "openclipart" / "svg"
    if root.is_dir():
        return root
    CLIPART_CACHE.mkdir(parents=True, exist_ok=True)
    log("fetching openclipart-svg with apt-get download")
    subprocess.run(["apt-get", "download", "openclipart-svg"], cwd=CLIPART_CACHE, check=True)
    (deb,) = CLIPART_CACHE.glob("openclipart-svg_*.deb")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(CLIPART_CACHE / "root")], check=True)
    return root


def render_png(svg: Path, size: int = 256) -> bytes | None:
    from PIL import Image as PilImage

    cairosvg = benchlib.import_peer("cairosvg")  # the `bench` group, not nachbar's own

    try:
        png = cairosvg.svg2png(url=str(svg), output_width=size, output_height=size)
        # Transparent drawings on white, as they are shown.
        image = PilImage.open(io.BytesIO(png)).convert("RGBA")
        background = PilImage.new("RGBA", image.size, (255, 255, 255, 255))
        out = io.BytesIO()
        PilImage.alpha_composite(background, image).convert("RGB").save(out, format="PNG")
        return out.getvalue()
    except Exception:  # malformed or unsupported SVGs are left out
        return None


def clipart_task(count: int, limit: int) -> Task:
    root = clipart_root()
    titled: list[tuple[Path, str]] = []
    for svg in sorted(root.rglob("*.svg")):
        if svg.stat().st_size > 400_000:
            continue
        match = _TITLE.search(svg.read_text(errors="replace")[:20_000])
        title = " ".join(match.group(1).split()) if match else ""
        if title and len(title) > 2:
            titled.append((svg, title))
    random.Random(11).shuffle(titled)
    cache = CLIPART_CACHE / "png"
    cache.mkdir(exist_ok=True)
    documents: list[tuple[str, Any]] = []
    queries: list[tuple[str, set[str]]] = []
    started = time.perf_counter()
    for svg, title in titled:
        if len(documents) >= count:
            break
        entry_id = str(svg.relative_to(root))
        png_path = cache / (entry_id.replace("/", "__") + ".png")
        if not png_path.exists():
            png = render_png(svg)
            if png is None:
                continue
            png_path.write_bytes(png)
        documents.append((entry_id, Image(png_path.read_bytes())))
        queries.append((title, {entry_id}))
    log(f"{len(documents)} drawings rendered or read in {time.perf_counter() - started:.0f} s")
    return Task(
        f"text -> image (Open Clip Art, {len(documents)} drawings)",
        "tailor_clipart",
        TEXT_MODEL,
        IMAGE_MODEL,
        documents,
        queries[:limit] if limit else queries,
    )


# -- measuring -------------------------------------------------------------------------------


def rank_metrics(ranked: list[str], relevant: set[str]) -> tuple[float, float]:
    hits = [rank for rank, entry_id in enumerate(ranked[:CUTOFF]) if entry_id in relevant]
    return (1.0 / (hits[0] + 1) if hits else 0.0), len(hits) / len(relevant)


def wait_trained(get: Callable[[str, str], TrainedInfo], store: str, name: str) -> TrainedInfo:
    while True:
        info = get(store, name)
        if info.state in ("ready", "failed"):
            return info
        time.sleep(0.5)


def evaluate(
    ai: AIClient,
    store: str,
    queries: Sequence[tuple[str, set[str]]],
    configs: dict[str, dict[str, Any]],
) -> dict[str, Scores]:
    """Every configuration on every query, interleaved query by query."""
    sums = {name: [0.0, 0.0] for name in configs}
    latencies: dict[str, list[float]] = {name: [] for name in configs}
    for query, relevant in queries:
        for name, options in configs.items():
            started = time.perf_counter()
            found = ai.get_sim_n(store, query, CUTOFF, truncation="truncate", **options)
            latencies[name].append((time.perf_counter() - started) * 1000)
            rr, recall = rank_metrics([m.id for m in found.matches], relevant)
            sums[name][0] += rr
            sums[name][1] += recall
    return {
        name: Scores(total[0] / len(queries), total[1] / len(queries), latencies[name])
        for name, total in sums.items()
    }


def adapter_product_cost_us(dimension: int = 384, rounds: int = 2000) -> float:
    """The adapter's own work per query, in process: W q and renormalizing (median, us)."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(dimension, dimension)).astype(np.float32)
    query = rng.normal(size=(1, dimension)).astype(np.float32)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        adapted = query @ weight.T
        adapted /= np.linalg.norm(adapted, axis=1, keepdims=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def run_task(
    ai: AIClient, task: Task, train_share: float, epochs: dict[str, int]
) -> dict[str, Any]:
    log(f"{task.name}: {len(task.documents)} documents, {len(task.queries)} queries")
    ai.drop_store(task.store, missing_ok=True)
    ai.create_store(
        task.store,
        query_model=task.query_model,
        index_model=task.index_model,
        store_original=False,
    )
    started = time.perf_counter()
    batch = 32
    for start in range(0, len(task.documents), batch):
        part = task.documents[start : start + batch]
        ai.upsert(task.store, [(doc, entry_id) for entry_id, doc in part], truncation="truncate")
    upsert_seconds = time.perf_counter() - started
    log(f"indexed in {upsert_seconds:.0f} s")
    cut = int(len(task.queries) * train_share)
    train, test = task.queries[:cut], task.queries[cut:]
    examples = [Example(query, sorted(relevant)) for query, relevant in train]
    trained: dict[str, TrainedInfo] = {}
    for kind in ("adapter", "rescorer"):
        train_call = ai.train_adapter if kind == "adapter" else ai.train_rescorer
        get = ai.get_adapter if kind == "adapter" else ai.get_rescorer
        ai.drop_adapter(task.store, "bench", missing_ok=True) if kind == "adapter" else None
        train_call(task.store, "bench", examples, settings=TrainSettings(epochs=epochs[kind]))
        info = wait_trained(get, task.store, "bench")
        log(f"{kind}: {info.state}: {info.message} ({info.train_seconds:.1f} s)")
        trained[kind] = info
    configs: dict[str, dict[str, Any]] = {
        "frozen": {},
        "adapter": {"adapter": "bench"},
        "re-scorer": {"rescorer": "bench", "rerank_candidates": RERANK_CANDIDATES},
        "adapter + re-scorer": {
            "adapter": "bench",
            "rescorer": "bench",
            "rerank_candidates": RERANK_CANDIDATES,
        },
    }
    evaluate(ai, task.store, test[:10], configs)  # warm-up: models and weights loaded
    scores = evaluate(ai, task.store, test, configs)
    return {
        "task": task.name,
        "documents": len(task.documents),
        "train_queries": len(train),
        "test_queries": len(test),
        "upsert_seconds": upsert_seconds,
        "trained": trained,
        "scores": scores,
    }


def report(results: list[dict[str, Any]], product_us: float, load_before: str) -> str:
    lines = [
        "MRR@10 and recall@10 over the test queries (never seen in training); GetSimN p50 over "
        "the same queries, configurations interleaved; re-scorer: top "
        f"{RERANK_CANDIDATES} reranked.",
        "",
    ]
    rows = []
    for result in results:
        scores: dict[str, Scores] = result["scores"]
        frozen = scores["frozen"]
        for name, value in scores.items():
            rows.append(
                [
                    result["task"],
                    name,
                    f"{value.mrr:.4f}",
                    f"{value.mrr / frozen.mrr:.2f}x" if frozen.mrr else "-",
                    f"{value.recall:.4f}",
                    f"{value.p50:.1f}",
                    f"{value.p50 / frozen.p50:.3f}x",
                ]
            )
    lines.append(
        markdown_table(
            [
                "store",
                "configuration",
                "MRR@10",
                "vs frozen",
                "recall@10",
                "p50 ms",
                "p50 vs frozen",
            ],
            rows,
        )
    )
    lines += ["", "Training (TrainAdapter / TrainRescorer on the training queries):", ""]
    train_rows = []
    for result in results:
        for kind, info in result["trained"].items():
            train_rows.append(
                [
                    result["task"],
                    kind,
                    f"{info.train_examples} + {info.held_out_examples}",
                    info.epochs,
                    f"{info.train_seconds:.1f}",
                    f"{info.before.mrr_at_10:.4f} -> {info.after.mrr_at_10:.4f}",
                    "yes" if info.recommended else "no",
                ]
            )
    lines.append(
        markdown_table(
            [
                "store",
                "kind",
                "train + held-out examples",
                "epochs",
                "seconds",
                "held-out MRR@10",
                "recommended",
            ],
            train_rows,
        )
    )
    lines += [""]
    for result in results:
        scores = result["scores"]
        share = (scores["adapter"].p50 - scores["frozen"].p50) / scores["frozen"].p50
        lines.append(
            f"- {result['task']}: adapter p50 {scores['adapter'].p50:.2f} ms vs frozen "
            f"{scores['frozen'].p50:.2f} ms ({share:+.1%} end to end, noise included); the "
            f"adapter's own work (W q, 384 x 384, renormalized) is {product_us:.1f} us per query "
            f"in process = {product_us / 1000 / scores['frozen'].p50:.2%} of the frozen p50."
        )
    lines += ["", load_before, describe_load("after")]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["text", "image"], default=None)
    parser.add_argument("--cliparts", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=0, help="cap per store (0: all)")
    parser.add_argument("--train-share", type=float, default=0.6)
    parser.add_argument("--adapter-epochs", type=int, default=60)
    parser.add_argument("--rescorer-epochs", type=int, default=30)
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=Path.home() / ".cache" / "nachbar" / "models",
    )
    args = parser.parse_args(argv)
    load_before = describe_load("before")
    tasks: list[Callable[[], Task]] = []
    if args.only in (None, "text"):
        tasks.append(lambda: manpages_task(args.queries))
    if args.only in (None, "image"):
        tasks.append(lambda: clipart_task(args.cliparts, args.queries))
    epochs = {"adapter": args.adapter_epochs, "rescorer": args.rescorer_epochs}
    results = []
    with benchlib.scratch_dir("tailor-") as work:
        db = benchlib.start_nachbar("nachbar-db", ["--data-dir", str(work / "data")], work)
        ai_server = benchlib.start_nachbar(
            "nachbar-ai",
            [
                "--db-port",
                str(db.port),
                "--model-dir",
                str(args.model_dir),
                "--models",
                f"{TEXT_MODEL},{IMAGE_MODEL}",
                "--hub-offline",
            ],
            work,
        )
        try:
            with AIClient(ai_server.address, timeout=600) as ai:
                for make in tasks:
                    results.append(run_task(ai, make(), args.train_share, epochs))
        finally:
            ai_server.stop()
            db.stop()
    product_us = adapter_product_cost_us()
    benchlib.publish(
        "tailor_eval",
        {"machine": benchlib.machine_facts(), "results": results, "adapter_product_us": product_us},
        report(results, product_us, load_before),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
