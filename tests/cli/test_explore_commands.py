"""`nachbar search` with --mmr and --positive/--negative, for nachbar-db and nachbar-ai."""

from __future__ import annotations

import json

from nachbar.client import AIClient, DBClient
from tests.cli.conftest import Cli
from tests.cli.test_ai_commands import text_store


def test_db_search_by_examples_and_mmr(db_cli: Cli, db_address: str, store_name: str) -> None:
    with DBClient(db_address, timeout=10) as db:
        db.create_store(store_name, 2)
        db.upsert(
            store_name,
            [("a", [1, 0]), ("a2", [0.99, 0.05]), ("a3", [0.98, 0.08]), ("b", [0, 1])],
        )
        want = db.get_sim_n(store_name, None, 2, positive=["a"], negative=["b"])
    found = db_cli(
        "search",
        "--service",
        "db",
        "--store",
        store_name,
        "-k",
        "2",
        "--positive",
        "a",
        "--negative",
        "b",
        "--json",
    )
    assert found.code == 0, found.err
    assert [m["id"] for m in json.loads(found.out)["matches"]] == [m.id for m in want.matches]
    assert "a" not in [m["id"] for m in json.loads(found.out)["matches"]]
    # MMR: the near-duplicate of the first pick gives way to the other direction.
    plain = db_cli(
        "search", "[1, 0.02]", "--service", "db", "--store", store_name, "-k", "2", "--json"
    )
    assert [m["id"] for m in json.loads(plain.out)["matches"]] == ["a", "a2"]
    diverse = db_cli(
        "search",
        "[1, 0.02]",
        "--service",
        "db",
        "--store",
        store_name,
        "-k",
        "2",
        "--mmr",
        "0.3",
        "--json",
    )
    assert [m["id"] for m in json.loads(diverse.out)["matches"]] == ["a", "b"]
    best = db_cli(
        "search",
        "--service",
        "db",
        "--store",
        store_name,
        "-k",
        "1",
        "--positive",
        "a",
        "--strategy",
        "best_score",
    )
    assert best.code == 0 and "a2" in best.out

    bad = db_cli("search", "[1, 0]", "--service", "db", "--store", store_name, "--mmr", "2")
    assert bad.code == 1
    assert "INVALID_ARGUMENT" in bad.err and "mmr lambda 2.0 is out of range" in bad.err
    missing = db_cli("search", "--service", "db", "--store", store_name, "--positive", "zz")
    assert missing.code == 1 and "NOT_FOUND" in missing.err and "'zz'" in missing.err
    usage = db_cli("search", "--service", "db", "--store", store_name, "--strategy", "best_score")
    assert usage.code != 0 and "need --positive or --negative" in usage.err
    no_query = db_cli("search", "--service", "db", "--store", store_name)
    assert no_query.code != 0 and "--positive ID" in no_query.err


def test_ai_search_by_examples_and_mmr(ai_cli: Cli, ai_address: str, store_name: str) -> None:
    text_store(ai_address, store_name)
    with AIClient(ai_address, timeout=60) as ai:
        want = ai.get_sim_n(store_name, None, 2, positive=["cat"], strategy="best_score")
        diverse_want = ai.get_sim_n(store_name, "a pet", 3, mmr=0.3)
    found = ai_cli(
        "search",
        "--store",
        store_name,
        "-k",
        "2",
        "--positive",
        "cat",
        "--strategy",
        "best_score",
        "--json",
    )
    assert found.code == 0, found.err
    ids = [m["id"] for m in json.loads(found.out)["matches"]]
    assert ids == [m.id for m in want.matches] and "cat" not in ids
    assert ids[0] == "dog"
    diverse = ai_cli("search", "a pet", "--store", store_name, "-k", "3", "--mmr", "0.3", "--json")
    assert [m["id"] for m in json.loads(diverse.out)["matches"]] == [
        m.id for m in diverse_want.matches
    ]
    refused = ai_cli("search", "a pet", "--store", store_name, "--mmr", "0.5", "--rerank", "x")
    assert refused.code == 1 and "MMR does not combine with rerank" in refused.err
