"""`nachbar ingest` end to end with real servers and models."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from nachbar.client import AIClient
from tests.cli.conftest import IMAGE_MODEL, TEXT_MODEL, Cli


def image_folder(root: Path) -> Path:
    """Five good images in nested folders, one corrupt file, one file that is not an image."""
    colours = {
        "red.png": (220, 30, 30),
        "nested/green.jpg": (30, 200, 30),
        "nested/deeper/blue.gif": (30, 30, 220),
        "nested/deeper/white.bmp": (250, 250, 250),
        "other/black.webp": (5, 5, 5),
    }
    for relative, colour in colours.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (48, 32), colour).save(path)
    (root / "nested" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is no jpeg")
    (root / "notes.txt").write_text("not an image, not ingested")
    return root


def test_ingest_images_reports_the_corrupt_file_and_reruns_idempotently(
    ai_cli: Cli, ai_address: str, store_name: str, tmp_path: Path
) -> None:
    folder = image_folder(tmp_path / "photos")
    first = ai_cli(
        "ingest",
        str(folder),
        "--store",
        store_name,
        "--create",
        "--query-model",
        TEXT_MODEL,
        "--index-model",
        IMAGE_MODEL,
        "--batch-size",
        "2",
    )
    assert first.code == 1  # something failed
    assert f"{store_name}: inserted 5, updated 0, failed 1" in first.out
    assert "nested/broken.jpg" in first.err and "INVALID_ARGUMENT" in first.err

    second = ai_cli("ingest", str(folder), "--store", store_name, "--json")
    assert second.code == 1
    report = json.loads(second.out)
    assert (report["inserted"], report["updated"], report["failed"]) == (0, 5, 1)
    assert [f["item"] for f in report["failures"]] == ["nested/broken.jpg"]
    assert report["failures"][0]["reason"].startswith("INVALID_ARGUMENT: ")

    with AIClient(ai_address) as ai:
        assert ai.get_store(store_name).db_store.count == 5
        found = ai.get_key(store_name, ["nested/deeper/blue.gif", "nested/broken.jpg"])
    assert [e.id for e in found.entries] == ["nested/deeper/blue.gif"]
    assert found.entries[0].metadata == {"path": "nested/deeper/blue.gif"}
    assert found.missing_ids == ["nested/broken.jpg"]

    # Images are in the text space of the query model: a text search finds them.
    hits = ai_cli("search", "a photo", "--store", store_name, "-k", "5", "--json")
    assert len(json.loads(hits.out)["matches"]) == 5


def test_ingest_jsonl_keeps_types_and_skips_bad_rows(
    ai_cli: Cli, ai_address: str, store_name: str, tmp_path: Path
) -> None:
    rows = tmp_path / "docs.jsonl"
    rows.write_text(
        "\n".join(
            [
                json.dumps(
                    {
                        "id": "d1",
                        "text": "a cat sleeps",
                        "year": 2021,
                        "score": 0.5,
                        "draft": False,
                        "tags": ["pets", "home"],
                    }
                ),
                json.dumps({"id": "d2", "text": "the bank raised rates", "year": 2023}),
                "{this is not json",
                json.dumps({"id": "d3", "body": "no text column"}),
            ]
        )
        + "\n"
    )
    result = ai_cli(
        "ingest",
        str(rows),
        "--store",
        store_name,
        "--create",
        "--query-model",
        TEXT_MODEL,
        "--id-column",
        "id",
        "--json",
    )
    assert result.code == 1
    report = json.loads(result.out)
    assert (report["inserted"], report["updated"]) == (2, 0)
    assert {f["item"] for f in report["failures"]} == {"line 3", "line 4"}
    with AIClient(ai_address) as ai:
        entries = {e.id: e for e in ai.get_key(store_name, ["d1", "d2"]).entries}
    assert entries["d1"].metadata == {
        "year": 2021,
        "score": 0.5,
        "draft": False,
        "tags": ["pets", "home"],
    }
    assert entries["d1"].original == "a cat sleeps"
    again = ai_cli("ingest", str(rows), "--store", store_name, "--id-column", "id", "--json")
    assert (json.loads(again.out)["inserted"], json.loads(again.out)["updated"]) == (0, 2)


def test_ingest_csv_parses_metadata_columns_and_uses_content_ids(
    ai_cli: Cli, ai_address: str, store_name: str, tmp_path: Path
) -> None:
    rows = tmp_path / "docs.csv"
    rows.write_text(
        "body,year,price,featured,lang\n"
        "a dog runs in the park,2019,9.99,true,en\n"
        "ein Hund rennt im Park,2020,5,false,de\n"
    )
    with AIClient(ai_address) as ai:
        ai.create_store(store_name, query_model=TEXT_MODEL)
    first = ai_cli("ingest", str(rows), "--store", store_name, "--text-column", "body")
    assert first.code == 0, first.err
    assert f"{store_name}: inserted 2, updated 0, failed 0" in first.out
    second = ai_cli("ingest", str(rows), "--store", store_name, "--text-column", "body")
    assert f"{store_name}: inserted 0, updated 2, failed 0" in second.out
    found = json.loads(
        ai_cli(
            "search", "a dog", "--store", store_name, "-k", "1", "--json", "--filter", 'lang = "de"'
        ).out
    )["matches"]
    assert found[0]["metadata"] == {"year": 2020, "price": 5, "featured": False, "lang": "de"}
    assert found[0]["original"] == "ein Hund rennt im Park"
    assert found[0]["id"]  # derived from the text by nachbar-ai


def test_ingest_into_a_missing_store_says_how_to_create_it(
    ai_cli: Cli, store_name: str, tmp_path: Path
) -> None:
    rows = tmp_path / "docs.jsonl"
    rows.write_text(json.dumps({"text": "hello"}) + "\n")
    result = ai_cli("ingest", str(rows), "--store", store_name)
    assert result.code == 1
    assert f"store {store_name!r} does not exist" in result.err
    assert "--create --query-model" in result.err


def test_ingest_images_into_a_text_store_is_refused_up_front(
    ai_cli: Cli, ai_address: str, store_name: str, tmp_path: Path
) -> None:
    with AIClient(ai_address) as ai:
        ai.create_store(store_name, query_model=TEXT_MODEL)
    result = ai_cli("ingest", str(image_folder(tmp_path / "photos")), "--store", store_name)
    assert result.code == 1
    assert "indexes text" in result.err and "images" in result.err
