"""Ingest without a server: reading folders, JSONL and CSV, and isolating bad items."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nachbar.cli.context import CliError
from nachbar.cli.ingest import Failure, Ingester, Record, find_source
from nachbar.client import Image, InvalidArgument, Item, NotFound, UpsertResult


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def records_of(path: Path, **kwargs: str) -> list[Record | Failure]:
    return list(find_source(path, **kwargs).records())


def test_image_folder_is_recursive_sorted_and_skips_hidden_and_other_files(
    tmp_path: Path,
) -> None:
    for name in [
        "b.JPG",
        "a.png",
        "nested/deeper/c.webp",
        "nested/d.tiff",
        "notes.txt",
        ".hidden/e.png",
        "nested/.f.png",
    ]:
        write(tmp_path / name, "x")
    source = find_source(tmp_path)
    assert source.kind == "images"
    assert source.count() == 4
    records = records_of(tmp_path)
    assert [r.id for r in records if isinstance(r, Record)] == [
        "a.png",
        "b.JPG",
        "nested/d.tiff",
        "nested/deeper/c.webp",
    ]
    first = records[3]
    assert isinstance(first, Record)
    assert first.metadata == {"path": "nested/deeper/c.webp"}
    assert first.image_path == tmp_path / "nested/deeper/c.webp"


def test_jsonl_keeps_json_types_and_reports_bad_lines(tmp_path: Path) -> None:
    lines = [
        {"text": "first", "year": 2020, "score": 0.5, "ok": True, "tags": ["a", "b"], "gone": None},
        "not json",
        {"title": "no text column"},
        {"text": "nested", "meta": {"a": 1}},
        {"text": "numbers in a list", "nums": [1, 2]},
        [1, 2, 3],
        {"text": "huge", "n": 2**70},
    ]
    body = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    path = write(tmp_path / "rows.jsonl", body + "\n\n")
    source = find_source(path)
    assert source.count() == 7
    records = records_of(path)
    assert records[0] == Record(
        origin="line 1",
        id="",
        metadata={"year": 2020, "score": 0.5, "ok": True, "tags": ["a", "b"]},
        text="first",
    )
    failures = {r.origin: r.reason for r in records if isinstance(r, Failure)}
    assert failures.keys() == {"line 2", "line 3", "line 4", "line 5", "line 6", "line 7"}
    assert "invalid JSON" in failures["line 2"]
    assert "no text in column 'text'" in failures["line 3"]
    assert "column 'meta'" in failures["line 4"]
    assert "column 'nums'" in failures["line 5"]
    assert "JSON object per line" in failures["line 6"]
    assert "64-bit" in failures["line 7"]


def test_jsonl_id_and_text_columns(tmp_path: Path) -> None:
    path = write(
        tmp_path / "rows.ndjson",
        "\n".join(
            [
                json.dumps({"body": "hello", "key": 7, "lang": "en"}),
                json.dumps({"body": "no key"}),
            ]
        ),
    )
    records = records_of(path, text_column="body", id_column="key")
    assert records[0] == Record(origin="line 1", id="7", metadata={"lang": "en"}, text="hello")
    assert records[1] == Failure("line 2", "no id in column 'key'")


def test_csv_parses_numbers_and_booleans_keeps_codes_and_skips_empty_cells(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path / "rows.csv",
        "\ufeffid,text,year,price,flag,note,zip\n"
        'r1,"hello, world",2020,9.5,TRUE,,00123\n'
        "r2,second,-3,1e2,false,plain words,x\n"
        ",,,,,,\n"
        "r3,,1,1,true,n,z\n"
        "r4,too,many,fields,here,a,b,c\n",
    )
    source = find_source(path, id_column="id")
    assert source.count() == 4
    records = records_of(path, id_column="id")
    assert records[0] == Record(
        origin="line 2",
        id="r1",
        text="hello, world",
        metadata={"year": 2020, "price": 9.5, "flag": True, "zip": "00123"},
    )
    assert records[1] == Record(
        origin="line 3",
        id="r2",
        text="second",
        metadata={"year": -3, "price": 100.0, "flag": False, "note": "plain words", "zip": "x"},
    )
    assert records[2] == Failure("line 5", "no text in column 'text'")
    assert records[3] == Failure("line 6", "more fields than the header has columns")


def test_csv_missing_column_is_a_clear_error(tmp_path: Path) -> None:
    path = write(tmp_path / "rows.csv", "title,year\nx,1\n")
    with pytest.raises(CliError, match="no column 'text' .*--text-column"):
        records_of(path)


def test_unsupported_path_says_what_is_accepted(tmp_path: Path) -> None:
    with pytest.raises(CliError, match=r"\.jsonl / \.csv"):
        find_source(write(tmp_path / "data.parquet", "x"))
    with pytest.raises(CliError, match="does not exist"):
        find_source(tmp_path / "missing.csv")


class FakeServer:
    """Refuses items whose text contains "bad" the way nachbar-ai does: the whole batch."""

    def __init__(self, fail_with: type[Exception] = InvalidArgument) -> None:
        self.calls: list[list[str]] = []
        self.seen: set[str] = set()
        self.fail_with = fail_with

    def upsert(self, items: list[Item]) -> UpsertResult:
        labels = [i.input if isinstance(i.input, str) else "<image>" for i in items]
        self.calls.append(labels)
        if any("bad" in label for label in labels):
            raise self.fail_with("entries[0]: cannot embed this")
        inserted = sum(1 for label in labels if label not in self.seen)
        self.seen.update(labels)
        return UpsertResult(inserted, len(labels) - inserted)


def text_records(*texts: str) -> list[Record | Failure]:
    return [Record(origin=f"line {i}", id="", metadata={}, text=t) for i, t in enumerate(texts, 1)]


def test_a_refused_batch_is_retried_item_by_item() -> None:
    server, advanced = FakeServer(), list[int]()
    ingester = Ingester(server.upsert, batch_size=3, advance=advanced.append)
    report = ingester.run(text_records("a", "bad one", "c", "d", "e"))
    assert server.calls == [["a", "bad one", "c"], ["a"], ["bad one"], ["c"], ["d", "e"]]
    assert (report.inserted, report.updated) == (4, 0)
    assert report.failures == [Failure("line 2", "INVALID_ARGUMENT: entries[0]: cannot embed this")]
    assert sum(advanced) == 5


def test_failures_from_reading_are_reported_and_counted() -> None:
    server, advanced = FakeServer(), list[int]()
    ingester = Ingester(server.upsert, batch_size=10, advance=advanced.append)
    report = ingester.run(
        [
            Failure("line 1", "invalid JSON"),
            Record(
                origin="gone.png",
                id="gone.png",
                metadata={},
                image_path=Path("/nonexistent/gone.png"),
            ),
            *text_records("ok"),
        ]
    )
    assert [f.origin for f in report.failures] == ["line 1", "gone.png"]
    assert "cannot read" in report.failures[1].reason
    assert server.calls == [["ok"]]
    assert sum(advanced) == 3


def test_errors_that_are_not_about_the_items_abort_the_run() -> None:
    server = FakeServer(fail_with=NotFound)
    with pytest.raises(NotFound):
        Ingester(server.upsert, batch_size=2).run(text_records("bad", "x"))
    assert server.calls == [["bad", "x"]]  # no pointless item-by-item retries


def test_images_are_sent_as_bytes(tmp_path: Path) -> None:
    write(tmp_path / "a.png", "12345")
    sent: list[Item] = []

    def upsert(items: list[Item]) -> UpsertResult:
        sent.extend(items)
        return UpsertResult(len(items), 0)

    Ingester(upsert, batch_size=4).run(records_of(tmp_path))
    assert sent == [Item(Image(b"12345"), "a.png", {"path": "a.png"})]


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(CliError, match="--batch-size"):
        Ingester(FakeServer().upsert, batch_size=0)
