"""`nachbar adapters|rescorers ...` and `search --adapter/--rescorer` against real servers."""

from __future__ import annotations

import json
from pathlib import Path

from nachbar.client import AIClient
from tests.cli.conftest import TEXT_MODEL, Cli

TOPICS = ["apples", "rivers", "engines", "violins", "glaciers", "tigers"]
ASPECTS = ["the history of", "how to clean", "the price of", "drawings of"]
CODES = ["zork", "blip", "quux", "frob"]


def write_examples(path: Path) -> Path:
    lines = [
        json.dumps({"query": f"{topic} {CODES[a]}", "relevant": [f"{topic}-{a}"]})
        for topic in TOPICS
        for a in range(len(ASPECTS))
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_train_list_show_search_and_drop(
    ai_cli: Cli, ai_address: str, store_name: str, tmp_path: Path
) -> None:
    with AIClient(ai_address, timeout=60) as ai:
        ai.create_store(store_name, query_model=TEXT_MODEL)
        ai.upsert(
            store_name,
            [(f"{aspect} {t}", f"{t}-{a}") for t in TOPICS for a, aspect in enumerate(ASPECTS)],
        )
    examples = write_examples(tmp_path / "examples.jsonl")
    trained = ai_cli(
        "adapters", "train", "--store", store_name, "--name", "v1", "--examples", str(examples)
    )
    assert trained.code == 0, trained.err
    assert "v1: ready" in trained.out and "held-out MRR@10" in trained.out
    listed = json.loads(ai_cli("adapters", "list", "--store", store_name, "--json").out)
    assert [a["name"] for a in listed] == ["v1"] and listed[0]["state"] == "ready"
    shown = ai_cli("adapters", "show", "--store", store_name, "v1")
    assert shown.code == 0 and "recommended:" in shown.out

    searched = ai_cli("search", "rivers frob", "--store", store_name, "--adapter", "v1")
    assert searched.code == 0, searched.err
    missing = ai_cli("search", "rivers", "--store", store_name, "--adapter", "nope")
    assert (
        missing.code == 1
        and "NOT_FOUND" in missing.err
        and "no adapter named 'nope'" in (missing.err)
    )

    rescorer = ai_cli(
        "rescorers",
        "train",
        "--store",
        store_name,
        "--name",
        "r1",
        "--examples",
        str(examples),
        "--epochs",
        "3",
    )
    assert rescorer.code == 0, rescorer.err
    reranked = ai_cli("search", "rivers frob", "--store", store_name, "--rescorer", "r1", "--json")
    assert reranked.code == 0, reranked.err
    assert all(m["rerank_score"] is not None for m in json.loads(reranked.out)["matches"])

    assert ai_cli("adapters", "drop", "--store", store_name, "v1").code == 0
    assert ai_cli("adapters", "list", "--store", store_name).out.startswith(
        f"store {store_name} has no adapters"
    )


def test_bad_examples_file_is_a_usage_error(ai_cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "a", "relevant": ["x"]}\n{"query": "b", "relevant": "x"}\n')
    result = ai_cli("adapters", "train", "--store", "s", "--name", "n", "--examples", str(bad))
    assert result.code == 2 and "bad.jsonl:2" in result.err and "'relevant'" in result.err
    both = tmp_path / "both.jsonl"
    both.write_text('{"query": "a", "image": "x.png", "relevant": ["x"]}\n')
    result = ai_cli("rescorers", "train", "--store", "s", "--name", "n", "--examples", str(both))
    assert result.code == 2 and "one of them" in result.err
