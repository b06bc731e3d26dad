"""The data commands of `nachbar`, defined once: this table feeds both the command line (one
argparse subcommand each) and the interactive shell (nachbar.cli.shell_commands).

A command lists its arguments (some belong to one service only), the services that have it,
and one `run` written against the service adapters (nachbar.cli.adapters). On the command line
`--service` picks the service; in the shell, the current one (`use db`) or a prefix (`db CMD`).
Every command answers to its name (as the RPC, snake_case), the kebab-case spelling and its
aliases, and takes `--json`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from nachbar.cli import evaluate, render
from nachbar.cli.adapters import (
    LABELS,
    SERVICES,
    AIAdapter,
    DBAdapter,
    ServiceAdapter,
    Shown,
    filter_arg,
    image_arg,
    truncation,
)
from nachbar.cli.context import CliContext, UsageError, explain_unavailable
from nachbar.cli.health import check_health
from nachbar.client import (
    AIClient,
    DBClient,
    Hybrid,
    NachbarError,
    PermissionDenied,
    Unauthenticated,
)

EMBED_PREVIEW_VALUES = 8


# -- the shape of a command -----------------------------------------------------------------------


@dataclass(frozen=True)
class Arg:
    flags: tuple[str, ...]
    options: dict[str, Any]
    # The services this argument applies to.
    services: tuple[str, ...] = SERVICES

    @property
    def positional(self) -> bool:
        return not self.flags[0].startswith("-")

    @property
    def dest(self) -> str:
        dest: str = self.options.get("dest") or self.flags[0].lstrip("-").replace("-", "_")
        return dest


def arg(*flags: str, only: str | None = None, **options: Any) -> Arg:
    """An argparse argument; `only` names the one service it applies to."""
    return Arg(flags, options, (only,) if only else SERVICES)


class Session(Protocol):
    """What a command needs from where it runs: a client per service, and their addresses."""

    @property
    def timeout(self) -> float: ...

    def adapter(self, service: str) -> ServiceAdapter: ...

    def address(self, service: str) -> str: ...

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS for raw channels (health checks); None for plaintext."""
        ...


@dataclass
class Invocation:
    """One run of a command: its arguments, the services it runs for, where it prints."""

    services: tuple[str, ...]
    args: argparse.Namespace
    out: Console
    err: Console
    session: Session

    @property
    def service(self) -> str:
        return self.services[0]

    @property
    def adapter(self) -> ServiceAdapter:
        return self.session.adapter(self.service)

    @property
    def json(self) -> bool:
        return bool(getattr(self.args, "json", False))

    def say(self, text: str) -> None:
        if text:
            self.out.print(escape(text), highlight=False)

    def warn(self, text: str) -> None:
        self.err.print(escape(text), highlight=False)

    def show(self, shown: Shown) -> None:
        if self.json:
            render.print_json(self.out, shown.value)
            return
        if shown.table is not None:
            self.out.print(shown.table)
        for line in shown.lines:
            self.say(line)

    def report(self, value: Any, line: str) -> int:
        """Print a result as JSON or as one line; success."""
        self.show(Shown(value, lines=(line,)))
        return 0


Run = Callable[[Invocation], int]


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    services: tuple[str, ...]
    arguments: tuple[Arg, ...]
    run: Run
    # An example per service, for `help CMD` in the shell.
    examples: dict[str, str]
    aliases: tuple[str, ...] = ()
    description: str = ""
    # Command line only: the --service default; "all" runs the command for every service.
    default_service: str = "ai"

    @property
    def names(self) -> tuple[str, ...]:
        kebab = self.name.replace("_", "-")
        return tuple(dict.fromkeys((self.name, kebab, *self.aliases)))

    @property
    def takes_store(self) -> bool:
        """Whether the first positional argument is a store name (for completion)."""
        first = next((a for a in self.arguments if a.positional), None)
        return first is not None and first.dest == "store"

    def arguments_for(self, service: str) -> list[Arg]:
        return [a for a in self.arguments if service in a.services]

    def configure(self, parser: argparse.ArgumentParser, service: str | None = None) -> None:
        """Add the arguments of `service`, or (None) of every service for the command line,
        where requirements of one service are checked after parsing (see `check_service`)."""
        for argument in self.arguments if service is None else self.arguments_for(service):
            options = dict(argument.options)
            if service is None and argument.services != self.services:
                options.pop("required", None)
            parser.add_argument(*argument.flags, **options)

    def check_service(self, service: str, args: argparse.Namespace) -> None:
        """Refuse options of another service, and missing options this one requires."""
        for argument in self.arguments:
            value = getattr(args, argument.dest, None)
            if service not in argument.services:
                if value != argument.options.get("default") and value not in (None, False, []):
                    raise UsageError(
                        f"{argument.flags[0]} needs --service {'/'.join(argument.services)}"
                    )
            elif argument.options.get("required") and value is None:
                raise UsageError(
                    f"the following arguments are required with --service {service}: "
                    f"{'/'.join(argument.flags)}"
                )


# -- the commands ---------------------------------------------------------------------------------


def _ping(inv: Invocation) -> int:
    reports = {}
    for service in inv.services:
        address = inv.session.address(service)
        report = check_health(address, inv.session.timeout, "", inv.session.credentials())
        entry: dict[str, Any] = {
            "address": address,
            "status": report.health.value,
            "detail": report.detail,
        }
        refused = ""
        if report.serving:
            started = time.perf_counter()
            try:
                with explain_unavailable(service, address):
                    inv.session.adapter(service).ping()
                entry["ping_ms"] = round((time.perf_counter() - started) * 1000, 3)
            except (Unauthenticated, PermissionDenied) as error:
                # Health checks need no key (orchestrators probe them); Ping does.
                refused = f"Ping not timed: {error.code.name}, it needs an API key (--api-key)"
                entry["ping_ms"] = None
        reports[service] = entry
        if inv.json:
            continue
        line = f"{LABELS[service]} at {address}: {report.health.value}"
        if refused:
            inv.say(f"{line} ({refused})")
        elif report.serving:
            inv.say(f"{line} (Ping {entry['ping_ms']:.1f} ms)")
        else:
            inv.warn(line + (f" ({report.detail})" if report.detail else ""))
    if inv.json:
        render.print_json(inv.out, reports)
    return 0 if all(r["status"] == "SERVING" for r in reports.values()) else 1


def _info(inv: Invocation) -> int:
    found: dict[str, Any] = {}
    failed = False
    for service in inv.services:
        address = inv.session.address(service)
        try:
            with explain_unavailable(service, address):
                found[service] = inv.session.adapter(service).info()
        except NachbarError as error:
            failed = True
            found[service] = {"address": address, "error": str(error)}
            if not inv.json:
                inv.warn(f"{LABELS[service]}: {error}")
            continue
        if not inv.json:
            rows = {"address": address, **render.jsonable(found[service])}
            inv.out.print(render.key_value_table(rows, title=LABELS[service]))
    if inv.json:
        render.print_json(inv.out, found)
    return 1 if failed else 0


def _list_stores(inv: Invocation) -> int:
    inv.show(inv.adapter.list_stores())
    return 0


def _get_store(inv: Invocation) -> int:
    inv.show(inv.adapter.get_store(inv.args.store))
    return 0


def _create_store(inv: Invocation) -> int:
    inv.show(inv.adapter.create_store(inv.args))
    return 0


def _drop_store(inv: Invocation) -> int:
    store = inv.args.store
    dropped = inv.adapter.drop_store(store, inv.args.missing_ok)
    line = f"dropped {store}" if dropped else f"no store {store}; nothing dropped"
    return inv.report({"dropped": dropped}, line)


def _upsert(inv: Invocation) -> int:
    inv.show(inv.adapter.upsert(inv.args))
    return 0


def _get_key(inv: Invocation) -> int:
    shown, missing = inv.adapter.get_key(inv.args)
    if inv.json or len(missing) < len(inv.args.ids):
        inv.show(shown)
    if missing:
        inv.warn(f"not found in {inv.args.store}: {', '.join(missing)}")
        return 1
    return 0


def _get_by_predicate(inv: Invocation) -> int:
    shown, token = inv.adapter.get_by_predicate(inv.args)
    inv.show(shown)
    if token and not inv.json:
        inv.say(f"more: add --page-token {token}")
    return 0


def _get_sim_n(inv: Invocation) -> int:
    inv.show(inv.adapter.search(inv.args))
    return 0


def _delete_keys(inv: Invocation) -> int:
    args = inv.args
    deleted = inv.adapter.delete_keys(args.store, args.ids)
    line = f"deleted {deleted} of {len(args.ids)} from {args.store}"
    return inv.report({"deleted": deleted, "requested": len(args.ids)}, line)


def _delete_by_predicate(inv: Invocation) -> int:
    filter_ = filter_arg(inv.args.filter)
    assert filter_ is not None  # the argument is required
    deleted = inv.adapter.delete_by_predicate(inv.args.store, filter_)
    return inv.report({"deleted": deleted}, f"deleted {deleted} from {inv.args.store}")


def _db(inv: Invocation) -> DBClient:
    adapter = inv.adapter
    assert isinstance(adapter, DBAdapter)  # the command is nachbar-db's alone
    return adapter.client


def _ai(inv: Invocation) -> AIClient:
    adapter = inv.adapter
    assert isinstance(adapter, AIAdapter)  # the command is nachbar-ai's alone
    return adapter.client


def _create_pred_index(inv: Invocation) -> int:
    created = _db(inv).create_pred_index(inv.args.store, inv.args.fields)
    return inv.report({"created": created}, f"created {created} predicate index(es)")


def _drop_pred_index(inv: Invocation) -> int:
    args = inv.args
    dropped = _db(inv).drop_pred_index(args.store, args.fields, missing_ok=args.missing_ok)
    return inv.report({"dropped": dropped}, f"dropped {dropped} predicate index(es)")


def _create_keyword_index(inv: Invocation) -> int:
    result = _db(inv).create_keyword_index(inv.args.store, inv.args.fields)
    line = (
        f"keyword index on {', '.join(inv.args.fields)}: {result.indexed} entries"
        if result.created
        else f"{inv.args.store} has that keyword index already ({result.indexed} entries)"
    )
    return inv.report({"created": result.created, "indexed": result.indexed}, line)


def _drop_keyword_index(inv: Invocation) -> int:
    dropped = _db(inv).drop_keyword_index(inv.args.store, missing_ok=inv.args.missing_ok)
    line = "dropped the keyword index" if dropped else "no keyword index; nothing dropped"
    return inv.report({"dropped": dropped}, line)


def _embed(inv: Invocation) -> int:
    args = inv.args
    images: list[str] = args.image
    inputs = [*args.texts, *(image_arg(p) for p in images)]
    if not inputs:
        raise UsageError("nothing to embed: give TEXT arguments or --image PATH")
    labels = [*args.texts, *(str(p) for p in images)]
    vectors = _ai(inv).embed(args.model, inputs, truncation=truncation(args))
    if inv.json:
        render.print_json(
            inv.out,
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
        inv.say(
            f"{render.shorten(label)}: dimension {len(vector)}\n  "
            f"{render.format_vector(vector, EMBED_PREVIEW_VALUES)}"
        )
    return 0


def _rerank(inv: Invocation) -> int:
    args = inv.args
    results = _ai(inv).rerank(
        args.model,
        args.query,
        args.documents,
        top_k=args.top_k,
        sigmoid=args.sigmoid,
        truncation=truncation(args),
    )
    value = [
        {"index": r.index, "score": r.score, "document": args.documents[r.index]} for r in results
    ]
    table = render.new_table("rank", "index", "score", "document")
    for rank, r in enumerate(results, 1):
        table.add_row(
            str(rank),
            str(r.index),
            f"{r.score:.4f}",
            escape(render.shorten(args.documents[r.index])),
        )
    inv.show(Shown(value, table))
    return 0


def _eval(inv: Invocation) -> int:
    args = inv.args
    if args.k < 1:
        raise UsageError(f"-k must be at least 1 (got {args.k})")
    if (args.candidates or args.fusion != "none") and not args.rerank:
        raise UsageError("--candidates and --fusion need --rerank MODEL")
    if args.hybrid and args.keyword_only:
        raise UsageError("choose --hybrid or --keyword-only, not both")
    hybrid = Hybrid(args.hybrid) if args.hybrid else None
    queries = evaluate.read_queries(args.queries)
    qrels = evaluate.read_qrels(args.qrels)
    asked = evaluate.judged(queries, qrels)
    client = _ai(inv)

    def search(text: str, count: int) -> list[str]:
        found = client.get_sim_n(
            args.store,
            text,
            count,
            truncation=truncation(args),
            rerank=args.rerank,
            rerank_candidates=args.candidates,
            rerank_fusion=args.fusion,
            hybrid=hybrid,
            keyword_only=args.keyword_only,
        )
        return [match.id for match in found.matches]

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=inv.err,
        transient=True,
    ) as progress:
        task = progress.add_task(f"evaluating {args.store}", total=len(asked))

        def each_query() -> Iterator[tuple[str, str]]:
            for query_id in asked:
                yield query_id, queries[query_id]
                progress.advance(task)

        scores = evaluate.evaluate(each_query(), qrels, args.k, search, time.perf_counter)
    retrieval = "keyword" if args.keyword_only else f"hybrid-{args.hybrid}" if hybrid else "dense"
    setup = {
        "store": args.store,
        "retrieval": retrieval,
        "rerank": args.rerank or "",
        "fusion": args.fusion,
    }
    value = {**setup, **scores.as_dict()}
    rows = {name: f"{v:.4f}" for name, v in scores.as_dict().items() if "@" in name}
    table = render.key_value_table(rows, title=f"{args.store}: {scores.queries} queries")
    line = f"{1000 * scores.seconds / scores.queries:.1f} ms per query"
    inv.show(Shown(value, table, (line,)))
    return 0


def _list_models(inv: Invocation) -> int:
    models = _ai(inv).list_models()
    inv.show(Shown(models, render.models_table(models)))
    return 0


STORE = arg("store", metavar="STORE", help="store name")
FILTER_HELP = 'JSON like {"year": {"gte": 2020}} or an expression like year >= 2020 and kind = "x"'
TRUNCATE = arg(
    "--truncate",
    only="ai",
    action="store_true",
    help="cut text longer than the model's limit instead of failing",
)
VECTORS = arg("--vectors", only="db", action="store_true", help="include vectors")
MISSING_OK = arg("--missing-ok", action="store_true", help="succeed when there is nothing to drop")

COMMANDS: tuple[Command, ...] = (
    Command(
        "ping",
        "health-check the services (exit 0 only when SERVING)",
        SERVICES,
        (),
        _ping,
        {"ai": "ping", "db": "ping"},
        description="Ask grpc.health.v1 whether each service is SERVING, then time a Ping RPC. "
        "Exit code 0 only when every service asked is serving; compose health checks run this.",
        default_service="all",
    ),
    Command(
        "info",
        "version and state of the services",
        SERVICES,
        (),
        _info,
        {"ai": "info", "db": "info"},
        default_service="all",
    ),
    Command(
        "list_stores",
        "list stores",
        SERVICES,
        (),
        _list_stores,
        {"ai": "list_stores", "db": "list_stores"},
        aliases=("stores",),
        description="A table of stores: name, count, dimension, metric, models (nachbar-ai, "
        "stores with models) or index and size (nachbar-db, every store).",
    ),
    Command(
        "get_store",
        "one store's details",
        SERVICES,
        (STORE,),
        _get_store,
        {"ai": "get_store docs", "db": "get_store vecs"},
    ),
    Command(
        "create_store",
        "create a store (nachbar-ai: bound to embedding models; nachbar-db: for your vectors)",
        SERVICES,
        (
            STORE,
            arg("--query-model", only="ai", required=True, metavar="MODEL"),
            arg(
                "--index-model",
                only="ai",
                default="",
                metavar="MODEL",
                help="embeds the stored items (default: the query model)",
            ),
            arg(
                "--no-store-original",
                only="ai",
                action="store_true",
                help="do not keep each input's text or image bytes (saves space; no reranking "
                "on original text)",
            ),
            arg("--dim", only="db", type=int, required=True, help="vector dimension"),
            arg(
                "--metric",
                choices=["cosine", "l2", "ip"],
                default=None,
                help="default: cosine (nachbar-ai: the models' recommended metric)",
            ),
            arg("--exact", action="store_true", help="brute-force search instead of HNSW"),
            arg("--m", only="db", type=int, default=0, help="HNSW M (0: server default)"),
            arg("--ef-construction", only="db", type=int, default=0),
            arg("--ef-search", only="db", type=int, default=0),
            arg(
                "--pred-index",
                nargs="+",
                default=[],
                metavar="FIELD",
                help="metadata fields to index for fast filters",
            ),
            arg(
                "--keyword-index",
                nargs="*",
                default=None,
                metavar="FIELD",
                help="a keyword (BM25) index for hybrid search over these metadata text fields "
                "(nachbar-ai: no FIELD indexes the stored original text)",
            ),
            arg(
                "--if-not-exists",
                action="store_true",
                help="succeed when the store already exists with these settings",
            ),
        ),
        _create_store,
        {
            "ai": "create_store docs --query-model all-minilm-l6-v2",
            "db": "create_store vecs --dim 3 --metric cosine --pred-index lang",
        },
        description="On nachbar-ai, queries are embedded with --query-model and stored items "
        "with --index-model; both must share one embedding space (see `nachbar models list`).",
    ),
    Command(
        "drop_store",
        "delete a store and all its entries",
        SERVICES,
        (STORE, MISSING_OK),
        _drop_store,
        {"ai": "drop_store docs", "db": "drop_store vecs --missing-ok"},
        description="nachbar-ai drops only stores it created; --service db drops any store.",
    ),
    Command(
        "upsert",
        "insert or update one entry (nachbar-ai: a text or image; nachbar-db: a vector)",
        SERVICES,
        (
            STORE,
            arg("input", nargs="?", metavar="INPUT", help="text (ai) or a JSON vector (db)"),
            arg("--image", only="ai", metavar="PATH", help="upsert this image instead of text"),
            arg("--id", help="entry id (nachbar-ai default: a hash of the content)"),
            arg("--metadata", "--meta", help="JSON object"),
            TRUNCATE,
        ),
        _upsert,
        {
            "ai": 'upsert docs "a cat on a mat" --id cat1 --meta \'{"lang": "en"}\'',
            "db": "upsert vecs '[1, 0, 0]' --id a --meta '{\"lang\": \"en\"}'",
        },
    ),
    Command(
        "get_key",
        "fetch entries by id",
        SERVICES,
        (STORE, arg("ids", nargs="+", metavar="ID"), VECTORS),
        _get_key,
        {"ai": "get_key docs cat1 cat2", "db": "get_key vecs a b --vectors"},
        aliases=("get",),
    ),
    Command(
        "get_by_predicate",
        "entries matching a filter, paged",
        SERVICES,
        (
            STORE,
            arg("filter", nargs="?", help=f"{FILTER_HELP}; none: every entry"),
            arg("--limit", type=int, default=20),
            arg("--page-token", default=""),
            VECTORS,
        ),
        _get_by_predicate,
        {
            "ai": "get_by_predicate docs 'lang = \"en\"' --limit 10",
            "db": 'get_by_predicate vecs \'{"lang": {"eq": "en"}}\'',
        },
    ),
    Command(
        "get_sim_n",
        "the k entries most similar to a text, an image or a vector",
        SERVICES,
        (
            arg("query", nargs="?", metavar="QUERY", help="text (ai) or a JSON vector (db)"),
            arg("--store", required=True),
            arg("--image", only="ai", metavar="PATH", help="query with an image file"),
            arg("-k", type=int, default=5, help="how many results"),
            arg("--filter", metavar="JSON|EXPR", help=f"metadata filter: {FILTER_HELP}"),
            arg("--mode", choices=["auto", "exact", "hnsw"], default="auto"),
            arg("--ef", type=int, default=0, help="HNSW ef for this query"),
            arg(
                "--rerank",
                only="ai",
                metavar="MODEL",
                help="rerank with this cross-encoder or late-interaction model",
            ),
            arg(
                "--fusion",
                only="ai",
                choices=["none", "rrf", "blend"],
                default="none",
                help="order reranked hits by the reranker alone (none) or fused with the "
                "similarities: reciprocal rank fusion (rrf) or a min-max score blend (blend)",
            ),
            arg(
                "--rerank-field",
                only="ai",
                metavar="FIELD",
                help="rerank on this metadata field instead of the stored original text",
            ),
            arg(
                "--candidates",
                only="ai",
                type=int,
                default=0,
                metavar="N",
                help="how many vector hits to rerank (default max(k, 20))",
            ),
            arg(
                "--query-model",
                only="ai",
                default="",
                metavar="MODEL",
                help="embed the query with this model instead of the store's query model; it "
                "must share the store's embedding space (e.g. an image model of a text store's "
                "space, or an int8 twin)",
            ),
            arg(
                "--adapter",
                only="ai",
                default="",
                metavar="NAME",
                help="search with the query vector mapped by this adapter of the store "
                "(`nachbar adapters list`)",
            ),
            arg(
                "--rescorer",
                only="ai",
                default="",
                metavar="NAME",
                help="rerank the top --candidates by this re-scorer of the store (stored "
                "vectors only: works for image stores queried with text)",
            ),
            arg(
                "--mmr",
                type=float,
                metavar="LAMBDA",
                help="diversify the results by maximal marginal relevance: 1 is a plain search, "
                "0 the most diverse (e.g. 0.5)",
            ),
            arg(
                "--mmr-candidates",
                type=int,
                default=0,
                metavar="N",
                help="the pool MMR picks from (default max(4k, 20), at most 1000)",
            ),
            arg(
                "--positive",
                action="append",
                metavar="ID",
                help="recommend by example: find entries like this stored entry (repeatable; "
                "with or without a query)",
            ),
            arg(
                "--negative",
                action="append",
                metavar="ID",
                help="recommend by example: steer away from this stored entry (repeatable)",
            ),
            arg(
                "--strategy",
                choices=["average_vector", "best_score"],
                default="average_vector",
                help="how examples combine: search for one average vector, or score each "
                "candidate by its best similarity to a positive against a negative",
            ),
            arg(
                "--recommend-candidates",
                type=int,
                default=0,
                metavar="N",
                help="best_score's pool per positive (default max(4k, 20), at most 1000)",
            ),
            arg(
                "--keywords",
                metavar="TEXT",
                help="hybrid search: these words on the store's keyword index too (nachbar-ai "
                "default with --hybrid: the query text)",
            ),
            arg(
                "--hybrid",
                choices=["blend", "rrf"],
                default=None,
                help="fuse vector and keyword (BM25) results by a min-max score blend (blend, "
                "the server's default) or reciprocal rank fusion (rrf)",
            ),
            arg(
                "--vector-weight",
                type=float,
                default=None,
                metavar="W",
                help="--hybrid blend: the vector side's share, 0 to 1 (default 0.5)",
            ),
            arg(
                "--keyword-only",
                action="store_true",
                help="search by keywords alone (BM25), no vector search",
            ),
            TRUNCATE,
            VECTORS,
        ),
        _get_sim_n,
        {
            "ai": "get_sim_n 'a photo of a dog' --store photos -k 3 --filter 'year >= 2020'",
            "db": "get_sim_n '[1, 0.1, 0]' --store vecs -k 2 --mode exact",
        },
        aliases=("search",),
        description="Embed the query with the store's query model (nachbar-ai) or take it as "
        "a vector (nachbar-db) and print the k most similar entries. Examples: nachbar search "
        '"a photo of a dog" --store photos -k 3; nachbar search --image dog.jpg --store photos; '
        'nachbar search "rust" --store docs --filter \'year >= 2020 and lang = "en"\' '
        "--rerank ms-marco-minilm-l12-cross-encoder-int8 --fusion blend; nachbar search "
        '"rust" --store docs --mmr 0.5; nachbar search --store docs --positive doc7 '
        "--negative doc9 --strategy best_score; "
        'nachbar search "apt pinning" --store docs --hybrid blend (needs a keyword index).',
    ),
    Command(
        "delete_keys",
        "delete entries by id",
        SERVICES,
        (STORE, arg("ids", nargs="+", metavar="ID")),
        _delete_keys,
        {"ai": "delete_keys docs cat1 cat2", "db": "delete_keys vecs a b"},
        aliases=("delete",),
    ),
    Command(
        "delete_by_predicate",
        "delete entries matching a filter",
        SERVICES,
        (STORE, arg("filter", help=f"{FILTER_HELP}, e.g. 'year < 2000'")),
        _delete_by_predicate,
        {"ai": "delete_by_predicate docs 'year < 2000'", "db": "delete_by_predicate vecs 'n > 3'"},
    ),
    Command(
        "create_pred_index",
        "index metadata fields for fast filters",
        ("db",),
        (STORE, arg("fields", nargs="+", metavar="FIELD")),
        _create_pred_index,
        {"db": "create_pred_index vecs lang year"},
        default_service="db",
    ),
    Command(
        "drop_pred_index",
        "drop predicate indexes",
        ("db",),
        (STORE, arg("fields", nargs="+", metavar="FIELD"), MISSING_OK),
        _drop_pred_index,
        {"db": "drop_pred_index vecs year"},
        default_service="db",
    ),
    Command(
        "create_keyword_index",
        "give a store a keyword (BM25) index over metadata text fields, for hybrid search",
        ("db",),
        (STORE, arg("fields", nargs="+", metavar="FIELD")),
        _create_keyword_index,
        {"db": "create_keyword_index docs _nachbar_text caption"},
        default_service="db",
        description="Indexes the string (and string-list) values of the fields, joined, with "
        "SQLite FTS5 (unicode61 tokenizer, diacritics removed, no stemming); entries already "
        "in the store are indexed at once. A nachbar-ai store keeps its original text in "
        "_nachbar_text. Embedded engine only.",
    ),
    Command(
        "drop_keyword_index",
        "drop a store's keyword index",
        ("db",),
        (STORE, MISSING_OK),
        _drop_keyword_index,
        {"db": "drop_keyword_index docs"},
        default_service="db",
    ),
    Command(
        "embed",
        "embed texts or images with a model",
        ("ai",),
        (
            arg("texts", nargs="*", metavar="TEXT"),
            arg(
                "--image",
                action="append",
                default=[],
                metavar="PATH",
                help="an image to embed; repeatable",
            ),
            arg("--model", required=True),
            TRUNCATE,
        ),
        _embed,
        {"ai": 'embed "hello world" --model all-minilm-l6-v2'},
        description="Print each input's vector dimension and first values (all with --json).",
    ),
    Command(
        "rerank",
        "score documents against a query with a reranker",
        ("ai",),
        (
            arg("query"),
            arg("documents", nargs="+", metavar="DOC"),
            arg(
                "--model",
                required=True,
                help="a cross-encoder or late-interaction model (see `nachbar models list`)",
            ),
            arg("--top-k", type=int, default=0, help="only the best K (default all)"),
            arg("--sigmoid", action="store_true", help="map cross-encoder scores to [0, 1]"),
            TRUNCATE,
        ),
        _rerank,
        {"ai": 'rerank "a cat" "a kitten" "a car" --model ms-marco-minilm-l12-cross-encoder-int8'},
    ),
    Command(
        "eval",
        "retrieval quality of a store on BEIR-format queries and judgments",
        ("ai",),
        (
            arg("--store", required=True),
            arg("--queries", type=Path, required=True, help="BEIR queries.jsonl"),
            arg("--qrels", type=Path, required=True, help="BEIR qrels.tsv"),
            arg("-k", "--k", type=int, default=10, help="the cutoff of recall (default 10)"),
            arg("--rerank", metavar="MODEL", help="rerank with this reranker"),
            arg(
                "--fusion",
                choices=["none", "rrf", "blend"],
                default="none",
                help="order reranked hits by the reranker alone or fused with the similarities",
            ),
            arg(
                "--candidates",
                type=int,
                default=0,
                metavar="N",
                help="how many vector hits to rerank (default max(k, 20))",
            ),
            arg(
                "--hybrid",
                choices=["blend", "rrf"],
                default=None,
                help="hybrid retrieval: the query text on the store's keyword index too, fused "
                "with the vector results",
            ),
            arg(
                "--keyword-only",
                action="store_true",
                help="keyword (BM25) retrieval alone, no vectors",
            ),
            TRUNCATE,
        ),
        _eval,
        {"ai": "eval --store docs --queries queries.jsonl --qrels qrels.tsv --rerank MODEL"},
        description="Ask every judged query of a BEIR queries.jsonl through GetSimN and print "
        f"recall@k, MRR@{evaluate.CUTOFF} and nDCG@{evaluate.CUTOFF} against the qrels.tsv "
        "(rows query-id, corpus-id, score; store entry ids are the corpus ids), with a "
        "progress bar. Compare dense, keyword (--keyword-only), hybrid (--hybrid blend|rrf) and "
        "reranked configurations on your own data (keyword and hybrid need a keyword index).",
    ),
    Command(
        "list_models",
        "models the service can serve",
        ("ai",),
        (),
        _list_models,
        {"ai": "list_models"},
    ),
)


def find(name: str) -> Command | None:
    """The command answering to `name` (its name, kebab-case spelling or an alias)."""
    for command in COMMANDS:
        if name in command.names:
            return command
    return None


# -- the command line -----------------------------------------------------------------------------


@dataclass
class CommandLineSession:
    """Clients opened on first use and closed when the command ends."""

    ctx: CliContext
    stack: ExitStack = field(default_factory=ExitStack)
    adapters: dict[str, ServiceAdapter] = field(default_factory=dict)

    @property
    def timeout(self) -> float:
        return self.ctx.timeout

    def address(self, service: str) -> str:
        return self.ctx.address(service)

    def credentials(self) -> grpc.ChannelCredentials | None:
        return self.ctx.credentials()

    def adapter(self, service: str) -> ServiceAdapter:
        if service not in self.adapters:
            if service == "db":
                db = self.stack.enter_context(self.ctx.db_client())
                self.adapters[service] = DBAdapter(db)
            else:
                ai = self.stack.enter_context(self.ctx.ai_client())
                self.adapters[service] = AIAdapter(ai)
        return self.adapters[service]


@contextmanager
def command_line_session(ctx: CliContext) -> Iterator[CommandLineSession]:
    session = CommandLineSession(ctx)
    with session.stack:
        yield session


def run_from_command_line(command: Command, ctx: CliContext, args: argparse.Namespace) -> int:
    chosen = getattr(args, "service", command.default_service)
    services = command.services if chosen == "all" else (chosen,)
    for service in services:
        command.check_service(service, args)
    with command_line_session(ctx) as session:
        invocation = Invocation(services, args, ctx.out, ctx.err, session)
        if len(services) > 1:
            return command.run(invocation)  # reports each service's failure itself
        with explain_unavailable(services[0], ctx.address(services[0])):
            return command.run(invocation)


def register(
    sub: argparse._SubParsersAction[Any],
    common: list[argparse.ArgumentParser],
    json_flag: argparse.ArgumentParser,
) -> None:
    """Add every command of the table to the `nachbar` parser."""
    for command in COMMANDS:
        parser = sub.add_parser(
            command.name,
            aliases=list(command.names[1:]),
            parents=[*common, json_flag],
            help=command.summary,
            description=command.description or command.summary,
        )
        command.configure(parser)
        if len(command.services) > 1:
            choices = [*command.services, *(["all"] if command.default_service == "all" else [])]
            parser.add_argument(
                "--service",
                choices=choices,
                default=command.default_service,
                help=f"which service to ask (default {command.default_service})",
            )

        def run(ctx: CliContext, args: argparse.Namespace, command: Command = command) -> int:
            return run_from_command_line(command, ctx, args)

        parser.set_defaults(func=run)
