"""Cross-encoder reranking and int8 quantization: speed and accuracy cost, in one run.

Speed (in-process, single caller, batches of 32):
- cross-encoder pairs/s, fp32 and int8, at 32, 64 and 128 tokens per (query, document) pair,
  through nachbar's model runtime (nachbar.ai.models.ModelManager) and raw onnxruntime;
- bi-encoder texts/s, all-minilm-l6-v2 fp32 and int8, through the runtime and raw onnxruntime.
Accuracy cost of int8, on STS-B data, through the runtime:
- cosine between the int8 and fp32 embedding of each sentence;
- top-10 neighbour overlap with STS-B dev+test sentences as the corpus (int8 index and
  queries, and int8 queries against the fp32 index);
- STS-B test Spearman, fp32 vs int8, for the bi-encoder (cosine of the two sentences) and
  the cross-encoder (its score).
End to end (nachbar-db + nachbar-ai over gRPC): GetSimN k=10 on a store of STS-B sentences kept
with store_original, without reranking and with the top 20 reranked (fp32 and int8).

Run: bench/.venv/bin/python bench/rerank_quant_bench.py
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
import numpy.typing as npt
import onnx_reference as ref
from benchlib import LatencyStats, Tally, log, markdown_table, timed_rounds

BATCH = 32
PAIR_LENGTHS = (32, 64, 128)
SPEARMAN_POINTS = 100.0  # "points" of Spearman: rho x 100

Batches = list[tuple[str, list[str]]]  # (query, documents) per reranking call


@dataclass(frozen=True)
class Config:
    model_dir: Path
    rounds: int
    rerank_batches: int
    texts: int
    neighbour_queries: int
    store_size: int
    e2e_queries: int
    rerank_candidates: int
    threads: int


@dataclass
class Speed(Tally):
    tokens: float = 0.0  # mean tokens per item actually fed


@dataclass
class Results:
    config: Config
    machine: dict[str, Any]
    cross_speed: dict[int, dict[str, Speed]] = field(default_factory=dict)
    bi_speed: dict[str, Speed] = field(default_factory=dict)
    agreement: dict[str, float] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)
    corpus_size: int = 0
    real_vector_facts: dict[str, float] = field(default_factory=dict)
    e2e: dict[str, LatencyStats] = field(default_factory=dict)
    e2e_facts: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# --- inputs ---------------------------------------------------------------------------------


def rerank_batches(
    tokenizer_json: Path,
    queries: Sequence[str],
    words: Sequence[str],
    length: int,
    batches: int,
) -> tuple[Batches, float]:
    """`batches` x (query, 32 documents) whose pairs tokenize to `length` tokens or just under
    (special tokens included); also the mean pair length reached."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.no_padding()
    tokenizer.no_truncation()

    def pair_length(query: str, document: str) -> int:
        return len(tokenizer.encode(query, document).ids)

    out: Batches = []
    lengths: list[int] = []
    cursor = 0
    for b in range(batches):
        query = queries[b % len(queries)]
        # Short queries, as in search; cut to at most a quarter of the pair.
        query_words = query.split()
        while len(query_words) > 1 and pair_length(" ".join(query_words), "") > length // 4:
            query_words.pop()
        query = " ".join(query_words)
        documents = []
        for _ in range(BATCH):
            low, high = 1, 4 * length  # binary search: most words that still fit
            while low < high:
                middle = (low + high + 1) // 2
                candidate = " ".join(words[(cursor + i) % len(words)] for i in range(middle))
                if pair_length(query, candidate) <= length:
                    low = middle
                else:
                    high = middle - 1
            document = " ".join(words[(cursor + i) % len(words)] for i in range(low))
            cursor += low
            documents.append(document)
            lengths.append(pair_length(query, document))
        out.append((query, documents))
    return out, float(np.mean(lengths))


# --- measurements --------------------------------------------------------------------------


def make_manager(config: Config) -> Any:
    from nachbar.ai.batching import BatchingConfig
    from nachbar.ai.models import ModelManager

    # One caller in this process: batching would only add its wait, never merge anything.
    return ModelManager(config.model_dir, offline=True, batching=BatchingConfig(enabled=False))


def cross_encoder_speed(config: Config, manager: Any, results: Results) -> None:
    queries = ref.sts_sentences(200, splits=("dev",))
    words = " ".join(ref.sts_sentences(3000, splits=("train",))).split()
    raws = {
        name: ref.RawTextModel(
            ref.built_dir(config.model_dir, name),
            max_tokens=ref.MAX_TOKENS[name],
            threads=config.threads,
        )
        for name in (ref.CROSS_ENCODER, ref.CROSS_ENCODER_INT8)
    }
    tokenizer_json = ref.built_dir(config.model_dir, ref.CROSS_ENCODER) / "tokenizer.json"
    for length in PAIR_LENGTHS:
        batches, mean_length = rerank_batches(
            tokenizer_json, queries, words, length, config.rerank_batches
        )
        paths: list[tuple[Speed, Callable[[], int]]] = []
        row: dict[str, Speed] = {}
        for name, raw in raws.items():
            label = "int8" if name.endswith("int8") else "fp32"
            runtime_speed = Speed(f"runtime {label}", tokens=mean_length)
            raw_speed = Speed(f"raw onnxruntime {label}", tokens=mean_length)
            # Same scores from both paths, or they would not be doing the same work.
            query, documents = batches[0]
            expected = raw.score([(query, d) for d in documents])
            got = np.asarray(manager.rerank(name, query, documents), np.float32)
            results.agreement[f"cross-encoder {label} runtime vs raw, max |logit diff|"] = max(
                results.agreement.get(
                    f"cross-encoder {label} runtime vs raw, max |logit diff|", 0.0
                ),
                float(np.max(np.abs(got - expected))),
            )

            def run_runtime(name: str = name, work: Batches = batches) -> int:
                for query, documents in work:
                    manager.rerank(name, query, documents)
                return len(work) * BATCH

            def run_raw(raw: ref.RawTextModel = raw, work: Batches = batches) -> int:
                for query, documents in work:
                    raw.score([(query, d) for d in documents])
                return len(work) * BATCH

            paths += [(runtime_speed, run_runtime), (raw_speed, run_raw)]
            row[runtime_speed.name] = runtime_speed
            row[raw_speed.name] = raw_speed
        log(f"cross-encoder pairs/s at {length} tokens (mean pair {mean_length:.1f} tokens)")
        timed_rounds(paths, config.rounds)
        results.cross_speed[length] = row


def bi_encoder_speed(config: Config, manager: Any, texts: list[str], results: Results) -> None:
    batches = [texts[i : i + BATCH] for i in range(0, len(texts), BATCH)]
    paths: list[tuple[Speed, Callable[[], int]]] = []
    for name in (ref.TEXT_MODEL, ref.TEXT_MODEL_INT8):
        label = "int8" if name.endswith("int8") else "fp32"
        raw = ref.RawTextModel(
            ref.built_dir(config.model_dir, name),
            max_tokens=ref.MAX_TOKENS[name],
            threads=config.threads,
        )
        results.agreement[f"bi-encoder {label} runtime vs raw, min cosine"] = ref.min_cosine(
            np.asarray(manager.embed(name, texts[:64]), np.float32), raw.embed(texts[:64])
        )

        def run_runtime(name: str = name) -> int:
            for batch in batches:
                manager.embed(name, batch)
            return len(texts)

        def run_raw(raw: ref.RawTextModel = raw) -> int:
            for batch in batches:
                raw.embed(batch)
            return len(texts)

        for speed, work in (
            (Speed(f"runtime {label}"), run_runtime),
            (Speed(f"raw onnxruntime {label}"), run_raw),
        ):
            results.bi_speed[speed.name] = speed
            paths.append((speed, work))
    log(f"bi-encoder texts/s, {len(texts)} texts per round")
    timed_rounds(paths, config.rounds)


def embed_all(manager: Any, name: str, texts: Sequence[str]) -> npt.NDArray[np.float32]:
    parts = [manager.embed(name, texts[i : i + 128]) for i in range(0, len(texts), 128)]
    return np.concatenate(parts).astype(np.float32)


def top_k_excluding_self(
    queries: npt.NDArray[np.float32],
    corpus: npt.NDArray[np.float32],
    query_rows: npt.NDArray[np.int64],
    k: int,
) -> npt.NDArray[np.int64]:
    scores = queries @ corpus.T
    scores[np.arange(len(query_rows)), query_rows] = -np.inf  # a sentence is not its neighbour
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    return top


def overlap(a: npt.NDArray[np.int64], b: npt.NDArray[np.int64]) -> float:
    return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b, strict=True)]))


def rng_rows(count: int, size: int, seed: int = 3) -> npt.NDArray[np.int64]:
    rows: npt.NDArray[np.int64] = np.random.default_rng(seed).choice(
        count, size=min(size, count), replace=False
    )
    return rows


def accuracy(config: Config, manager: Any, results: Results) -> None:
    from nachbar.ai.build.stsb import load_split, spearman

    corpus = ref.sts_sentences(splits=("dev", "test"))
    log(f"int8 accuracy: embedding {len(corpus)} STS-B dev+test sentences with both models")
    fp32 = embed_all(manager, ref.TEXT_MODEL, corpus)
    int8 = embed_all(manager, ref.TEXT_MODEL_INT8, corpus)
    cosines = np.sum(fp32 * int8, axis=1)
    results.corpus_size = len(corpus)
    # How real MiniLM vectors are spread, to set beside db_bench's synthetic data.
    sample = fp32[rng_rows(len(corpus), 500)]
    pair_cosines = sample[:250] @ sample[250:].T
    nearest = np.sort(sample @ fp32.T, axis=1)[:, -2]  # [-1] is the sentence itself
    results.real_vector_facts = {
        "mean cosine of random pairs": float(pair_cosines.mean()),
        "mean cosine of the nearest neighbour": float(nearest.mean()),
    }
    results.accuracy["bi-encoder cosine int8 vs fp32, mean"] = float(cosines.mean())
    results.accuracy["bi-encoder cosine int8 vs fp32, 1st percentile"] = float(
        np.percentile(cosines, 1)
    )
    results.accuracy["bi-encoder cosine int8 vs fp32, min"] = float(cosines.min())

    rows = rng_rows(len(corpus), config.neighbour_queries)
    truth = top_k_excluding_self(fp32[rows], fp32, rows, 10)
    results.accuracy["top-10 overlap, int8 index + int8 queries"] = overlap(
        truth, top_k_excluding_self(int8[rows], int8, rows, 10)
    )
    results.accuracy["top-10 overlap, fp32 index + int8 queries"] = overlap(
        truth, top_k_excluding_self(int8[rows], fp32, rows, 10)
    )

    test = load_split("test")
    gold = [p.score for p in test]
    log(f"STS-B test Spearman: {len(test)} pairs, bi-encoder and cross-encoder, fp32 and int8")
    for name in (ref.TEXT_MODEL, ref.TEXT_MODEL_INT8):
        first = embed_all(manager, name, [p.sentence1 for p in test])
        second = embed_all(manager, name, [p.sentence2 for p in test])
        results.accuracy[f"STS-B test Spearman x100, bi-encoder {name}"] = SPEARMAN_POINTS * (
            spearman(np.sum(first * second, axis=1), gold)
        )
    for name in (ref.CROSS_ENCODER, ref.CROSS_ENCODER_INT8):
        scores = [float(manager.rerank(name, p.sentence1, [p.sentence2])[0]) for p in test]
        results.accuracy[f"STS-B test Spearman x100, cross-encoder {name}"] = (
            SPEARMAN_POINTS * spearman(scores, gold)
        )


def end_to_end(config: Config, results: Results) -> None:
    from nachbar.client import AIClient

    corpus = ref.sts_sentences(config.store_size, splits=("dev", "test"))
    in_store = set(corpus)
    queries = [s for s in ref.sts_sentences(splits=("train",)) if s not in in_store]
    queries = queries[: config.e2e_queries]
    with benchlib.scratch_dir("nachbar-rerank-bench-") as workdir:
        db = benchlib.start_nachbar(
            "nachbar-db", ["--data-dir", str(workdir / "db")], workdir / "db"
        )
        ai = None
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
                    ",".join((ref.TEXT_MODEL, ref.CROSS_ENCODER, ref.CROSS_ENCODER_INT8)),
                ],
                workdir / "ai",
            )
            client = AIClient(ai.address, timeout=300)
            client.create_store("sts", query_model=ref.TEXT_MODEL, store_original=True)
            log(f"end to end: upserting {len(corpus)} sentences through nachbar-ai")
            client.upsert("sts", corpus, batch_size=64)
            variants: list[tuple[str, dict[str, Any]]] = [
                ("GetSimN k=10, no rerank", {}),
                (
                    f"GetSimN k=10, rerank top {config.rerank_candidates} (fp32)",
                    {"rerank": ref.CROSS_ENCODER, "rerank_candidates": config.rerank_candidates},
                ),
                (
                    f"GetSimN k=10, rerank top {config.rerank_candidates} (int8)",
                    {
                        "rerank": ref.CROSS_ENCODER_INT8,
                        "rerank_candidates": config.rerank_candidates,
                    },
                ),
            ]
            for query in queries[:5]:  # warm every path
                for _, options in variants:
                    client.get_sim_n("sts", query, 10, **options)
            seconds: list[list[float]] = [[] for _ in variants]
            top1_changed = 0
            log(f"end to end: {len(queries)} queries, variants interleaved")
            for i, query in enumerate(queries):
                top1: dict[int, str] = {}
                for turn in range(len(variants)):
                    which = (i + turn) % len(variants)
                    start = time.perf_counter()
                    hits = client.get_sim_n("sts", query, 10, **variants[which][1])
                    seconds[which].append(time.perf_counter() - start)
                    top1[which] = hits.matches[0].id
                top1_changed += top1[0] != top1[1]
            for (label, _), samples in zip(variants, seconds, strict=True):
                results.e2e[label] = LatencyStats.of(samples)
            results.e2e_facts["store size"] = float(len(corpus))
            results.e2e_facts["queries"] = float(len(queries))
            results.e2e_facts["share of queries whose top hit changed with fp32 rerank"] = (
                top1_changed / len(queries)
            )
            client.close()
        finally:
            if ai is not None:
                ai.stop()
            db.stop()


def run(config: Config) -> Results:
    ref.ensure_built(
        config.model_dir,
        (ref.TEXT_MODEL, ref.TEXT_MODEL_INT8, ref.CROSS_ENCODER, ref.CROSS_ENCODER_INT8),
    )
    results = Results(config, benchlib.machine_facts())
    manager = make_manager(config)
    try:
        cross_encoder_speed(config, manager, results)
        bi_encoder_speed(config, manager, ref.sts_sentences(config.texts), results)
        accuracy(config, manager, results)
    finally:
        manager.close()
    end_to_end(config, results)
    results.machine["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return results


def render(results: Results) -> str:
    config, machine = results.config, results.machine
    lines = [
        "## rerank_quant_bench: cross-encoder reranking and int8 quantization",
        "",
        f"{machine['date']}; {machine['cpu_model']}, {machine['cpus']} CPUs, "
        f"{machine['memory_gib']} GiB; load average before {machine['load_average']}, "
        f"after {machine['load_average_after']}; onnxruntime threads {config.threads}; "
        f"batches of {BATCH}; {config.rounds} alternating rounds per path",
        "",
        f"### cross-encoder pairs/s ({config.rerank_batches} x {BATCH} pairs per round)",
        "",
    ]
    speedups: list[tuple[str, float]] = []
    rows = []
    for length, row in results.cross_speed.items():
        tokens = next(iter(row.values())).tokens
        for path in ("runtime", "raw onnxruntime"):
            fp32, int8 = row[f"{path} fp32"], row[f"{path} int8"]
            rows.append(
                [
                    f"{length} (mean {tokens:.1f})",
                    path,
                    f"{fp32.per_second:,.1f}",
                    f"{int8.per_second:,.1f}",
                    f"{int8.per_second / fp32.per_second:.2f}",
                ]
            )
            if path == "runtime":
                speedups.append(
                    (f"cross-encoder at {length} tokens", int8.per_second / fp32.per_second)
                )
        runtime, raw = row["runtime fp32"], row["raw onnxruntime fp32"]
        rows.append(
            [
                f"{length}",
                "runtime / raw (fp32)",
                "",
                "",
                f"{runtime.per_second / raw.per_second:.2f}",
            ]
        )
    lines.append(
        markdown_table(["pair tokens", "path", "fp32 pairs/s", "int8 pairs/s", "int8 / fp32"], rows)
    )
    lines += ["", f"### bi-encoder texts/s ({config.texts} STS-B sentences per round)", ""]
    bi = results.bi_speed
    rows = []
    for path in ("runtime", "raw onnxruntime"):
        fp32, int8 = bi[f"{path} fp32"], bi[f"{path} int8"]
        rows.append(
            [
                path,
                f"{fp32.per_second:,.1f}",
                f"{int8.per_second:,.1f}",
                f"{int8.per_second / fp32.per_second:.2f}",
            ]
        )
        if path == "runtime":
            speedups.append(("bi-encoder", int8.per_second / fp32.per_second))
    lines.append(markdown_table(["path", "fp32 texts/s", "int8 texts/s", "int8 / fp32"], rows))
    lines += [
        "",
        f"### accuracy cost of int8 (corpus: {results.corpus_size} distinct STS-B "
        f"dev+test sentences, {config.neighbour_queries} neighbour queries)",
        "",
    ]
    lines.append(
        markdown_table(["measure", "value"], [[k, f"{v:.4f}"] for k, v in results.accuracy.items()])
    )
    bi_loss = (
        results.accuracy[f"STS-B test Spearman x100, bi-encoder {ref.TEXT_MODEL}"]
        - results.accuracy[f"STS-B test Spearman x100, bi-encoder {ref.TEXT_MODEL_INT8}"]
    )
    ce_loss = (
        results.accuracy[f"STS-B test Spearman x100, cross-encoder {ref.CROSS_ENCODER}"]
        - results.accuracy[f"STS-B test Spearman x100, cross-encoder {ref.CROSS_ENCODER_INT8}"]
    )
    lines += [
        "",
        "runtime vs raw onnxruntime on the same inputs (same work check): "
        + ", ".join(f"{k} {v:.5f}" for k, v in results.agreement.items()),
    ]
    lines += [
        "",
        "real all-minilm-l6-v2 vectors of that corpus, for comparison with db_bench's "
        "synthetic data: "
        + ", ".join(f"{k} {v:.3f}" for k, v in results.real_vector_facts.items()),
    ]
    lines += [
        "",
        f"### end to end over gRPC (store of {results.e2e_facts['store size']:.0f} "
        f"STS-B sentences, {results.e2e_facts['queries']:.0f} queries)",
        "",
    ]
    base = next(iter(results.e2e.values()))
    lines.append(
        markdown_table(
            ["request", "p50 ms", "p99 ms", "p50 x no-rerank"],
            [
                [label, f"{s.p50_ms:.2f}", f"{s.p99_ms:.2f}", f"{s.p50_ms / base.p50_ms:.2f}"]
                for label, s in results.e2e.items()
            ],
        )
    )
    changed = results.e2e_facts["share of queries whose top hit changed with fp32 rerank"]
    lines += [
        f"top hit changed by the fp32 rerank in {changed:.0%} of queries",
        "",
        "targets:",
    ]
    for label, ratio in speedups:
        lines.append(
            f"- int8 >= 1.7x faster, {label}: x{ratio:.2f} -> {benchlib.verdict(ratio >= 1.7)}"
        )
    lines.append(
        f"- int8 loses <= 1 Spearman point, bi-encoder: int8 - fp32 = {-bi_loss:+.2f} "
        f"points -> {benchlib.verdict(bi_loss <= 1.0)}"
    )
    lines.append(
        f"- int8 loses <= 1 Spearman point, cross-encoder: int8 - fp32 = "
        f"{-ce_loss:+.2f} points -> {benchlib.verdict(ce_loss <= 1.0)}"
    )
    if results.notes:
        lines += ["", "notes:", *(f"- {n}" for n in results.notes)]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=benchlib.DEFAULT_MODEL_DIR)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--rerank-batches",
        type=int,
        default=8,
        help="batches of 32 pairs per length, model and round",
    )
    parser.add_argument(
        "--texts", type=int, default=1024, help="bi-encoder texts per model, path and round"
    )
    parser.add_argument("--neighbour-queries", type=int, default=500)
    parser.add_argument(
        "--store-size", type=int, default=3000, help="STS-B sentences in the end-to-end store"
    )
    parser.add_argument("--e2e-queries", type=int, default=200)
    parser.add_argument("--rerank-candidates", type=int, default=20)
    parser.add_argument(
        "--threads",
        type=int,
        default=ref.cpu_count(),
        help="onnxruntime intra-op threads of the raw references",
    )
    ns = parser.parse_args(argv)
    if (
        min(
            ns.rounds,
            ns.rerank_batches,
            ns.texts,
            ns.neighbour_queries,
            ns.store_size,
            ns.e2e_queries,
        )
        < 1
        or ns.rerank_candidates < 10
    ):
        parser.error("counts must be at least 1 and --rerank-candidates at least k=10")
    return Config(
        model_dir=ns.model_dir,
        rounds=ns.rounds,
        rerank_batches=ns.rerank_batches,
        texts=ns.texts,
        neighbour_queries=ns.neighbour_queries,
        store_size=ns.store_size,
        e2e_queries=ns.e2e_queries,
        rerank_candidates=ns.rerank_candidates,
        threads=ns.threads,
    )


def main(argv: Sequence[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = parse_args(argv)
    results = run(config)
    benchlib.publish("rerank_quant_bench", {"results": results}, render(results))


if __name__ == "__main__":
    main()
