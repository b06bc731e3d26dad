"""Does reranking help? Retrieval quality and cost of dense search with and without rerankers.

On the Debian evaluation sets of `eval_data.py` (Debian FAQ: question -> answer section; Linux
man pages: one-line description -> page), through nachbar's model runtime in-process
(`nachbar.ai.models.ModelManager`, the code nachbar-ai serves with):

1. dense: the corpus is embedded as documents and the queries as queries (each model's prompts
   per role), long texts truncated to the model's limit; exact cosine top-30 per query;
2. dense + reranker: the top 30 rescored by each reranker (documents cut to its token budget),
   and fused with the dense scores (reciprocal rank fusion; equal blend of min-max scores);
3. MRR@10 and nDCG@10 per configuration, each also as a ratio to its first stage's dense
   search in the same run, and the milliseconds each reranker adds per query (the rerank call
   for 30 candidates, median over queries), next to the same-run reference: embedding the
   query alone, the cost dense search adds. The rerankers and the reference take turns query
   by query, so background load falls on all of them alike.

Pairs that both embedders bring up are scored once (cached); latency is timed on the first
embedder's candidates, where every call scores all 30.

    python bench/eval_data.py && python bench/rerank_eval.py
    python bench/rerank_eval.py --sets manpages-dev --queries 200   # a seeded sample
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchlib
import numpy as np
import numpy.typing as npt
from benchlib import describe_load, log, markdown_table
from eval_data import DEFAULT_CACHE, EvalSet, load_set

from nachbar.ai import fusion
from nachbar.ai.inference import CrossEncoderScorer, LateInteractionScorer
from nachbar.ai.models import ModelManager
from nachbar.ai.onnx_model import OnnxModel
from nachbar.ai.registry import Role, get_spec
from nachbar.ai.text import TextTokenizer, Truncation

EMBEDDERS = ("all-minilm-l6-v2", "bge-small-en-v1.5-int8")
RERANKERS = (
    "stsb-minilm-l6-cross-encoder",
    "ms-marco-minilm-l12-cross-encoder-int8",
    "answerai-colbert-small-v1-int8",
)
CANDIDATES = 30
CUTOFF = 10
EMBED_BATCH = 64


# --- metrics ----------------------------------------------------------------------------------


def mrr_at(ranked: Sequence[str], relevant: set[str], cutoff: int = CUTOFF) -> float:
    """1 / rank of the first relevant document within the cutoff, else 0."""
    for rank, doc_id in enumerate(ranked[:cutoff], start=1):
        if doc_id in relevant:
            return 1.0 / rank
    return 0.0


def ndcg_at(ranked: Sequence[str], relevant: set[str], cutoff: int = CUTOFF) -> float:
    """Binary-relevance nDCG: sum 1/log2(rank+1) over relevant hits, over the ideal sum."""
    gain = sum(
        1.0 / math.log2(rank + 1)
        for rank, doc_id in enumerate(ranked[:cutoff], start=1)
        if doc_id in relevant
    )
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(relevant), cutoff) + 1))
    return gain / ideal if ideal else 0.0


@dataclass
class Quality:
    mrr: list[float] = field(default_factory=list)
    ndcg: list[float] = field(default_factory=list)

    def add(self, ranked: Sequence[str], relevant: set[str]) -> None:
        self.mrr.append(mrr_at(ranked, relevant))
        self.ndcg.append(ndcg_at(ranked, relevant))

    def means(self) -> tuple[float, float]:
        return float(np.mean(self.mrr)), float(np.mean(self.ndcg))


def order_by(candidates: Sequence[str], scores: fusion.Scores) -> list[str]:
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return [candidates[i] for i in order]


# --- the run ----------------------------------------------------------------------------------

FloatArray = npt.NDArray[np.float32]


def embed_all(
    manager: ModelManager, model: str, texts: Sequence[str], role: Role | None
) -> tuple[FloatArray, float]:
    start = time.perf_counter()
    parts = [
        manager.embed(model, texts[i : i + EMBED_BATCH], truncation="truncate", role=role)
        for i in range(0, len(texts), EMBED_BATCH)
    ]
    return np.concatenate(parts), time.perf_counter() - start


@dataclass
class SetResult:
    name: str
    queries: int
    documents: int
    rows: list[list[object]]
    latency_rows: list[list[object]]
    raw: dict[str, Any]


def evaluate(
    manager: ModelManager,
    data: EvalSet,
    query_ids: Sequence[str],
    embedders: Sequence[str],
    rerankers: Sequence[str],
) -> SetResult:
    doc_ids = list(data.corpus)
    documents = [data.corpus[d] for d in doc_ids]
    texts = [data.queries[q] for q in query_ids]
    rows: list[list[object]] = []
    raw: dict[str, Any] = {}
    candidates: dict[str, list[tuple[list[str], list[float]]]] = {}
    dense_quality: dict[str, tuple[float, float]] = {}
    for model in embedders:
        log(f"{data.name}: embedding {len(documents)} documents with {model}")
        index, index_seconds = embed_all(manager, model, documents, Role.DOCUMENT)
        variants: list[tuple[str, Role | None]] = [(model, Role.QUERY)]
        if manager.spec(model).prompts.query:
            variants.append((f"{model} (no query prompt)", None))
        for label, role in variants:
            queries, _ = embed_all(manager, model, texts, role)
            similarity = queries @ index.T
            top = np.argsort(-similarity, axis=1, kind="stable")[:, :CANDIDATES]
            lists = [
                ([doc_ids[j] for j in row], [float(similarity[i, j]) for j in row])
                for i, row in enumerate(top)
            ]
            quality = Quality()
            for query_id, (ranked, _) in zip(query_ids, lists, strict=True):
                quality.add(ranked, data.qrels[query_id])
            rows.append([label, "-", *quality.means()])
            if role is Role.QUERY:
                dense_quality[model] = quality.means()
            raw[f"{label} | dense"] = quality.means()
            if role is Role.QUERY:
                candidates[model] = lists
        raw[f"{model} index seconds"] = index_seconds

    # Rerank: the rerankers take turns query by query; pairs already scored are reused.
    cache: dict[tuple[str, str, str], float] = {}
    latency: dict[str, list[float]] = {r: [] for r in rerankers}
    query_embedding: list[float] = []
    for position, query_id in enumerate(query_ids if rerankers else []):
        if position % 50 == 0:
            log(f"{data.name}: reranking query {position + 1}/{len(query_ids)}")
        start = time.perf_counter()
        manager.embed(
            embedders[0], [data.queries[query_id]], truncation="truncate", role=Role.QUERY
        )
        query_embedding.append(time.perf_counter() - start)
        for model_number, model in enumerate(embedders):
            ranked, _ = candidates[model][position]
            for reranker in rerankers:
                missing = [d for d in ranked if (reranker, query_id, d) not in cache]
                if not missing:
                    continue
                start = time.perf_counter()
                scores = manager.rerank(
                    reranker, data.queries[query_id], [data.corpus[d] for d in missing]
                )
                if model_number == 0:
                    latency[reranker].append(time.perf_counter() - start)
                for doc_id, score in zip(missing, scores, strict=True):
                    cache[(reranker, query_id, doc_id)] = float(score)

    for model in embedders:
        for reranker in rerankers:
            plain, rrf, blend = Quality(), Quality(), Quality()
            for query_id, (ranked, dense) in zip(query_ids, candidates[model], strict=True):
                relevant = data.qrels[query_id]
                reranked = [cache[(reranker, query_id, d)] for d in ranked]
                plain.add(order_by(ranked, reranked), relevant)
                rrf.add(
                    order_by(ranked, fusion.reciprocal_rank_fusion([dense, reranked])), relevant
                )
                blend.add(order_by(ranked, fusion.weighted_blend([dense, reranked])), relevant)
            for how, quality in (("rerank", plain), ("RRF", rrf), ("blend", blend)):
                rows.append([model, f"{reranker} ({how})", *quality.means()])
                raw[f"{model} | {reranker} | {how}"] = quality.means()

    latency_rows: list[list[object]] = []
    if rerankers:
        reference = benchlib.LatencyStats.of(query_embedding)
        latency_rows.append(
            [
                f"reference: embed the query ({embedders[0]})",
                reference.count,
                reference.p50_ms,
                reference.mean_ms,
                1.0,
            ]
        )
        raw["query embedding latency"] = reference
    for reranker in rerankers:
        stats = benchlib.LatencyStats.of(latency[reranker])
        latency_rows.append(
            [reranker, stats.count, stats.p50_ms, stats.mean_ms, stats.p50_ms / reference.p50_ms]
        )
        raw[f"{reranker} latency"] = stats
    for row in rows:  # first stage, reranker, MRR, nDCG
        mrr, ndcg = row[2], row[3]
        assert isinstance(mrr, float) and isinstance(ndcg, float)
        dense_mrr, dense_ndcg = dense_quality[str(row[0]).split(" (")[0]]
        row += [mrr / dense_mrr, ndcg / dense_ndcg]
    return SetResult(data.name, len(query_ids), len(doc_ids), rows, latency_rows, raw)


def budget_latency(
    model_dir: Path, data: EvalSet, rerankers: Sequence[str], rounds: int
) -> list[list[object]]:
    """Milliseconds to rerank the corpus's 30 longest documents for one query, with each
    reranker's token budget and with the budget raised to the model's limit (the cost before
    budgets), in alternating rounds."""
    longest = sorted(data.corpus.values(), key=len, reverse=True)[:CANDIDATES]
    queries = [data.queries[q] for q in sorted(data.queries)[:rounds]]
    rows: list[list[object]] = []
    for name in rerankers:
        spec = get_spec(name)
        directory = model_dir / "built" / spec.name
        model = OnnxModel(directory / "model.onnx", model_name=name, output=spec.output)
        scorers: dict[int, CrossEncoderScorer | LateInteractionScorer] = {}
        for budget in (spec.rerank_tokens, spec.max_tokens):
            variant = dataclasses.replace(spec, rerank_tokens=budget)
            tokenizer = TextTokenizer(
                directory / "tokenizer.json",
                model_name=name,
                max_tokens=spec.max_tokens,
                pair_tokens=budget,
            )
            if spec.late_interaction is None:
                scorers[budget] = CrossEncoderScorer(variant, model, tokenizer)
            else:  # no document cache: time the documents' encoding too
                scorers[budget] = LateInteractionScorer(
                    variant, model, tokenizer, document_cache_bytes=0
                )
        seconds: dict[int, list[float]] = {budget: [] for budget in scorers}
        for number, query in enumerate(queries):
            budgets = list(scorers) if number % 2 == 0 else list(reversed(scorers))
            for budget in budgets:
                scorer = scorers[budget]
                start = time.perf_counter()
                items: list[Any] = scorer.prepare(query, longest, Truncation.TRUNCATE)
                for first in range(0, len(items), 32):
                    scorer.run(items[first : first + 32])
                seconds[budget].append(time.perf_counter() - start)
        low, high = (float(np.median(seconds[b])) * 1e3 for b in scorers)
        rows.append([name, spec.rerank_tokens, low, spec.max_tokens, high, high / low])
    return rows


def sample_queries(data: EvalSet, count: int, seed: int) -> list[str]:
    ids = sorted(data.queries)
    if count <= 0 or count >= len(ids):
        return ids
    return sorted(random.Random(seed).sample(ids, count))


def report(results: Sequence[SetResult], command: str) -> str:
    parts = [f"command: `{command}`", ""]
    for result in results:
        parts += [
            f"### {result.name}: {result.queries} queries, {result.documents} documents, "
            f"top {CANDIDATES} reranked",
            "",
            markdown_table(
                ["first stage", "reranker", "MRR@10", "nDCG@10", "MRR / dense", "nDCG / dense"],
                result.rows,
            ),
            "",
        ]
        if result.latency_rows:
            parts += [
                markdown_table(
                    [
                        "reranker",
                        "queries timed",
                        "ms per query p50",
                        "ms per query mean",
                        "p50 / reference",
                    ],
                    result.latency_rows,
                ),
                "",
            ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=["debian-faq", "manpages-dev"])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=Path(os.environ.get("NACHBAR_MODEL_DIR", Path.home() / ".cache/nachbar/models")),
    )
    parser.add_argument(
        "--queries", type=int, default=0, help="evaluate a seeded sample of this many (0: all)"
    )
    parser.add_argument("--seed", type=int, default=20261207)
    parser.add_argument("--embedders", nargs="+", default=list(EMBEDDERS))
    parser.add_argument("--rerankers", nargs="*", default=list(RERANKERS))
    parser.add_argument(
        "--budget-latency",
        type=int,
        default=0,
        metavar="QUERIES",
        help="instead: time each reranker on the 30 longest documents at its budget and at "
        "the model's limit, over this many queries",
    )
    args = parser.parse_args(argv)
    log(describe_load("before"))
    if args.budget_latency:
        tables = []
        for name in args.sets:
            data = load_set(name, args.cache)
            rows = budget_latency(args.model_dir, data, args.rerankers, args.budget_latency)
            headers = ["reranker", "budget", "ms", "model limit", "ms", "limit / budget"]
            tables.append(f"### {name}: 30 longest documents\n\n{markdown_table(headers, rows)}\n")
        log(describe_load("after"))
        benchlib.publish("rerank_budget", {"machine": benchlib.machine_facts()}, "\n".join(tables))
        return 0
    results = []
    with ModelManager(args.model_dir, offline=True) as manager:
        for name in args.sets:
            data = load_set(name, args.cache)
            query_ids = sample_queries(data, args.queries, args.seed)
            results.append(evaluate(manager, data, query_ids, args.embedders, args.rerankers))
    log(describe_load("after"))
    command = "python bench/rerank_eval.py " + " ".join(argv if argv is not None else [])
    payload = {"machine": benchlib.machine_facts(), "sets": [r.raw for r in results]}
    name = "rerank_eval-" + "-".join(args.sets) + (f"-q{args.queries}" if args.queries else "")
    benchlib.publish(name, payload, report(results, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
