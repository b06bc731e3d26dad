"""One-shot commands against real nachbar-ai and nachbar-db with the built models."""

from __future__ import annotations

import json
from pathlib import Path

from nachbar.client import AIClient, Item
from tests.cli.conftest import IMAGE_MODEL, TEXT_MODEL, Cli

DOCS = [
    Item("a cat sleeps on the warm sofa", "cat", {"kind": "pet", "year": 2021}),
    Item("a dog chases the ball in the park", "dog", {"kind": "pet", "year": 2019}),
    Item("the central bank raised interest rates", "bank", {"kind": "finance", "year": 2023}),
    Item("stock markets fell sharply on friday", "stocks", {"kind": "finance", "year": 2018}),
]


def text_store(ai_address: str, name: str) -> None:
    with AIClient(ai_address, timeout=60) as ai:
        ai.create_store(name, query_model=TEXT_MODEL)
        ai.upsert(name, DOCS)


def table_ids(out: str) -> list[str]:
    """The id column of a rich table, top to bottom."""
    ids = []
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 3 and cells[1].isdigit():
            ids.append(cells[2])
    return ids


def test_create_store_and_stores_table(ai_cli: Cli, store_name: str) -> None:
    created = ai_cli(
        "create-store", store_name, "--query-model", TEXT_MODEL, "--pred-index", "kind", "year"
    )
    assert created.code == 0, created.err
    assert f"store {store_name}: 384-d, cosine, query model {TEXT_MODEL}" in created.out
    row = next(line for line in ai_cli("stores").out.splitlines() if store_name in line)
    assert TEXT_MODEL in row and "384" in row and "yes" in row
    listed = json.loads(ai_cli("stores", "--json").out)
    mine = next(s for s in listed if s["name"] == store_name)
    assert mine["db_store"]["predicate_indexes"] == ["kind", "year"]
    again = ai_cli("create-store", store_name, "--query-model", TEXT_MODEL)
    assert again.code == 1 and "ALREADY_EXISTS" in again.err


def test_incompatible_models_are_refused_with_the_servers_message(
    ai_cli: Cli, store_name: str
) -> None:
    result = ai_cli(
        "create-store",
        store_name,
        "--query-model",
        TEXT_MODEL,
        "--index-model",
        "efficientnet-lite0",
    )
    assert result.code == 1
    assert result.err.startswith("error: FAILED_PRECONDITION: ")
    assert "space" in result.err


def test_search_table_and_json(ai_cli: Cli, ai_address: str, store_name: str) -> None:
    text_store(ai_address, store_name)
    table = ai_cli("search", "a kitten napping", "--store", store_name, "-k", "2")
    assert table.code == 0, table.err
    assert table_ids(table.out)[0] == "cat"
    assert "kind=pet  year=2021" in table.out
    assert "a cat sleeps on the warm sofa" in table.out  # the stored original
    assert "rerank" not in table.out

    found = json.loads(
        ai_cli("search", "interest rates", "--store", store_name, "-k", "3", "--json").out
    )
    matches = found["matches"]
    assert matches[0]["id"] == "bank"
    assert len(matches) == 3
    assert matches[0]["similarity"] >= matches[1]["similarity"] >= matches[2]["similarity"]
    assert matches[0]["metadata"] == {"kind": "finance", "year": 2023}
    assert matches[0]["original"] == "the central bank raised interest rates"


def test_search_filters_with_expression_and_json(
    ai_cli: Cli, ai_address: str, store_name: str
) -> None:
    text_store(ai_address, store_name)
    expression = ai_cli(
        "search",
        "a kitten",
        "--store",
        store_name,
        "-k",
        "4",
        "--json",
        "--filter",
        'kind = "finance" and year >= 2020',
    )
    assert [m["id"] for m in json.loads(expression.out)["matches"]] == ["bank"]
    as_json = ai_cli(
        "search",
        "a kitten",
        "--store",
        store_name,
        "-k",
        "4",
        "--json",
        "--filter",
        '{"kind": {"in": ["pet"]}}',
    )
    assert sorted(m["id"] for m in json.loads(as_json.out)["matches"]) == ["cat", "dog"]


def test_search_with_rerank_shows_both_scores(
    ai_cli: Cli, ai_address: str, store_name: str, cross_encoder: str
) -> None:
    text_store(ai_address, store_name)
    result = ai_cli(
        "search",
        "a sleeping cat",
        "--store",
        store_name,
        "-k",
        "2",
        "--rerank",
        cross_encoder,
        "--candidates",
        "4",
    )
    assert result.code == 0, result.err
    assert "rerank" in result.out
    assert table_ids(result.out)[0] == "cat"
    found = json.loads(
        ai_cli(
            "search",
            "a sleeping cat",
            "--store",
            store_name,
            "-k",
            "2",
            "--rerank",
            cross_encoder,
            "--json",
        ).out
    )
    scores = [m["rerank_score"] for m in found["matches"]]
    assert all(isinstance(s, float) for s in scores) and scores == sorted(scores, reverse=True)
    assert all(m["fused_score"] is None for m in found["matches"])
    fused = ai_cli(
        "search", "a sleeping cat", "--store", store_name, "-k", "4", "--rerank", cross_encoder,
        "--fusion", "blend",
    )  # fmt: skip
    assert fused.code == 0, fused.err
    assert "fused" in fused.out
    alone = ai_cli("search", "a sleeping cat", "--store", store_name, "--fusion", "rrf")
    assert alone.code == 2 and "--fusion need --rerank" in alone.err


def test_search_by_image_and_text_to_image(
    ai_cli: Cli, ai_address: str, store_name: str, tmp_path: Path
) -> None:
    from PIL import Image

    red, blue = tmp_path / "red.png", tmp_path / "blue.png"
    Image.new("RGB", (64, 64), (220, 20, 20)).save(red)
    Image.new("RGB", (64, 64), (20, 20, 220)).save(blue)
    by_image, by_text = f"{store_name}_img", f"{store_name}_txt"
    with AIClient(ai_address, timeout=60) as ai:
        ai.create_store(by_image, query_model=IMAGE_MODEL, store_original=False)
        ai.create_store(
            by_text, query_model=TEXT_MODEL, index_model=IMAGE_MODEL, store_original=False
        )
        for store in (by_image, by_text):
            ai.upsert(store, [Item(red, "red"), Item(blue, "blue")])
    result = ai_cli("search", "--store", by_image, "--image", str(blue), "-k", "2", "--json")
    assert result.code == 0, result.err
    matches = json.loads(result.out)["matches"]
    assert matches[0]["id"] == "blue" and matches[0]["similarity"] > 0.99
    text = ai_cli("search", "a red square", "--store", by_text, "-k", "2", "--json")
    assert sorted(m["id"] for m in json.loads(text.out)["matches"]) == ["blue", "red"]
    # An image query on the text-query store, through a query model of the same space.
    override = ai_cli(
        "search",
        "--image",
        str(red),
        "--store",
        by_text,
        "-k",
        "1",
        "--json",
        "--query-model",
        IMAGE_MODEL,
    )
    assert override.code == 0, override.err
    assert json.loads(override.out)["matches"][0]["id"] == "red"
    wrong = ai_cli(
        "search", "--image", str(red), "--store", by_text, "--query-model", "efficientnet-lite0"
    )
    assert wrong.code == 1 and "space" in wrong.err
    missing = ai_cli("search", "--store", by_image, "--image", str(tmp_path / "nope.png"))
    assert missing.code == 1 and "cannot read image" in missing.err
    both = ai_cli("search", "text", "--store", by_image, "--image", str(red))
    assert both.code == 2


def test_embed_prints_dimension_and_json_has_every_value(ai_cli: Cli, ai_address: str) -> None:
    short = ai_cli("embed", "hello world", "--model", TEXT_MODEL)
    assert short.code == 0
    assert "hello world: dimension 384" in short.out
    assert "384 values" in short.out
    full = json.loads(
        ai_cli("embed", "hello world", "good night", "--model", TEXT_MODEL, "--json").out
    )
    assert full["dimension"] == 384
    assert [e["input"] for e in full["embeddings"]] == ["hello world", "good night"]
    with AIClient(ai_address) as ai:
        expected = ai.embed(TEXT_MODEL, ["hello world"])[0]
    assert full["embeddings"][0]["vector"] == expected
    unknown = ai_cli("embed", "x", "--model", "no-such-model")
    assert unknown.code == 1 and "NOT_FOUND" in unknown.err


def test_rerank_command_orders_documents(ai_cli: Cli, cross_encoder: str) -> None:
    result = ai_cli(
        "rerank",
        "a man is eating food",
        "a man eats a sandwich",
        "a plane takes off",
        "--model",
        cross_encoder,
        "--json",
    )
    ranked = json.loads(result.out)
    assert [r["document"] for r in ranked] == ["a man eats a sandwich", "a plane takes off"]
    assert ranked[0]["index"] == 0 and ranked[0]["score"] > ranked[1]["score"]
    table = ai_cli("rerank", "a cat", "a truck", "a kitten", "--model", cross_encoder)
    assert table.out.index("a kitten") < table.out.index("a truck")


def test_models_list_from_the_server_and_locally(
    ai_cli: Cli, model_dir: Path, tmp_path: Path
) -> None:
    served = ai_cli("models", "list")
    assert served.code == 0
    row = next(line for line in served.out.splitlines() if f" {TEXT_MODEL} " in line)
    assert "embedding" in row and "384" in row and "yes" in row

    def local(directory: Path) -> dict[str, dict[str, object]]:
        listed = ai_cli("models", "list", "--local", "--model-dir", str(directory), "--json")
        return {m["name"]: m for m in json.loads(listed.out)}

    built = local(model_dir)
    assert built[TEXT_MODEL]["available"] is True
    assert built[TEXT_MODEL]["loaded"] is False  # nothing is loaded without a server
    assert built[TEXT_MODEL]["source"] == "built offline"
    assert local(tmp_path)[TEXT_MODEL]["available"] is False


def test_get_and_delete_through_nachbar_ai(ai_cli: Cli, ai_address: str, store_name: str) -> None:
    text_store(ai_address, store_name)
    got = ai_cli("get", store_name, "cat", "--json")
    entry = json.loads(got.out)["entries"][0]
    assert entry == {
        "id": "cat",
        "metadata": {"kind": "pet", "year": 2021},
        "original": "a cat sleeps on the warm sofa",
    }
    assert ai_cli("delete", store_name, "cat", "dog").out.strip() == (
        f"deleted 2 of 2 from {store_name}"
    )
    assert ai_cli("get", store_name, "cat").code == 1
    assert ai_cli("drop-store", store_name).code == 0
