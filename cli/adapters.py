"""One adapter per service: the client calls behind each command and how their results look.

A command (nachbar.cli.commands) is written once against `ServiceAdapter`; what differs between
nachbar-ai and nachbar-db (a query is text or a vector, entries have originals or vectors) is
decided here, once per service, instead of in every command.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rich.table import Table

from nachbar.cli import render
from nachbar.cli.context import CliError, UsageError
from nachbar.cli.filters import FilterSyntaxError, parse_filter
from nachbar.client import AIClient, DBClient, Exact, Hnsw, Hybrid, Image, Item
from nachbar.client.values import Filter
from nachbar.v1.codec import Metadata, metadata_to_proto

SERVICES = ("ai", "db")
LABELS = {"ai": "nachbar-ai", "db": "nachbar-db"}


@dataclass(frozen=True)
class Shown:
    """A result: the value `--json` prints, and the table and lines people read."""

    value: Any
    table: Table | None = None
    lines: tuple[str, ...] = ()


class ServiceAdapter(Protocol):
    service: str

    def list_stores(self) -> Shown: ...

    def get_store(self, store: str) -> Shown: ...

    def create_store(self, args: argparse.Namespace) -> Shown: ...

    def drop_store(self, store: str, missing_ok: bool) -> bool: ...

    def upsert(self, args: argparse.Namespace) -> Shown: ...

    def get_key(self, args: argparse.Namespace) -> tuple[Shown, list[str]]:
        """The entries found, and the ids that were not."""
        ...

    def get_by_predicate(self, args: argparse.Namespace) -> tuple[Shown, str]:
        """One page, and the token of the next ("" on the last page)."""
        ...

    def search(self, args: argparse.Namespace) -> Shown: ...

    def delete_keys(self, store: str, ids: list[str]) -> int: ...

    def delete_by_predicate(self, store: str, filter: Filter) -> int: ...

    def info(self) -> Any: ...

    def ping(self) -> None: ...


# -- argument values ------------------------------------------------------------------------------


def json_arg(raw: str, what: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as error:
        raise UsageError(f"{what} is not valid JSON ({error.msg}): {raw}") from None


def vector_arg(raw: str) -> list[float]:
    value = json_arg(raw, "the vector")
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        raise UsageError(f"a vector is a JSON list of numbers, e.g. [0.1, 0.2], not {raw}")
    return [float(v) for v in value]


def metadata_arg(raw: str | None) -> Metadata:
    if raw is None:
        return {}
    value = json_arg(raw, "the metadata")
    if not isinstance(value, dict):
        raise UsageError(f'metadata is a JSON object, e.g. {{"lang": "en"}}, not {raw}')
    try:
        metadata_to_proto(value)
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from None
    return value


def filter_arg(raw: str | None) -> Filter | None:
    if raw is None:
        return None
    try:
        return parse_filter(raw)
    except FilterSyntaxError as error:
        raise UsageError(f"--filter: {error}") from None


def image_arg(path: str | Path) -> Image:
    try:
        return Image.from_path(Path(path).expanduser())
    except OSError as error:
        raise CliError(f"cannot read image {path}: {error.strerror or error}") from None


def text_or_image(text: str | None, image: str | Path | None, what: str) -> str | Image:
    if image is not None and text is None:
        return image_arg(image)
    if text is not None and image is None:
        return text
    raise UsageError(f"give either {what} or --image PATH (not both)")


def explore_args(args: argparse.Namespace) -> dict[str, Any]:
    """get_sim_n's MMR and recommend-by-examples keywords from the command line."""
    if args.mmr_candidates and args.mmr is None:
        raise UsageError("--mmr-candidates needs --mmr LAMBDA")
    examples = bool(args.positive or args.negative)
    if (args.recommend_candidates or args.strategy != "average_vector") and not examples:
        raise UsageError("--strategy and --recommend-candidates need --positive or --negative ID")
    return {
        "mmr": args.mmr,
        "mmr_candidates": args.mmr_candidates,
        "positive": args.positive or (),
        "negative": args.negative or (),
        "strategy": args.strategy,
        "recommend_candidates": args.recommend_candidates,
    }


def truncation(args: argparse.Namespace) -> str:
    return "truncate" if getattr(args, "truncate", False) else "error"


# -- nachbar-ai -----------------------------------------------------------------------------------


class AIAdapter:
    service = "ai"

    def __init__(self, client: AIClient) -> None:
        self.client = client

    def list_stores(self) -> Shown:
        stores = self.client.list_stores()
        return Shown(stores, render.ai_stores_table(stores))

    def get_store(self, store: str) -> Shown:
        info = self.client.get_store(store)
        extra = {
            "query model": info.query_model,
            "index model": info.index_model,
            "originals kept": info.store_original,
        }
        return Shown(info, render.store_table(info.db_store, extra))

    def create_store(self, args: argparse.Namespace) -> Shown:
        info = self.client.create_store(
            args.store,
            query_model=args.query_model,
            index_model=args.index_model or "",
            store_original=not args.no_store_original,
            predicate_indexes=args.pred_index,
            index=Exact() if args.exact else None,
            metric=args.metric,
            if_not_exists=args.if_not_exists,
            keyword_index=args.keyword_index,
        )
        return Shown(
            info,
            lines=(
                f"store {info.name}: {info.db_store.dimension}-d, "
                f"{info.db_store.metric.value}, query model {info.query_model}, "
                f"index model {info.index_model}, "
                f"originals {'kept' if info.store_original else 'not kept'}",
            ),
        )

    def drop_store(self, store: str, missing_ok: bool) -> bool:
        return self.client.drop_store(store, missing_ok=missing_ok)

    def upsert(self, args: argparse.Namespace) -> Shown:
        value = text_or_image(args.input, args.image, "TEXT")
        result = self.client.upsert(
            args.store,
            [Item(value, args.id or "", metadata_arg(args.metadata))],
            truncation=truncation(args),
        )
        return Shown(
            result,
            lines=(
                f"inserted {result.inserted}, updated {result.updated}: {', '.join(result.ids)}",
            ),
        )

    def get_key(self, args: argparse.Namespace) -> tuple[Shown, list[str]]:
        result = self.client.get_key(args.store, args.ids)
        return Shown(result, render.ai_entries_table(result.entries)), result.missing_ids

    def get_by_predicate(self, args: argparse.Namespace) -> tuple[Shown, str]:
        page = self.client.get_by_predicate(
            args.store, filter_arg(args.filter), limit=args.limit, page_token=args.page_token
        )
        return Shown(page, render.ai_entries_table(page.entries)), page.next_page_token

    def search(self, args: argparse.Namespace) -> Shown:
        if args.rerank and args.rescorer:
            raise UsageError("give --rerank MODEL or --rescorer NAME, not both")
        if args.rerank_field and not args.rerank:
            raise UsageError("--rerank-field needs --rerank MODEL")
        if (args.candidates or args.fusion != "none") and not (args.rerank or args.rescorer):
            raise UsageError("--candidates and --fusion need --rerank MODEL or --rescorer NAME")
        explore = explore_args(args)
        query = (
            None
            if args.query is None and args.image is None and args.positive
            else text_or_image(args.query, args.image, "query text (or --positive ID)")
        )
        hybrid = hybrid_arg(args)
        result = self.client.get_sim_n(
            args.store,
            query,
            args.k,
            filter=filter_arg(args.filter),
            truncation=truncation(args),
            rerank=args.rerank,
            rerank_candidates=args.candidates,
            rerank_field=args.rerank_field,
            rerank_fusion=args.fusion,
            mode=args.mode,
            ef=args.ef,
            query_model=args.query_model,
            adapter=args.adapter,
            rescorer=args.rescorer,
            **explore,
            hybrid=hybrid,
            keywords=args.keywords or "",
            keyword_only=args.keyword_only,
        )
        if not result.matches:
            return Shown(result, lines=(f"no matches in {args.store}",))
        return Shown(result, render.ai_matches_table(result.matches))

    def delete_keys(self, store: str, ids: list[str]) -> int:
        return self.client.delete_keys(store, ids)

    def delete_by_predicate(self, store: str, filter: Filter) -> int:
        return self.client.delete_by_predicate(store, filter)

    def info(self) -> Any:
        return self.client.info()

    def ping(self) -> None:
        self.client.ping()


# -- nachbar-db -----------------------------------------------------------------------------------


class DBAdapter:
    service = "db"

    def __init__(self, client: DBClient) -> None:
        self.client = client

    def list_stores(self) -> Shown:
        stores = self.client.list_stores()
        return Shown(stores, render.db_stores_table(stores))

    def get_store(self, store: str) -> Shown:
        info = self.client.get_store(store)
        return Shown(info, render.store_table(info, {}))

    def create_store(self, args: argparse.Namespace) -> Shown:
        index = Exact() if args.exact else Hnsw(args.m, args.ef_construction, args.ef_search)
        info = self.client.create_store(
            args.store,
            args.dim,
            metric=args.metric,
            index=index,
            predicate_indexes=args.pred_index,
            if_not_exists=args.if_not_exists,
            keyword_fields=args.keyword_index or None,
        )
        return Shown(
            info,
            lines=(
                f"store {info.name}: {info.dimension}-d, {info.metric.value}, "
                f"{render.format_index(info.index)}",
            ),
        )

    def drop_store(self, store: str, missing_ok: bool) -> bool:
        return self.client.drop_store(store, missing_ok=missing_ok)

    def upsert(self, args: argparse.Namespace) -> Shown:
        if args.input is None:
            raise UsageError("nachbar-db stores vectors: give INPUT as a JSON list of numbers")
        if not args.id:
            raise UsageError("nachbar-db entries need an id: add --id ID")
        entry = (args.id, vector_arg(args.input), metadata_arg(args.metadata))
        result = self.client.upsert(args.store, [entry])
        return Shown(result, lines=(f"inserted {result.inserted}, updated {result.updated}",))

    def get_key(self, args: argparse.Namespace) -> tuple[Shown, list[str]]:
        result = self.client.get_key(args.store, args.ids, include_vectors=args.vectors)
        return Shown(result, render.db_entries_table(result.entries)), result.missing_ids

    def get_by_predicate(self, args: argparse.Namespace) -> tuple[Shown, str]:
        page = self.client.get_by_predicate(
            args.store,
            filter_arg(args.filter),
            limit=args.limit,
            page_token=args.page_token,
            include_vectors=args.vectors,
        )
        return Shown(page, render.db_entries_table(page.entries)), page.next_page_token

    def search(self, args: argparse.Namespace) -> Shown:
        explore = explore_args(args)
        hybrid = hybrid_arg(args)
        if args.keyword_only and args.query is not None:
            raise UsageError("--keyword-only searches by --keywords alone: leave out QUERY")
        if args.query is None and not args.keyword_only and not args.positive:
            raise UsageError(
                "nachbar-db searches by vector: give QUERY as a JSON list of numbers (or "
                "--positive ID, or --keywords TEXT --keyword-only)"
            )
        if (args.keyword_only or hybrid is not None) and not args.keywords:
            raise UsageError(
                "nachbar-db has no query text: --hybrid and --keyword-only need --keywords TEXT"
            )
        result = self.client.get_sim_n(
            args.store,
            vector_arg(args.query) if args.query is not None else None,
            args.k,
            filter=filter_arg(args.filter),
            mode=args.mode,
            ef=args.ef,
            include_vectors=args.vectors,
            **explore,
            keywords=args.keywords or "",
            hybrid=hybrid,
        )
        return Shown(
            result,
            render.db_matches_table(result.matches),
            (f"plan: {result.plan}",) if result.plan else (),
        )

    def delete_keys(self, store: str, ids: list[str]) -> int:
        return self.client.delete_keys(store, ids)

    def delete_by_predicate(self, store: str, filter: Filter) -> int:
        return self.client.delete_by_predicate(store, filter)

    def info(self) -> Any:
        return self.client.info()

    def ping(self) -> None:
        self.client.ping()


def hybrid_arg(args: argparse.Namespace) -> Hybrid | None:
    """The fusion of --hybrid rrf|blend (with --vector-weight); None: the server's default."""
    if args.vector_weight is not None and args.hybrid != "blend":
        raise UsageError("--vector-weight weighs a blend: add --hybrid blend")
    if args.hybrid is None:
        return None
    return Hybrid(args.hybrid, vector_weight=args.vector_weight)
