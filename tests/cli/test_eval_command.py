"""`nachbar eval` end to end: a small BEIR set written here, real servers, the built models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from nachbar.cli import evaluate
from nachbar.client import AIClient
from tests.cli.conftest import Cli
from tests.cli.test_ai_commands import text_store

QUERIES = {
    "q-cat": "a kitten napping on a couch",
    "q-bank": "interest rates went up",
    "q-markets": "share prices dropped",
    "q-dog": "a puppy playing fetch",
    "q-unjudged": "a question without judgments",
}
# query-id, corpus-id (store entry id), score; score 0 is judged not relevant.
QRELS = [
    ("q-cat", "cat", 1),
    ("q-bank", "bank", 2),
    ("q-bank", "stocks", 1),
    ("q-markets", "stocks", 1),
    ("q-dog", "dog", 1),
    ("q-dog", "cat", 0),
]


def write_beir(folder: Path) -> tuple[Path, Path]:
    queries, qrels = folder / "queries.jsonl", folder / "qrels.tsv"
    queries.write_text(
        "".join(
            json.dumps({"_id": i, "text": t, "metadata": {}}) + "\n" for i, t in QUERIES.items()
        )
    )
    rows = "".join(f"{q}\t{c}\t{s}\n" for q, c, s in QRELS)
    qrels.write_text("query-id\tcorpus-id\tscore\n" + rows)
    return queries, qrels


def expected_scores(ranked: dict[str, list[str]], k: int) -> dict[str, float]:
    """The averages, computed here from the formulas over each query's ranking."""
    relevant: dict[str, dict[str, float]] = {}
    for query, entry, score in QRELS:
        if score > 0:
            relevant.setdefault(query, {})[entry] = score
    recall, mrr, ndcg = [], [], []
    for query, judged in relevant.items():
        ids = ranked[query]
        recall.append(len(set(ids[:k]) & set(judged)) / len(judged))
        first = next((rank for rank, i in enumerate(ids[:10], 1) if i in judged), None)
        mrr.append(1 / first if first else 0.0)
        gain = sum(judged.get(i, 0) / math.log2(rank + 1) for rank, i in enumerate(ids[:10], 1))
        ideal = sum(
            s / math.log2(rank + 1) for rank, s in enumerate(sorted(judged.values())[::-1], 1)
        )
        ndcg.append(gain / ideal)
    n = len(relevant)
    return {f"recall@{k}": sum(recall) / n, "mrr@10": sum(mrr) / n, "ndcg@10": sum(ndcg) / n}


def test_metrics_on_a_hand_checked_ranking() -> None:
    ranked = ["x", "b", "y", "a"]
    relevant = {"a": 1.0, "b": 2.0}
    assert evaluate.recall_at(ranked, relevant, 2) == 0.5
    assert evaluate.recall_at(ranked, relevant, 4) == 1.0
    assert evaluate.mrr_at(ranked, relevant) == 0.5
    # gain 2/log2(3) + 1/log2(5) over the ideal 2/log2(2) + 1/log2(3)
    assert evaluate.ndcg_at(ranked, relevant) == pytest.approx(
        (2 / math.log2(3) + 1 / math.log2(5)) / (2 + 1 / math.log2(3))
    )
    assert evaluate.mrr_at(["x"] * 10 + ["a"], relevant) == 0.0  # past the cutoff


def test_eval_matches_the_searches_it_makes(
    ai_cli: Cli, ai_address: str, store_name: str, tmp_path: Path
) -> None:
    text_store(ai_address, store_name)
    queries, qrels = write_beir(tmp_path)
    result = ai_cli(
        "eval", "--store", store_name, "--queries", str(queries), "--qrels", str(qrels), "-k", "2"
    )
    assert result.code == 0, result.err
    assert "recall@2" in result.out and "mrr@10" in result.out and "ndcg@10" in result.out
    assert "4 queries" in result.out  # the unjudged query is not asked

    as_json = ai_cli(
        "eval", "--store", store_name, "--queries", str(queries), "--qrels", str(qrels), "-k", "2",
        "--json",
    )  # fmt: skip
    reported = json.loads(as_json.out)
    with AIClient(ai_address, timeout=60) as ai:
        ranked = {
            q: [m.id for m in ai.get_sim_n(store_name, QUERIES[q], 10).matches] for q in QUERIES
        }
    expected = expected_scores(ranked, 2)
    assert reported["queries"] == 4 and reported["rerank"] == ""
    for name, value in expected.items():
        assert reported[name] == pytest.approx(value, abs=1e-9), name


def test_eval_with_a_fused_rerank_scores_the_reranked_order(
    ai_cli: Cli, ai_address: str, store_name: str, cross_encoder: str, tmp_path: Path
) -> None:
    text_store(ai_address, store_name)
    queries, qrels = write_beir(tmp_path)
    result = ai_cli(
        "eval", "--store", store_name, "--queries", str(queries), "--qrels", str(qrels),
        "--rerank", cross_encoder, "--fusion", "rrf", "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    reported = json.loads(result.out)
    assert (reported["rerank"], reported["fusion"]) == (cross_encoder, "rrf")
    with AIClient(ai_address, timeout=60) as ai:
        ranked = {
            q: [
                m.id
                for m in ai.get_sim_n(
                    store_name, QUERIES[q], 10, rerank=cross_encoder, rerank_fusion="rrf"
                ).matches
            ]
            for q in QUERIES
        }
    for name, value in expected_scores(ranked, 10).items():
        assert reported[name] == pytest.approx(value, abs=1e-9), name


def test_eval_refuses_files_it_cannot_read_and_says_where(
    ai_cli: Cli, store_name: str, tmp_path: Path
) -> None:
    queries, qrels = write_beir(tmp_path)
    broken = tmp_path / "broken.tsv"
    broken.write_text("query-id\tcorpus-id\tscore\nq-cat\tcat\n")
    result = ai_cli(
        "eval", "--store", store_name, "--queries", str(queries), "--qrels", str(broken)
    )
    assert result.code == 2
    assert f"{broken}:2: not a BEIR qrels row" in result.err
    missing = ai_cli(
        "eval", "--store", store_name, "--queries", str(tmp_path / "nope.jsonl"), "--qrels",
        str(qrels),
    )  # fmt: skip
    assert missing.code == 2 and "cannot read" in missing.err
    unrelated = tmp_path / "other.tsv"
    unrelated.write_text("query-id\tcorpus-id\tscore\nzzz\tcat\t1\n")
    none = ai_cli(
        "eval", "--store", store_name, "--queries", str(queries), "--qrels", str(unrelated)
    )
    assert none.code == 2 and "no query in the queries file" in none.err
    fusion_alone = ai_cli(
        "eval", "--store", store_name, "--queries", str(queries), "--qrels", str(qrels),
        "--fusion", "rrf",
    )  # fmt: skip
    assert fusion_alone.code == 2 and "--fusion need --rerank" in fusion_alone.err
