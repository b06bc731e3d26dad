"""Does hybrid search help? Dense, BM25 and hybrid retrieval, each with and without rerankers.

On the Debian evaluation sets of `eval_data.py` (Debian FAQ: question -> answer section; Linux
man pages: one-line description -> page), through nachbar's own code in-process: the corpus goes
into an embedded nachbar-db store (`nachbar.db.engine.Database`, exact index) with its text in a
metadata field under a keyword index, embedded by nachbar's model runtime (the code nachbar-ai
serves with). Per query:

1. first stage, each through `Database.get_sim_n` (top 30): dense (the query vector), BM25
   (keyword-only: the query text on the FTS5 index), hybrid RRF and hybrid blend (both, with the
   query text as keywords, the engine's defaults: RRF k = 60, blend weight 0.5, 100 candidates a
   side);
2. each offline reranker over the top 20 (nachbar-ai's default rerank depth) of dense and of
   hybrid RRF (documents cut to its token
   budget), alone and fused with the first stage's scores (`nachbar.ai.fusion`: RRF, blend), as
   nachbar-ai's GetSimN does with `rerank` and `fusion`;
3. MRR@10 and nDCG@10 per configuration, as a ratio to dense in the same run; the milliseconds
   each first stage takes per query (p50, the engine call alone), next to the same-run
   reference of embedding the query, and each reranker's milliseconds for 20 candidates. The
   configurations take turns query by query, so background load falls on all of them alike.

First stages run over every query of a set; rerankers over a seeded sample (`--rerank-queries`,
0: all) on which the first stages are reported again, so every rerank row has its own dense
reference.

    python bench/eval_data.py && python bench/hybrid_eval.py
    python bench/hybrid_eval.py --sets manpages-dev --rerank-queries 100
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchlib
import numpy as np
from benchlib import describe_load, log, markdown_table
from eval_data import DEFAULT_CACHE, EvalSet, load_set
from rerank_eval import Quality, embed_all, order_by

from nachbar.ai import fusion
from nachbar.ai.models import ModelManager
from nachbar.ai.registry import Role
from nachbar.db.engine import Database
from nachbar.db.types import (
    Entry,
    ExactConfig,
    HybridFusion,
    HybridOptions,
    MetadataSelection,
    StoreSpec,
)

EMBEDDER = "all-minilm-l6-v2"
RERANKERS = (
    "stsb-minilm-l6-cross-encoder",
    "ms-marco-minilm-l12-cross-encoder-int8",
    "answerai-colbert-small-v1-int8",
)
CANDIDATES = 30
# Candidates a reranker reads: nachbar-ai's default for k <= 20.
RERANK_CANDIDATES = 20
TEXT_FIELD = "text"
NO_METADATA = MetadataSelection(include=False)
FIRST_STAGES = ("dense", "BM25", "hybrid RRF", "hybrid blend")
RERANKED_STAGES = ("dense", "hybrid RRF")


@dataclass
class Ranking:
    ids: list[str]
    scores: list[float]


def first_stages(
    db: Database, store: str, vector: np.ndarray, text: str
) -> dict[str, Callable[[], Ranking]]:
    def search(query: np.ndarray | None, keywords: str, options: HybridOptions) -> Ranking:
        found = db.get_sim_n(
            store, query, CANDIDATES, keywords=keywords, fusion=options, metadata=NO_METADATA
        )
        return Ranking([m.id for m in found.matches], [m.score for m in found.matches])

    return {
        "dense": lambda: search(vector, "", HybridOptions()),
        "BM25": lambda: search(None, text, HybridOptions()),
        "hybrid RRF": lambda: search(vector, text, HybridOptions(fusion=HybridFusion.RRF)),
        "hybrid blend": lambda: search(vector, text, HybridOptions(fusion=HybridFusion.BLEND)),
    }


@dataclass
class SetResult:
    name: str
    queries: int
    reranked_queries: int
    documents: int
    first_rows: list[list[object]]
    rerank_rows: list[list[object]]
    latency_rows: list[list[object]]
    raw: dict[str, Any]


def with_ratios(rows: list[list[object]], reference: tuple[float, float]) -> list[list[object]]:
    out = []
    for row in rows:
        mrr, ndcg = row[-2], row[-1]
        assert isinstance(mrr, float) and isinstance(ndcg, float)
        out.append([*row, mrr / reference[0], ndcg / reference[1]])
    return out


def evaluate(
    manager: ModelManager,
    data: EvalSet,
    rerank_ids: set[str],
    rerankers: Sequence[str],
    work_dir: Path,
) -> SetResult:
    doc_ids = list(data.corpus)
    documents = [data.corpus[d] for d in doc_ids]
    query_ids = sorted(data.queries)
    log(f"{data.name}: embedding {len(documents)} documents with {EMBEDDER}")
    index, _ = embed_all(manager, EMBEDDER, documents, Role.DOCUMENT)
    vectors, _ = embed_all(manager, EMBEDDER, [data.queries[q] for q in query_ids], Role.QUERY)
    db = Database.open(work_dir / data.name, fsync="off", checkpoint_seconds=0)
    try:
        store = data.name
        db.create_store(
            StoreSpec(store, index.shape[1], index=ExactConfig(), keyword_fields=(TEXT_FIELD,))
        )
        for first in range(0, len(doc_ids), 1000):
            db.upsert(
                store,
                [
                    Entry(doc_ids[i], index[i], {TEXT_FIELD: documents[i]})
                    for i in range(first, min(first + 1000, len(doc_ids)))
                ],
            )
        everyone = {stage: Quality() for stage in FIRST_STAGES}
        sampled = {stage: Quality() for stage in FIRST_STAGES}
        seconds: dict[str, list[float]] = {stage: [] for stage in FIRST_STAGES}
        seconds["reference: embed the query"] = []
        kept: dict[str, dict[str, Ranking]] = {}
        for position, (query_id, vector) in enumerate(zip(query_ids, vectors, strict=True)):
            text = data.queries[query_id]
            start = time.perf_counter()
            manager.embed(EMBEDDER, [text], truncation="truncate", role=Role.QUERY)
            seconds["reference: embed the query"].append(time.perf_counter() - start)
            stages = first_stages(db, store, vector, text)
            order = list(stages) if position % 2 == 0 else list(reversed(stages))
            rankings: dict[str, Ranking] = {}
            for stage in order:
                start = time.perf_counter()
                try:
                    rankings[stage] = stages[stage]()
                except Exception as error:  # a query without words has no keyword side
                    if "no words" not in str(error):
                        raise
                    rankings[stage] = Ranking([], [])
                seconds[stage].append(time.perf_counter() - start)
            relevant = data.qrels[query_id]
            for stage in FIRST_STAGES:
                everyone[stage].add(rankings[stage].ids, relevant)
                if query_id in rerank_ids:
                    sampled[stage].add(rankings[stage].ids, relevant)
            if query_id in rerank_ids:
                kept[query_id] = rankings
    finally:
        db.close()

    raw: dict[str, Any] = {}
    first_rows: list[list[object]] = []
    for stage in FIRST_STAGES:
        first_rows.append([stage, *everyone[stage].means()])
        raw[f"all | {stage}"] = everyone[stage].means()
    first_rows = with_ratios(first_rows, everyone["dense"].means())

    cache: dict[tuple[str, str, str], float] = {}
    rerank_seconds: dict[str, list[float]] = {r: [] for r in rerankers}
    sampled_ids = sorted(kept)
    for position, query_id in enumerate(sampled_ids if rerankers else []):
        if position % 20 == 0:
            log(f"{data.name}: reranking query {position + 1}/{len(sampled_ids)}")
        text = data.queries[query_id]
        order = list(rerankers) if position % 2 == 0 else list(reversed(rerankers))
        for reranker in order:
            for number, stage in enumerate(RERANKED_STAGES):
                ranked = kept[query_id][stage].ids[:RERANK_CANDIDATES]
                missing = [d for d in ranked if (reranker, query_id, d) not in cache]
                if not missing:
                    continue
                start = time.perf_counter()
                scores = manager.rerank(reranker, text, [data.corpus[d] for d in missing])
                if number == 0:  # every dense list is full: comparable timings
                    rerank_seconds[reranker].append(time.perf_counter() - start)
                for doc_id, score in zip(missing, scores, strict=True):
                    cache[(reranker, query_id, doc_id)] = float(score)

    rerank_rows: list[list[object]] = [
        [stage, "-", *sampled[stage].means()] for stage in FIRST_STAGES
    ]
    for stage in RERANKED_STAGES:
        for reranker in rerankers:
            plain, rrf, blend = Quality(), Quality(), Quality()
            for query_id in sampled_ids:
                full = kept[query_id][stage]
                ranking = Ranking(full.ids[:RERANK_CANDIDATES], full.scores[:RERANK_CANDIDATES])
                relevant = data.qrels[query_id]
                reranked = [cache[(reranker, query_id, d)] for d in ranking.ids]
                plain.add(order_by(ranking.ids, reranked), relevant)
                rrf.add(
                    order_by(
                        ranking.ids, fusion.reciprocal_rank_fusion([ranking.scores, reranked])
                    ),
                    relevant,
                )
                blend.add(
                    order_by(ranking.ids, fusion.weighted_blend([ranking.scores, reranked])),
                    relevant,
                )
            for how, quality in (("alone", plain), ("RRF", rrf), ("blend", blend)):
                rerank_rows.append([stage, f"{reranker} ({how})", *quality.means()])
                raw[f"sample | {stage} | {reranker} | {how}"] = quality.means()
    for stage in FIRST_STAGES:
        raw[f"sample | {stage}"] = sampled[stage].means()
    rerank_rows = with_ratios(rerank_rows, sampled["dense"].means())

    reference = benchlib.LatencyStats.of(seconds["reference: embed the query"])
    latency_rows: list[list[object]] = []
    for what, values in [
        *seconds.items(),
        *((f"rerank {RERANK_CANDIDATES}: {r}", v) for r, v in rerank_seconds.items()),
    ]:
        if not values:
            continue
        stats = benchlib.LatencyStats.of(values)
        latency_rows.append(
            [what, stats.count, stats.p50_ms, stats.mean_ms, stats.p50_ms / reference.p50_ms]
        )
        raw[f"latency | {what}"] = stats
    return SetResult(
        data.name,
        len(query_ids),
        len(sampled_ids),
        len(doc_ids),
        first_rows,
        rerank_rows,
        latency_rows,
        raw,
    )


def report(results: Sequence[SetResult], command: str, load: str) -> str:
    parts = [f"command: `{command}`", "", f"load: {load}", ""]
    for result in results:
        parts += [
            f"### {result.name}: {result.documents} documents, {EMBEDDER}",
            "",
            f"First stage, all {result.queries} queries (top {CANDIDATES}):",
            "",
            markdown_table(
                ["first stage", "MRR@10", "nDCG@10", "MRR / dense", "nDCG / dense"],
                result.first_rows,
            ),
            "",
            f"Reranked ({result.reranked_queries} queries; top {RERANK_CANDIDATES} of the first "
            "stage):",
            "",
            markdown_table(
                ["first stage", "reranker", "MRR@10", "nDCG@10", "MRR / dense", "nDCG / dense"],
                result.rerank_rows,
            ),
            "",
            markdown_table(
                ["step", "queries timed", "ms p50", "ms mean", "p50 / query embedding"],
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
        "--rerank-queries",
        type=int,
        default=0,
        help="rerank a seeded sample of this many queries per set (0: all)",
    )
    parser.add_argument("--seed", type=int, default=20261207)
    parser.add_argument("--rerankers", nargs="*", default=list(RERANKERS))
    args = parser.parse_args(argv)
    before = describe_load("before")
    log(before)
    results = []
    with (
        ModelManager(args.model_dir, offline=True) as manager,
        tempfile.TemporaryDirectory() as work,
    ):
        for name in args.sets:
            data = load_set(name, args.cache)
            ids = sorted(data.queries)
            if 0 < args.rerank_queries < len(ids):
                ids = random.Random(args.seed).sample(ids, args.rerank_queries)
            results.append(evaluate(manager, data, set(ids), args.rerankers, Path(work)))
    after = describe_load("after")
    log(after)
    command = "python bench/hybrid_eval.py " + " ".join(argv if argv is not None else sys.argv[1:])
    payload = {"machine": benchlib.machine_facts(), "sets": [r.raw for r in results]}
    benchlib.publish("hybrid_eval", payload, report(results, command, f"{before}; {after}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
