"""`nachbar ingest`: bulk upsert a folder of images or a JSONL/CSV file of texts.

Ids make re-runs idempotent: an image's id is its path relative to the folder; a text row's id
is its `--id-column` value, or (when there is none) left to nachbar-ai, which derives it from a
hash of the text. Bad files and rows are collected with their reasons and reported at the end;
they never abort the run. A batch the server refuses as invalid is retried one item at a time
so that only the bad items fail.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import grpc
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from nachbar.cli import render
from nachbar.cli.context import CliContext, CliError, describe_error
from nachbar.client import AIClient, Image, Item, NachbarError, NotFound, UpsertResult
from nachbar.v1.codec import Metadata, MetadataValue, metadata_to_proto

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
DEFAULT_BATCH_SIZE = 32
# Statuses that blame the request's content, so retrying items one by one isolates the bad ones.
# Anything else (store missing, server down, model missing) would fail every item alike.
PER_ITEM_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
# Leading zeros mark codes, not numbers ("00123" stays a string).
_CSV_INT = re.compile(r"[+-]?(?:0|[1-9]\d*)")
_CSV_FLOAT = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?")
_INT64 = (-(2**63), 2**63 - 1)

SourceKind = Literal["images", "jsonl", "csv"]


@dataclass(frozen=True)
class Record:
    """One item to upsert. `origin` names it in reports (a relative path or "line 12")."""

    origin: str
    id: str
    metadata: Metadata
    text: str | None = None
    image_path: Path | None = None


@dataclass(frozen=True)
class Failure:
    origin: str
    reason: str


@dataclass
class IngestReport:
    inserted: int = 0
    updated: int = 0
    failures: list[Failure] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failures)

    def to_json(self, store: str) -> dict[str, Any]:
        return {
            "store": store,
            "inserted": self.inserted,
            "updated": self.updated,
            "failed": self.failed,
            "failures": [{"item": f.origin, "reason": f.reason} for f in self.failures],
        }


@dataclass(frozen=True)
class Source:
    kind: SourceKind
    path: Path
    text_column: str = "text"
    id_column: str | None = None

    def count(self) -> int:
        """How many records `records()` yields (for the progress bar's total and ETA)."""
        if self.kind == "images":
            return len(self.image_files())
        if self.kind == "jsonl":
            with self.path.open("rb") as stream:
                return sum(1 for line in stream if line.strip())
        with _open_csv(self.path) as stream:
            reader = csv.reader(stream)
            next(reader, None)
            return sum(1 for row in reader if any(cell.strip() for cell in row))

    def records(self) -> Iterator[Record | Failure]:
        if self.kind == "images":
            return self._image_records()
        if self.kind == "jsonl":
            return self._jsonl_records()
        return self._csv_records()

    def image_files(self) -> list[Path]:
        """Image files under the folder, sorted, skipping hidden files and folders."""
        found = []
        for path in self.path.rglob("*"):
            relative = path.relative_to(self.path)
            if any(part.startswith(".") for part in relative.parts):
                continue
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                found.append(path)
        return sorted(found)

    def _image_records(self) -> Iterator[Record | Failure]:
        for path in self.image_files():
            relative = path.relative_to(self.path).as_posix()
            yield Record(origin=relative, id=relative, metadata={"path": relative}, image_path=path)

    def _jsonl_records(self) -> Iterator[Record | Failure]:
        with self.path.open("rb") as stream:
            for number, raw in enumerate(stream, 1):
                if not raw.strip():
                    continue
                origin = f"line {number}"
                try:
                    row = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    yield Failure(origin, "not UTF-8 text")
                    continue
                except json.JSONDecodeError as error:
                    yield Failure(origin, f"invalid JSON: {error.msg} (column {error.colno})")
                    continue
                if not isinstance(row, dict):
                    yield Failure(
                        origin,
                        'expected a JSON object per line, e.g. {"text": "...", "lang": "en"}',
                    )
                    continue
                yield self._row_record(origin, row, _json_metadata_value)

    def _csv_records(self) -> Iterator[Record | Failure]:
        with _open_csv(self.path) as stream:
            reader = csv.DictReader(stream)
            columns = reader.fieldnames or []
            for needed, flag in (
                (self.text_column, "--text-column"),
                (self.id_column, "--id-column"),
            ):
                if needed is not None and needed not in columns:
                    raise CliError(
                        f"{self.path} has no column {needed!r} (columns: "
                        f"{', '.join(columns) or 'none'}); name the right one with {flag}"
                    )
            try:
                for row in reader:
                    origin = f"line {reader.line_num}"
                    if None in row:
                        yield Failure(origin, "more fields than the header has columns")
                        continue
                    if not any((value or "").strip() for value in row.values()):
                        continue
                    yield self._row_record(origin, row, _csv_metadata_value)
            except UnicodeDecodeError:
                raise CliError(
                    f"{self.path} is not UTF-8 (after line {reader.line_num}); convert it, "
                    "e.g. with iconv -t UTF-8"
                ) from None
            except csv.Error as error:
                raise CliError(f"{self.path} line {reader.line_num}: {error}") from None

    def _row_record(
        self,
        origin: str,
        row: Mapping[str, Any],
        convert: Callable[[str, Any], MetadataValue | None],
    ) -> Record | Failure:
        text = row.get(self.text_column)
        if not isinstance(text, str) or not text.strip():
            return Failure(origin, f"no text in column {self.text_column!r}")
        entry_id = ""
        if self.id_column is not None:
            raw_id = row.get(self.id_column)
            if raw_id is None or isinstance(raw_id, bool | dict | list) or str(raw_id) == "":
                return Failure(origin, f"no id in column {self.id_column!r}")
            entry_id = str(raw_id)
        metadata: Metadata = {}
        for key, value in row.items():
            if key in (self.text_column, self.id_column):
                continue
            try:
                converted = convert(key, value)
            except ValueError as error:
                return Failure(origin, str(error))
            if converted is not None:
                metadata[key] = converted
        try:
            metadata_to_proto(metadata)  # refuse here what the request could not carry
        except (TypeError, ValueError) as error:
            return Failure(origin, f"metadata cannot be sent: {error}")
        return Record(origin=origin, id=entry_id, metadata=metadata, text=text)


def _open_csv(path: Path) -> Any:
    # utf-8-sig drops the byte-order mark spreadsheet programs write.
    return path.open(newline="", encoding="utf-8-sig")


def _json_metadata_value(key: str, value: Any) -> MetadataValue | None:
    if value is None:
        return None
    if isinstance(value, bool | int | float | str):
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and not (_INT64[0] <= value <= _INT64[1])
        ):
            raise ValueError(f"column {key!r}: {value} does not fit a 64-bit integer")
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(
        f"column {key!r}: {type(value).__name__} values cannot be metadata; use strings, "
        "numbers, booleans or lists of strings"
    )


def _csv_metadata_value(key: str, value: str | None) -> MetadataValue | None:
    """Empty cells are left out; integers, floats and true/false are parsed, the rest is text
    (including numbers written with leading zeros, such as postal codes)."""
    if value is None or value == "":
        return None
    stripped = value.strip()
    if _CSV_INT.fullmatch(stripped):
        number = int(stripped)
        if _INT64[0] <= number <= _INT64[1]:
            return number
        return value
    if _CSV_FLOAT.fullmatch(stripped) and not re.match(r"[+-]?0\d", stripped):
        return float(stripped)
    if stripped.lower() in ("true", "false"):
        return stripped.lower() == "true"
    return value


def find_source(path: Path, text_column: str = "text", id_column: str | None = None) -> Source:
    if path.is_dir():
        return Source("images", path)
    if not path.exists():
        raise CliError(f"{path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return Source("jsonl", path, text_column, id_column)
    if suffix == ".csv":
        return Source("csv", path, text_column, id_column)
    raise CliError(
        f"cannot ingest {path}: give a folder of images ({', '.join(sorted(IMAGE_SUFFIXES))}) "
        "or a .jsonl / .csv file of texts"
    )


def _to_item(record: Record) -> Item:
    if record.image_path is not None:
        return Item(Image(record.image_path.read_bytes()), record.id, record.metadata)
    return Item(record.text, record.id, record.metadata)


UpsertBatch = Callable[[list[Item]], UpsertResult]


class Ingester:
    """Sends records in batches and isolates bad items; independent of terminals and servers."""

    def __init__(
        self, upsert: UpsertBatch, batch_size: int, advance: Callable[[int], None] = lambda n: None
    ) -> None:
        if batch_size < 1:
            raise CliError("--batch-size must be at least 1", exit_code=2)
        self._upsert = upsert
        self._batch_size = batch_size
        self._advance = advance
        self.report = IngestReport()

    def run(self, records: Iterable[Record | Failure]) -> IngestReport:
        batch: list[Record] = []
        for record in records:
            if isinstance(record, Failure):
                self.report.failures.append(record)
                self._advance(1)
                continue
            batch.append(record)
            if len(batch) >= self._batch_size:
                self._send(batch)
                batch = []
        if batch:
            self._send(batch)
        return self.report

    def _send(self, batch: Sequence[Record]) -> None:
        ready: list[tuple[Record, Item]] = []
        for record in batch:
            try:
                ready.append((record, _to_item(record)))
            except OSError as error:
                self.report.failures.append(
                    Failure(record.origin, f"cannot read: {error.strerror or error}")
                )
                self._advance(1)
        if not ready:
            return
        try:
            self._count(self._upsert([item for _, item in ready]))
        except NachbarError as error:
            if error.code not in PER_ITEM_CODES:
                raise
            if len(ready) == 1:
                self.report.failures.append(Failure(ready[0][0].origin, describe_error(error)))
            else:
                self._send_one_by_one(ready)
        self._advance(len(ready))

    def _send_one_by_one(self, ready: Sequence[tuple[Record, Item]]) -> None:
        for record, item in ready:
            try:
                self._count(self._upsert([item]))
            except NachbarError as error:
                if error.code not in PER_ITEM_CODES:
                    raise
                self.report.failures.append(Failure(record.origin, describe_error(error)))

    def _count(self, result: UpsertResult) -> None:
        self.report.inserted += result.inserted
        self.report.updated += result.updated


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.1f} items/s", style="progress.data.speed")


def register(
    sub: argparse._SubParsersAction[Any],
    common: list[argparse.ArgumentParser],
    json_flag: argparse.ArgumentParser,
) -> None:
    p = sub.add_parser(
        "ingest",
        parents=[*common, json_flag],
        help="bulk upsert a folder of images or a .jsonl/.csv of texts",
        description="Upsert a folder of images (recursive; jpg, jpeg, png, webp, gif, bmp, tiff) "
        "or a .jsonl / .csv file of texts into a store through nachbar-ai. Image ids are paths "
        "relative to the folder and images get metadata `path`; text rows take their id from "
        "--id-column or a hash of the text, and their other columns become metadata. Re-running "
        "updates instead of duplicating. Bad files and rows are reported at the end "
        "(exit code 1).",
    )
    p.add_argument("path", type=Path, metavar="PATH")
    p.add_argument("--store", required=True)
    p.add_argument(
        "--create",
        action="store_true",
        help="create the store first if it does not exist (needs --query-model)",
    )
    p.add_argument("--query-model", metavar="MODEL", help="with --create: the query model")
    p.add_argument(
        "--index-model",
        metavar="MODEL",
        help="with --create: the model that embeds the items (default: query model)",
    )
    p.add_argument(
        "--no-store-original",
        action="store_true",
        help="with --create: do not keep original texts or image bytes",
    )
    p.add_argument(
        "--text-column",
        default="text",
        metavar="C",
        help="the column holding the text (default: text)",
    )
    p.add_argument(
        "--id-column",
        metavar="C",
        help="the column holding each row's id (default: a hash of the text)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"items per request (default {DEFAULT_BATCH_SIZE})",
    )
    p.add_argument(
        "--truncate",
        action="store_true",
        help="cut texts longer than the model's limit instead of failing them",
    )
    p.set_defaults(func=run)


def _prepare_store(ai: AIClient, args: argparse.Namespace, source: Source) -> None:
    if (args.query_model or args.index_model or args.no_store_original) and not args.create:
        raise CliError(
            "--query-model, --index-model and --no-store-original go with --create", exit_code=2
        )
    if args.create:
        if not args.query_model:
            raise CliError(
                "--create needs --query-model (and for images an --index-model of the same "
                "space, e.g. --query-model all-minilm-l6-v2 --index-model "
                "imagenet-conse-minilm-l6)",
                exit_code=2,
            )
        ai.create_store(
            args.store,
            query_model=args.query_model,
            index_model=args.index_model or "",
            store_original=not args.no_store_original,
            if_not_exists=True,
        )
    try:
        store = ai.get_store(args.store)
    except NotFound:
        raise CliError(
            f"store {args.store!r} does not exist on nachbar-ai at {ai.address}; add --create "
            "--query-model MODEL (and --index-model MODEL for images), or run "
            "`nachbar create-store`"
        ) from None
    # One cheap check up front instead of one identical failure per item.
    wanted = "image" if source.kind == "images" else "text"
    modalities = {m.name: m.modality for m in ai.list_models()}
    found = modalities.get(store.index_model)
    if found is not None and found != wanted:
        raise CliError(
            f"store {args.store!r} indexes {found} with {store.index_model!r}, but {source.path} "
            f"holds {wanted}s; use a store whose index model embeds {wanted}s"
        )


def run(ctx: CliContext, args: argparse.Namespace) -> int:
    source = find_source(args.path, args.text_column, args.id_column)
    total = source.count()
    if total == 0:
        what = "image files" if source.kind == "images" else "rows"
        raise CliError(f"nothing to ingest: no {what} in {source.path}")
    truncation = "truncate" if args.truncate else "error"
    with ctx.ai() as ai:
        _prepare_store(ai, args, source)

        def upsert(items: list[Item]) -> UpsertResult:
            return ai.upsert(args.store, items, truncation=truncation, batch_size=len(items))

        with _progress(ctx.err) as progress:
            task = progress.add_task(f"ingest into {escape(args.store)}", total=total)
            ingester = Ingester(upsert, args.batch_size, lambda n: progress.advance(task, n))
            report = ingester.run(source.records())
    _print_report(ctx, args, report)
    return 1 if report.failures else 0


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )


def _print_report(ctx: CliContext, args: argparse.Namespace, report: IngestReport) -> None:
    if args.json:
        render.print_json(ctx.out, report.to_json(args.store))
        return
    if report.failures:
        table = render.new_table("failed item", "reason", title="failures")
        for failure in report.failures:
            table.add_row(escape(failure.origin), escape(failure.reason))
        ctx.err.print(table)
    ctx.out.print(
        f"{escape(args.store)}: inserted {report.inserted}, updated {report.updated}, "
        f"failed {report.failed}",
        highlight=False,
    )
