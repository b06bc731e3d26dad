"""Keyword indexes and hybrid search from the command line, and `nachbar eval --hybrid` /
`--keyword-only` against the searches they make."""

from __future__ import annotations

import json
from pathlib import Path

from nachbar.client import AIClient, DBClient, Hybrid
from tests.cli.conftest import TEXT_MODEL, Cli
from tests.cli.test_ai_commands import table_ids
from tests.cli.test_eval_command import QUERIES, expected_scores, write_beir

CORPUS = [
    ("cat", "a cat sleeping on the sofa"),
    ("dog", "a dog fetching a ball in the park"),
    ("bank", "the central bank raised interest rates"),
    ("stocks", "share prices fell on the stock market"),
]


def test_db_keyword_index_and_hybrid_search(db_cli: Cli, db_address: str, store_name: str) -> None:
    created = db_cli(
        "create-store", store_name, "--service", "db", "--dim", "2", "--keyword-index", "text"
    )
    assert created.code == 0, created.err
    with DBClient(db_address, timeout=30) as db:
        assert db.get_store(store_name).keyword_fields == ("text",)
        db.upsert(
            store_name,
            [
                ("a", [1, 0], {"text": "apt pinning howto", "lang": "en"}),
                ("b", [0, 1], {"text": "network bridges", "lang": "en"}),
            ],
        )
    hybrid = db_cli(
        "search", "[0, 1]", "--store", store_name, "--service", "db", "--keywords", "apt",
        "--hybrid", "blend", "--vector-weight", "0.2", "--json",
    )  # fmt: skip
    assert hybrid.code == 0, hybrid.err
    matches = json.loads(hybrid.out)["matches"]
    assert [m["id"] for m in matches] == ["a", "b"]  # keywords outweigh the vector at 0.2
    assert matches[0]["keyword_score"] > 0 and matches[1]["keyword_score"] is None
    table = db_cli(
        "search", "--store", store_name, "--service", "db", "--keywords", "network",
        "--keyword-only",
    )  # fmt: skip
    assert table.code == 0, table.err
    assert table_ids(table.out) == ["b"] and "keyword" in table.out
    no_text = db_cli(
        "search", "--store", store_name, "--service", "db", "--hybrid", "rrf", "[1, 0]"
    )
    assert no_text.code == 2 and "--keywords TEXT" in no_text.err
    weight_alone = db_cli(
        "search", "[1, 0]", "--store", store_name, "--service", "db", "--vector-weight", "0.3"
    )
    assert weight_alone.code == 2 and "--hybrid blend" in weight_alone.err
    bad = db_cli(
        "search", "--store", store_name, "--service", "db", "--keywords", "   ", "--keyword-only"
    )
    assert bad.code != 0 and "empty or only whitespace" in bad.err


def test_create_and_drop_keyword_index(db_cli: Cli, db_address: str, store_name: str) -> None:
    with DBClient(db_address, timeout=30) as db:
        db.create_store(store_name, 2)
        db.upsert(store_name, [("a", [1, 0], {"title": "Über Straßen"}), ("b", [0, 1], {})])
    created = db_cli("create-keyword-index", store_name, "title", "--json")
    assert created.code == 0, created.err
    assert json.loads(created.out) == {"created": True, "indexed": 1}
    found = db_cli(
        "search", "--store", store_name, "--service", "db", "--keywords", "uber", "--keyword-only"
    )
    assert table_ids(found.out) == ["a"]  # diacritics folded
    assert db_cli("drop-keyword-index", store_name).code == 0
    again = db_cli("drop-keyword-index", store_name)
    assert again.code != 0 and "no keyword index" in again.err
    assert db_cli("drop-keyword-index", store_name, "--missing-ok").code == 0


def test_eval_hybrid_and_keyword_only_score_their_searches(
    ai_cli: Cli, ai_address: str, store_name: str, tmp_path: Path
) -> None:
    created = ai_cli("create-store", store_name, "--query-model", TEXT_MODEL, "--keyword-index")
    assert created.code == 0, created.err
    with AIClient(ai_address, timeout=60) as ai:
        ai.upsert(store_name, [(text, doc_id) for doc_id, text in CORPUS])
    queries, qrels = write_beir(tmp_path)
    for flags, search in (
        (["--hybrid", "rrf"], {"hybrid": Hybrid("rrf")}),
        (["--keyword-only"], {"keyword_only": True}),
    ):
        result = ai_cli(
            "eval", "--store", store_name, "--queries", str(queries), "--qrels", str(qrels),
            *flags, "--json",
        )  # fmt: skip
        assert result.code == 0, result.err
        reported = json.loads(result.out)
        with AIClient(ai_address, timeout=60) as ai:
            ranked = {
                q: [m.id for m in ai.get_sim_n(store_name, QUERIES[q], 10, **search).matches]
                for q in QUERIES
            }
        for name, value in expected_scores(ranked, 10).items():
            assert abs(reported[name] - value) < 1e-9, (flags, name)
        assert reported["retrieval"] in ("hybrid-rrf", "keyword")
    both = ai_cli(
        "eval", "--store", store_name, "--queries", str(queries), "--qrels", str(qrels),
        "--hybrid", "rrf", "--keyword-only",
    )  # fmt: skip
    assert both.code == 2 and "not both" in both.err
