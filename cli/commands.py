"""The one-shot data commands: ping, stores, create-store, drop-store, search, embed, rerank,
info, get, delete."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.markup import escape

from nachbar.cli import render
from nachbar.cli.context import CliContext, CliError
from nachbar.cli.filters import FilterSyntaxError, parse_filter
from nachbar.cli.health import check_health
from nachbar.client import Exact, Image, NachbarError
from nachbar.client.values import Filter

SERVICE_NAMES = {"db": "nachbar-db", "ai": "nachbar-ai"}
EMBED_PREVIEW_VALUES = 8


def register(
    sub: argparse._SubParsersAction[Any],
    common: list[argparse.ArgumentParser],
    json_flag: argparse.ArgumentParser,
) -> None:
    """Add this module's subcommands to the `nachbar` parser."""
    with_json = [*common, json_flag]

    p = sub.add_parser(
        "ping",
        parents=with_json,
        help="health-check the services (exit 0 only when SERVING)",
        description="Ask grpc.health.v1 whether each service is SERVING. Exit code 0 only when "
        "every service asked is serving; compose health checks run this.",
    )
    p.add_argument(
        "--service", choices=["db", "ai", "all"], default="all", help="which service to check"
    )
    p.set_defaults(func=ping)

    p = sub.add_parser(
        "stores",
        parents=with_json,
        help="list stores",
        description="A table of stores: name, count, dimension, metric, models.",
    )
    p.add_argument(
        "--service",
        choices=["ai", "db"],
        default="ai",
        help="ai lists stores with models; db lists every db store",
    )
    p.set_defaults(func=stores)

    p = sub.add_parser(
        "create-store",
        parents=with_json,
        help="create a store bound to embedding models",
        description="Create a store on nachbar-ai. Queries are embedded with --query-model, "
        "inserted items with --index-model (default: the query model); both must share one "
        "embedding space (see `nachbar models list`).",
    )
    p.add_argument("name", help="store name")
    p.add_argument("--query-model", required=True, metavar="MODEL")
    p.add_argument("--index-model", default="", metavar="MODEL")
    p.add_argument(
        "--no-store-original",
        action="store_true",
        help="do not keep each input's text or image bytes (saves space; no "
        "reranking on original text)",
    )
    p.add_argument(
        "--pred-index",
        nargs="+",
        default=[],
        metavar="FIELD",
        help="metadata fields to index for fast filters",
    )
    p.add_argument(
        "--metric",
        choices=["cosine", "l2", "ip"],
        default=None,
        help="default: the models' recommended metric",
    )
    p.add_argument("--exact", action="store_true", help="brute-force search instead of HNSW")
    p.add_argument(
        "--if-not-exists",
        action="store_true",
        help="succeed when the store already exists with these models",
    )
    p.set_defaults(func=create_store)

    p = sub.add_parser("drop-store", parents=common, help="delete a store and all its entries")
    p.add_argument("name")
    p.add_argument("--missing-ok", action="store_true", help="succeed when it does not exist")
    p.add_argument(
        "--service",
        choices=["ai", "db"],
        default="ai",
        help="db also drops stores created without models",
    )
    p.set_defaults(func=drop_store)

    p = sub.add_parser(
        "search",
        parents=with_json,
        help="search a store with text or an image",
        description="Embed the query with the store's query model and print the k most similar "
        'entries. Examples: nachbar search "a photo of a dog" --store photos -k 3; '
        'nachbar search --image dog.jpg --store photos; nachbar search "rust" --store docs '
        "--filter 'year >= 2020 and lang = \"en\"' --rerank stsb-minilm-l6-cross-encoder",
    )
    p.add_argument("query", nargs="?", help="query text (or use --image)")
    p.add_argument("--image", type=Path, metavar="PATH", help="query with an image file")
    p.add_argument("--store", required=True)
    p.add_argument("-k", type=int, default=5, help="how many results")
    p.add_argument(
        "--filter",
        metavar="JSON|EXPR",
        help='metadata filter: JSON like {"year": {"gte": 2020}} or an expression '
        'like year >= 2020 and kind = "photo"',
    )
    p.add_argument("--rerank", metavar="MODEL", help="rerank candidates with this cross-encoder")
    p.add_argument(
        "--rerank-field",
        metavar="FIELD",
        help="rerank on this metadata field instead of the stored original text",
    )
    p.add_argument(
        "--candidates",
        type=int,
        default=0,
        metavar="N",
        help="how many vector hits to rerank (default max(k, 20))",
    )
    p.add_argument(
        "--query-model",
        default="",
        metavar="MODEL",
        help="embed the query with this model instead of the store's query model; "
        "it must share the store's embedding space (e.g. an image model of a text "
        "store's space, or an int8 twin)",
    )
    p.add_argument(
        "--truncate",
        action="store_true",
        help="cut a query longer than the model's limit instead of failing",
    )
    p.set_defaults(func=search)

    p = sub.add_parser(
        "embed",
        parents=with_json,
        help="embed texts or images with a model",
        description="Print each input's vector dimension and first values (all with --json).",
    )
    p.add_argument("texts", nargs="*", metavar="TEXT")
    p.add_argument(
        "--image",
        type=Path,
        action="append",
        default=[],
        metavar="PATH",
        help="an image to embed; repeatable",
    )
    p.add_argument("--model", required=True)
    p.add_argument(
        "--truncate",
        action="store_true",
        help="cut texts longer than the model's limit instead of failing",
    )
    p.set_defaults(func=embed)

    p = sub.add_parser(
        "rerank",
        parents=with_json,
        help="score documents against a query with a cross-encoder",
    )
    p.add_argument("query")
    p.add_argument("documents", nargs="+", metavar="DOC")
    p.add_argument("--model", required=True, help="a cross-encoder (see `nachbar models list`)")
    p.add_argument("--top-k", type=int, default=0, help="only the best K (default all)")
    p.add_argument("--sigmoid", action="store_true", help="map scores to [0, 1]")
    p.set_defaults(func=rerank)

    p = sub.add_parser("info", parents=with_json, help="versions and state of the services")
    p.add_argument("--service", choices=["db", "ai", "all"], default="all")
    p.set_defaults(func=info)

    p = sub.add_parser("get", parents=with_json, help="fetch entries by id")
    p.add_argument("store")
    p.add_argument("ids", nargs="+", metavar="ID")
    p.add_argument("--service", choices=["ai", "db"], default="ai")
    p.add_argument("--vectors", action="store_true", help="include vectors (db service only)")
    p.set_defaults(func=get)

    p = sub.add_parser("delete", parents=with_json, help="delete entries by id")
    p.add_argument("store")
    p.add_argument("ids", nargs="+", metavar="ID")
    p.add_argument("--service", choices=["ai", "db"], default="ai")
    p.set_defaults(func=delete)


def filter_arg(raw: str | None) -> Filter | None:
    if raw is None:
        return None
    try:
        return parse_filter(raw)
    except FilterSyntaxError as error:
        raise CliError(f"--filter: {error}", exit_code=2) from None


def ping(ctx: CliContext, args: argparse.Namespace) -> int:
    services = ["db", "ai"] if args.service == "all" else [args.service]
    credentials = ctx.credentials()
    reports = {s: check_health(ctx.address(s), ctx.timeout, "", credentials) for s in services}
    if args.json:
        render.print_json(
            ctx.out,
            {
                s: {"address": r.address, "status": r.health.value, "detail": r.detail}
                for s, r in reports.items()
            },
        )
    else:
        for service, report in reports.items():
            line = f"{SERVICE_NAMES[service]} at {report.address}: {report.health.value}"
            if report.serving:
                ctx.out.print(line, highlight=False)
            else:
                detail = f" ({report.detail})" if report.detail else ""
                ctx.err.print(escape(line + detail), highlight=False)
    return 0 if all(r.serving for r in reports.values()) else 1


def stores(ctx: CliContext, args: argparse.Namespace) -> int:
    if args.service == "db":
        with ctx.db() as db:
            db_stores = db.list_stores()
        if args.json:
            render.print_json(ctx.out, db_stores)
        else:
            ctx.out.print(render.db_stores_table(db_stores))
        return 0
    with ctx.ai() as ai:
        ai_stores = ai.list_stores()
    if args.json:
        render.print_json(ctx.out, ai_stores)
    else:
        ctx.out.print(render.ai_stores_table(ai_stores))
    return 0


def create_store(ctx: CliContext, args: argparse.Namespace) -> int:
    with ctx.ai() as ai:
        info = ai.create_store(
            args.name,
            query_model=args.query_model,
            index_model=args.index_model,
            store_original=not args.no_store_original,
            predicate_indexes=args.pred_index,
            index=Exact() if args.exact else None,
            metric=args.metric,
            if_not_exists=args.if_not_exists,
        )
    if args.json:
        render.print_json(ctx.out, info)
    else:
        ctx.out.print(
            f"store {escape(info.name)}: {info.db_store.dimension}-d, "
            f"{info.db_store.metric.value}, query model {escape(info.query_model)}, "
            f"index model {escape(info.index_model)}, "
            f"originals {'kept' if info.store_original else 'not kept'}",
            highlight=False,
        )
    return 0


def drop_store(ctx: CliContext, args: argparse.Namespace) -> int:
    if args.service == "db":
        with ctx.db() as db:
            dropped = db.drop_store(args.name, missing_ok=args.missing_ok)
    else:
        with ctx.ai() as ai:
            dropped = ai.drop_store(args.name, missing_ok=args.missing_ok)
    message = "dropped store" if dropped else "no such store (nothing to drop):"
    ctx.out.print(f"{message} {escape(args.name)}", highlight=False)
    return 0


def search(ctx: CliContext, args: argparse.Namespace) -> int:
    if (args.query is None) == (args.image is None):
        raise CliError("give either query text or --image PATH (not both)", exit_code=2)
    if args.k < 1:
        raise CliError("-k must be at least 1", exit_code=2)
    if (args.rerank_field or args.candidates) and not args.rerank:
        raise CliError("--rerank-field and --candidates need --rerank MODEL", exit_code=2)
    query: str | Image = args.query if args.image is None else _read_image(args.image)
    with ctx.ai() as ai:
        result = ai.get_sim_n(
            args.store,
            query,
            args.k,
            filter=filter_arg(args.filter),
            truncation="truncate" if args.truncate else "error",
            rerank=args.rerank,
            rerank_candidates=args.candidates,
            rerank_field=args.rerank_field,
            query_model=args.query_model,
        )
    if args.json:
        render.print_json(ctx.out, result)
    elif not result.matches:
        ctx.out.print(f"no matches in {escape(args.store)}", highlight=False)
    else:
        ctx.out.print(render.ai_matches_table(result.matches))
    return 0


def _read_image(path: Path) -> Image:
    try:
        return Image.from_path(path)
    except OSError as error:
        raise CliError(f"cannot read image {path}: {error.strerror or error}") from None


def embed(ctx: CliContext, args: argparse.Namespace) -> int:
    inputs: list[str | Image] = [*args.texts, *(_read_image(p) for p in args.image)]
    if not inputs:
        raise CliError("nothing to embed: give TEXT arguments or --image PATH", exit_code=2)
    labels = [*args.texts, *(str(p) for p in args.image)]
    with ctx.ai() as ai:
        vectors = ai.embed(args.model, inputs, truncation="truncate" if args.truncate else "error")
    if args.json:
        render.print_json(
            ctx.out,
            {
                "model": args.model,
                "dimension": len(vectors[0]) if vectors else 0,
                "embeddings": [
                    {"input": label, "vector": v} for label, v in zip(labels, vectors, strict=True)
                ],
            },
        )
        return 0
    for label, vector in zip(labels, vectors, strict=True):
        ctx.out.print(
            f"{escape(render.shorten(label))}: dimension {len(vector)}\n  "
            f"{render.format_vector(vector, EMBED_PREVIEW_VALUES)}",
            highlight=False,
        )
    return 0


def rerank(ctx: CliContext, args: argparse.Namespace) -> int:
    with ctx.ai() as ai:
        results = ai.rerank(
            args.model, args.query, args.documents, top_k=args.top_k, sigmoid=args.sigmoid
        )
    if args.json:
        render.print_json(
            ctx.out,
            [
                {"index": r.index, "score": r.score, "document": args.documents[r.index]}
                for r in results
            ],
        )
        return 0
    table = render.new_table("rank", "index", "score", "document")
    for rank, r in enumerate(results, 1):
        table.add_row(
            str(rank),
            str(r.index),
            f"{r.score:.4f}",
            escape(render.shorten(args.documents[r.index])),
        )
    ctx.out.print(table)
    return 0


def info(ctx: CliContext, args: argparse.Namespace) -> int:
    services = ["db", "ai"] if args.service == "all" else [args.service]
    found: dict[str, Any] = {}
    failed = False
    for service in services:
        try:
            if service == "db":
                with ctx.db() as db:
                    found[service] = db.info()
            else:
                with ctx.ai() as ai:
                    found[service] = ai.info()
        except NachbarError as error:
            failed = True
            found[service] = {"address": ctx.address(service), "error": str(error)}
            if not args.json:
                ctx.err.print(f"{SERVICE_NAMES[service]}: {escape(str(error))}", highlight=False)
    if args.json:
        render.print_json(ctx.out, found)
    else:
        for service, value in found.items():
            if isinstance(value, dict):
                continue
            rows = {"address": ctx.address(service), **render.jsonable(value)}
            ctx.out.print(render.key_value_table(rows, title=SERVICE_NAMES[service]))
    return 1 if failed else 0


def get(ctx: CliContext, args: argparse.Namespace) -> int:
    if args.vectors and args.service != "db":
        raise CliError(
            "--vectors needs --service db (nachbar-ai does not return vectors)", exit_code=2
        )
    if args.service == "db":
        with ctx.db() as db:
            db_result = db.get_key(args.store, args.ids, include_vectors=args.vectors)
        entries_json: Any = db_result
        table = render.db_entries_table(db_result.entries)
        missing, count = db_result.missing_ids, len(db_result.entries)
    else:
        with ctx.ai() as ai:
            ai_result = ai.get_key(args.store, args.ids)
        entries_json = ai_result
        table = render.ai_entries_table(ai_result.entries)
        missing, count = ai_result.missing_ids, len(ai_result.entries)
    if args.json:
        render.print_json(ctx.out, entries_json)
    elif count:
        ctx.out.print(table)
    if missing:
        ctx.err.print(
            f"not found in {escape(args.store)}: {escape(', '.join(missing))}", highlight=False
        )
        return 1
    return 0


def delete(ctx: CliContext, args: argparse.Namespace) -> int:
    if args.service == "db":
        with ctx.db() as db:
            deleted = db.delete_keys(args.store, args.ids)
    else:
        with ctx.ai() as ai:
            deleted = ai.delete_keys(args.store, args.ids)
    if args.json:
        render.print_json(ctx.out, {"deleted": deleted, "requested": len(args.ids)})
    else:
        ctx.out.print(
            f"deleted {deleted} of {len(args.ids)} from {escape(args.store)}", highlight=False
        )
    return 0
