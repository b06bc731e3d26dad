"""How results look: rich tables for people, JSON for scripts."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.markup import escape
from rich.table import Table

from nachbar.client.types import (
    AIEntry,
    AIMatch,
    AIStoreInfo,
    Entry,
    Exact,
    Hnsw,
    Match,
    ModelInfo,
    StoreInfo,
)
from nachbar.client.values import MetadataValue

TEXT_PREVIEW_CHARS = 60
VALUE_PREVIEW_CHARS = 40


def jsonable(value: Any) -> Any:
    """Plain JSON types for results; bytes become {"base64": ...} so nothing is lost."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, bytes | bytearray):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def print_json(console: Console, value: Any) -> None:
    # Plain print, not rich: rich would wrap long lines and colour the text.
    console.file.write(json.dumps(jsonable(value), indent=2, ensure_ascii=False) + "\n")
    console.file.flush()


def shorten(text: str, limit: int = TEXT_PREVIEW_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def format_value(value: MetadataValue) -> str:
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, list):
        return "[" + ", ".join(shorten(v, VALUE_PREVIEW_CHARS) for v in value) + "]"
    if isinstance(value, str):
        return shorten(value, VALUE_PREVIEW_CHARS)
    return str(value).lower() if isinstance(value, bool) else str(value)


def format_metadata(metadata: Mapping[str, MetadataValue]) -> str:
    return "  ".join(f"{k}={format_value(v)}" for k, v in sorted(metadata.items()))


def format_original(original: str | bytes | None) -> str:
    if original is None:
        return ""
    if isinstance(original, bytes):
        return f"<image, {len(original)} bytes>"
    return shorten(original)


def format_index(index: Hnsw | Exact) -> str:
    if isinstance(index, Exact):
        return "exact"
    return f"hnsw(m={index.m}, ef_c={index.ef_construction}, ef={index.ef_search})"


def format_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count} B"


# Columns of identifiers, kept whole (up to IDENTIFIER_WIDTH) while free text makes room.
IDENTIFIER_COLUMNS = frozenset({"rank", "id", "name", "command", "failed item"})
IDENTIFIER_WIDTH = 40


class ResultTable(Table):
    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for column in self.columns:
            if column.header in IDENTIFIER_COLUMNS:
                longest = max((cell_len(str(cell)) for cell in column.cells), default=0)
                column.min_width = min(longest, IDENTIFIER_WIDTH, options.max_width // 3)
        yield from super().__rich_console__(console, options)


def new_table(*columns: str, title: str | None = None) -> Table:
    table = ResultTable(title=title, show_lines=False, header_style="bold")
    for column in columns:
        # Long free text folds instead of being cut off.
        table.add_column(column, overflow="fold")
    return table


def store_table(info: StoreInfo, extra: Mapping[str, Any]) -> Table:
    """One store's details; `extra` rows (such as nachbar-ai's models) follow its name."""
    rows = {
        "name": info.name,
        **extra,
        "count": info.count,
        "dimension": info.dimension,
        "metric": info.metric.value,
        "index": format_index(info.index),
        "predicate indexes": ", ".join(info.predicate_indexes) or "-",
        "size": format_bytes(info.bytes_used),
    }
    return key_value_table(rows, title=f"store {info.name}")


def ai_stores_table(stores: Sequence[AIStoreInfo]) -> Table:
    table = new_table("name", "count", "dim", "metric", "models", "originals")
    for s in stores:
        models = (
            s.query_model
            if s.query_model == s.index_model
            else (f"query {s.query_model} / index {s.index_model}")
        )
        table.add_row(
            escape(s.name),
            str(s.db_store.count),
            str(s.db_store.dimension),
            s.db_store.metric.value,
            escape(models),
            "yes" if s.store_original else "no",
        )
    return table


def db_stores_table(stores: Sequence[StoreInfo]) -> Table:
    table = new_table("name", "count", "dim", "metric", "index", "predicate indexes", "size")
    for s in stores:
        table.add_row(
            escape(s.name),
            str(s.count),
            str(s.dimension),
            s.metric.value,
            format_index(s.index),
            escape(", ".join(s.predicate_indexes)),
            format_bytes(s.bytes_used),
        )
    return table


def _side_scores(matches: Sequence[AIMatch] | Sequence[Match]) -> bool:
    """Whether the search was hybrid or keyword-only (its matches carry per-side scores)."""
    return any(m.keyword_score is not None or m.hybrid_score is not None for m in matches)


def _side_cells(m: AIMatch | Match) -> list[str]:
    return [
        "" if score is None else f"{score:.4f}"
        for score in (m.vector_score, m.keyword_score, m.hybrid_score)
    ]


SIDE_COLUMNS = ["vector", "keyword", "hybrid"]


def ai_matches_table(matches: Sequence[AIMatch]) -> Table:
    reranked = any(m.rerank_score is not None for m in matches)
    fused = any(m.fused_score is not None for m in matches)
    sides = _side_scores(matches)
    columns = [
        "rank",
        "id",
        "similarity",
        *(SIDE_COLUMNS if sides else []),
        *(["rerank"] if reranked else []),
        *(["fused"] if fused else []),
        "metadata",
    ]
    with_original = any(m.original is not None for m in matches)
    if with_original:
        columns.append("original")
    table = new_table(*columns)
    for rank, m in enumerate(matches, 1):
        row = [str(rank), escape(m.id), f"{m.similarity:.4f}"]
        if sides:
            row.extend(_side_cells(m))
        if reranked:
            row.append("" if m.rerank_score is None else f"{m.rerank_score:.4f}")
        if fused:
            row.append("" if m.fused_score is None else f"{m.fused_score:.4f}")
        row.append(escape(format_metadata(m.metadata)))
        if with_original:
            row.append(escape(format_original(m.original)))
        table.add_row(*row)
    return table


def db_matches_table(matches: Sequence[Match]) -> Table:
    sides = _side_scores(matches)
    table = new_table("rank", "id", "similarity", *(SIDE_COLUMNS if sides else []), "metadata")
    for rank, m in enumerate(matches, 1):
        table.add_row(
            str(rank),
            escape(m.id),
            f"{m.similarity:.4f}",
            *(_side_cells(m) if sides else []),
            escape(format_metadata(m.metadata)),
        )
    return table


def ai_entries_table(entries: Sequence[AIEntry]) -> Table:
    table = new_table("id", "metadata", "original")
    for e in entries:
        table.add_row(
            escape(e.id), escape(format_metadata(e.metadata)), escape(format_original(e.original))
        )
    return table


def db_entries_table(entries: Sequence[Entry]) -> Table:
    with_vectors = any(e.vector is not None for e in entries)
    table = new_table("id", "metadata", *(["vector"] if with_vectors else []))
    for e in entries:
        row = [escape(e.id), escape(format_metadata(e.metadata))]
        if with_vectors:
            row.append(format_vector(e.vector or []))
        table.add_row(*row)
    return table


def format_vector(vector: Sequence[float], shown: int = 6) -> str:
    head = ", ".join(f"{v:.4f}" for v in vector[:shown])
    more = f", … ({len(vector)} values)" if len(vector) > shown else ""
    return f"[{head}{more}]"


def models_table(models: Sequence[ModelInfo]) -> Table:
    table = new_table(
        "name", "kind", "modality", "dim", "space", "precision", "available", "loaded"
    )
    for m in models:
        table.add_row(
            escape(m.name),
            m.kind.replace("_", "-"),
            m.modality,
            str(m.dimension) if m.dimension else "-",
            escape(m.space or "-"),
            m.precision,
            "yes" if m.available else "no",
            "yes" if m.loaded else "no",
        )
    return table


def key_value_table(rows: Mapping[str, Any], title: str | None = None) -> Table:
    table = Table(title=title, show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in rows.items():
        table.add_row(escape(key.replace("_", " ")), escape(_format_scalar(value)))
    return table


def _format_scalar(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value)) or "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)
