"""`nachbar eval`: retrieval quality of a store on a user's own BEIR-format judgments.

BEIR's files: queries.jsonl holds one `{"_id": ..., "text": ...}` per line; qrels.tsv holds
`query-id<TAB>corpus-id<TAB>score` rows (after a header row), where a score above 0 marks the
corpus entry (a store entry id) relevant to the query. Only judged queries are asked.

Metrics, per query then averaged: recall@k (the share of relevant entries in the top k),
MRR@10 (1 / rank of the first relevant entry in the top 10) and nDCG@10 (gain = the qrels
score, as BEIR's evaluation computes it).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nachbar.cli.context import UsageError

#: The cutoff of MRR and nDCG, as BEIR reports them.
CUTOFF = 10

Qrels = dict[str, dict[str, float]]


def read_queries(path: Path) -> dict[str, str]:
    """Query id -> text from a BEIR queries.jsonl."""
    queries: dict[str, str] = {}
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            query_id, text = str(row["_id"]), row["text"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UsageError(
                f'{path}:{number}: not a BEIR query; each line must be {{"_id": ..., "text": ...}}'
            ) from None
        if not isinstance(text, str) or not text.strip():
            raise UsageError(f"{path}:{number}: query {query_id!r} has no text")
        queries[query_id] = text
    return queries


def read_qrels(path: Path) -> Qrels:
    """Query id -> {corpus id: score} from a BEIR qrels.tsv, relevant (score > 0) rows only."""
    qrels: Qrels = {}
    rows = csv.reader(_lines(path), delimiter="\t")
    for number, row in enumerate(rows, start=1):
        if not row or (number == 1 and row[:2] == ["query-id", "corpus-id"]):
            continue
        try:
            query_id, corpus_id, score = row[0], row[1], float(row[2])
        except (IndexError, ValueError):
            raise UsageError(
                f"{path}:{number}: not a BEIR qrels row; each must be "
                "query-id<TAB>corpus-id<TAB>score"
            ) from None
        if score > 0:
            qrels.setdefault(query_id, {})[corpus_id] = score
    return qrels


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text") from None


def recall_at(ranked: Sequence[str], relevant: Mapping[str, float], k: int) -> float:
    return sum(1 for doc in ranked[:k] if doc in relevant) / len(relevant)


def mrr_at(ranked: Sequence[str], relevant: Mapping[str, float], k: int = CUTOFF) -> float:
    for rank, doc in enumerate(ranked[:k], start=1):
        if doc in relevant:
            return 1.0 / rank
    return 0.0


def ndcg_at(ranked: Sequence[str], relevant: Mapping[str, float], k: int = CUTOFF) -> float:
    gain = sum(
        relevant.get(doc, 0.0) / math.log2(rank + 1) for rank, doc in enumerate(ranked[:k], 1)
    )
    best = sorted(relevant.values(), reverse=True)[:k]
    ideal = sum(score / math.log2(rank + 1) for rank, score in enumerate(best, 1))
    return gain / ideal


@dataclass(frozen=True)
class Scores:
    queries: int
    k: int
    recall: float
    mrr: float
    ndcg: float
    seconds: float

    def as_dict(self) -> dict[str, float | int]:
        return {
            "queries": self.queries,
            f"recall@{self.k}": self.recall,
            f"mrr@{CUTOFF}": self.mrr,
            f"ndcg@{CUTOFF}": self.ndcg,
            "seconds": self.seconds,
            "ms_per_query": 1000 * self.seconds / self.queries,
        }


def judged(queries: Mapping[str, str], qrels: Qrels) -> list[str]:
    """The ids of queries that have text and at least one relevant entry, in file order."""
    asked = [query_id for query_id in queries if query_id in qrels]
    if not asked:
        raise UsageError(
            "no query in the queries file has a relevant entry (score > 0) in the qrels file; "
            "check that both use the same query ids"
        )
    return asked


def evaluate(
    asked: Iterable[tuple[str, str]],
    qrels: Qrels,
    k: int,
    search: Callable[[str, int], list[str]],
    clock: Callable[[], float],
) -> Scores:
    """Ask each (id, text) query through `search(text, n)` (ids best first) and average."""
    recall, mrr, ndcg = [], [], []
    started = clock()
    for query_id, text in asked:
        ranked = search(text, max(k, CUTOFF))
        relevant = qrels[query_id]
        recall.append(recall_at(ranked, relevant, k))
        mrr.append(mrr_at(ranked, relevant))
        ndcg.append(ndcg_at(ranked, relevant))
    seconds = clock() - started
    count = len(recall)
    return Scores(count, k, sum(recall) / count, sum(mrr) / count, sum(ndcg) / count, seconds)
