"""The interactive shell's commands, parsing and completion, free of any terminal code.

A line is split with shlex; its first word names a command, the rest is parsed by that
command's argparse parser. Commands run against the current service (`use ai` / `use db`,
or a one-off `db CMD ...` / `ai CMD ...`); commands only one service has go to that service.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.markup import escape

from nachbar.cli import render
from nachbar.cli.context import CliContext, explain_unavailable
from nachbar.cli.filters import FilterSyntaxError, parse_filter
from nachbar.client import AIClient, DBClient, Exact, Hnsw, Image, Item, NachbarError
from nachbar.client.values import Filter, Metadata, metadata_to_proto

SERVICES = ("ai", "db")
MODEL_OPTIONS = frozenset({"--model", "--query-model", "--index-model", "--rerank"})
CACHE_SECONDS = 5.0
BUILTINS = {
    "help": "list commands, or explain one: help CMD",
    "use": "switch the service commands go to: use ai | use db",
    "exit": "leave the shell (also quit, Ctrl-D)",
    "quit": "leave the shell",
}


class ShellUsageError(Exception):
    """A command line that does not parse; the message includes the usage."""


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that raises instead of printing and exiting, so the shell survives."""

    def error(self, message: str) -> NoReturn:
        raise ShellUsageError(f"{message}\n{self.format_usage().rstrip()}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise ShellUsageError(message or "")


Handler = Callable[["Shell", argparse.Namespace], None]


@dataclass(frozen=True)
class ShellCommand:
    name: str
    service: str
    summary: str
    example: str
    configure: Callable[[argparse.ArgumentParser], None]
    handler: Handler
    # Whether the first positional argument is a store name (for completion).
    takes_store: bool = True

    def parser(self) -> argparse.ArgumentParser:
        parser = _ArgumentParser(prog=self.name, description=self.summary, add_help=False)
        self.configure(parser)
        return parser


# -- argument helpers ---------------------------------------------------------------------------


def _json_arg(raw: str, what: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as error:
        raise ShellUsageError(f"{what} is not valid JSON ({error.msg}): {raw}") from None


def _vector(raw: str) -> list[float]:
    value = _json_arg(raw, "the vector")
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        raise ShellUsageError(f"a vector is a JSON list of numbers, e.g. [0.1, 0.2], not {raw}")
    return [float(v) for v in value]


def _metadata(raw: str | None) -> Metadata:
    if raw is None:
        return {}
    value = _json_arg(raw, "the metadata")
    if not isinstance(value, dict):
        raise ShellUsageError(f'metadata is a JSON object, e.g. {{"lang": "en"}}, not {raw}')
    try:
        metadata_to_proto(value)
    except (TypeError, ValueError) as error:
        raise ShellUsageError(str(error)) from None
    return value


def _filter(raw: str | None) -> Filter | None:
    if raw is None:
        return None
    try:
        return parse_filter(raw)
    except FilterSyntaxError as error:
        raise ShellUsageError(str(error)) from None


def _image(path: str) -> Image:
    try:
        return Image.from_path(Path(path).expanduser())
    except OSError as error:
        raise ShellUsageError(f"cannot read image {path}: {error.strerror or error}") from None


def _store(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store")


# -- handlers shared by both services -----------------------------------------------------------


def _list_stores(s: Shell, a: argparse.Namespace) -> None:
    if s.service_of_call == "db":
        s.console.print(render.db_stores_table(s.db.list_stores()))
    else:
        s.console.print(render.ai_stores_table(s.ai.list_stores()))


def _get_store(s: Shell, a: argparse.Namespace) -> None:
    if s.service_of_call == "db":
        info = s.db.get_store(a.store)
        db_info = info
        extra: dict[str, Any] = {}
    else:
        ai_info = s.ai.get_store(a.store)
        db_info = ai_info.db_store
        extra = {
            "query model": ai_info.query_model,
            "index model": ai_info.index_model,
            "originals kept": ai_info.store_original,
        }
    rows = {
        "name": db_info.name,
        **extra,
        "count": db_info.count,
        "dimension": db_info.dimension,
        "metric": db_info.metric.value,
        "index": render.format_index(db_info.index),
        "predicate indexes": ", ".join(db_info.predicate_indexes) or "-",
        "size": render.format_bytes(db_info.bytes_used),
    }
    s.console.print(render.key_value_table(rows, title=f"store {db_info.name}"))


def _drop_store(s: Shell, a: argparse.Namespace) -> None:
    client: DBClient | AIClient = s.db if s.service_of_call == "db" else s.ai
    dropped = client.drop_store(a.store, missing_ok=a.missing_ok)
    s.say(f"dropped {a.store}" if dropped else f"no store {a.store}; nothing dropped")


def _get_key(s: Shell, a: argparse.Namespace) -> None:
    if s.service_of_call == "db":
        db_result = s.db.get_key(a.store, a.ids, include_vectors=a.vectors)
        entries, missing = len(db_result.entries), db_result.missing_ids
        s.console.print(render.db_entries_table(db_result.entries))
    else:
        ai_result = s.ai.get_key(a.store, a.ids)
        entries, missing = len(ai_result.entries), ai_result.missing_ids
        s.console.print(render.ai_entries_table(ai_result.entries))
    s.say(f"{entries} found" + (f"; missing: {', '.join(missing)}" if missing else ""))


def _get_by_predicate(s: Shell, a: argparse.Namespace) -> None:
    if s.service_of_call == "db":
        db_page = s.db.get_by_predicate(
            a.store,
            _filter(a.filter),
            limit=a.limit,
            page_token=a.page_token,
            include_vectors=a.vectors,
        )
        s.console.print(render.db_entries_table(db_page.entries))
        token = db_page.next_page_token
    else:
        ai_page = s.ai.get_by_predicate(
            a.store, _filter(a.filter), limit=a.limit, page_token=a.page_token
        )
        s.console.print(render.ai_entries_table(ai_page.entries))
        token = ai_page.next_page_token
    if token:
        s.say(f"more: add --page-token {token}")


def _delete_keys(s: Shell, a: argparse.Namespace) -> None:
    client: DBClient | AIClient = s.db if s.service_of_call == "db" else s.ai
    s.say(f"deleted {client.delete_keys(a.store, a.ids)} of {len(a.ids)}")


def _delete_by_predicate(s: Shell, a: argparse.Namespace) -> None:
    client: DBClient | AIClient = s.db if s.service_of_call == "db" else s.ai
    filter_ = _filter(a.filter)
    assert filter_ is not None
    s.say(f"deleted {client.delete_by_predicate(a.store, filter_)}")


def _info(s: Shell, a: argparse.Namespace) -> None:
    info: Any = s.db.info() if s.service_of_call == "db" else s.ai.info()
    rows = {"address": s.address(s.service_of_call), **render.jsonable(info)}
    s.console.print(render.key_value_table(rows, title=f"nachbar-{s.service_of_call}"))


def _ping(s: Shell, a: argparse.Namespace) -> None:
    started = time.perf_counter()
    if s.service_of_call == "db":
        s.db.ping()
    else:
        s.ai.ping()
    elapsed_ms = (time.perf_counter() - started) * 1000
    s.say(
        f"nachbar-{s.service_of_call} at {s.address(s.service_of_call)}: pong ({elapsed_ms:.1f} ms)"
    )


# -- db handlers --------------------------------------------------------------------------------


def _db_create_store(s: Shell, a: argparse.Namespace) -> None:
    index = Exact() if a.exact else Hnsw(a.m, a.ef_construction, a.ef_search)
    info = s.db.create_store(
        a.store,
        a.dim,
        metric=a.metric,
        index=index,
        predicate_indexes=a.pred_index,
        if_not_exists=a.if_not_exists,
    )
    s.say(
        f"store {info.name}: {info.dimension}-d, {info.metric.value}, "
        f"{render.format_index(info.index)}"
    )


def _db_upsert(s: Shell, a: argparse.Namespace) -> None:
    result = s.db.upsert(a.store, [(a.id, _vector(a.vector), _metadata(a.metadata))])
    s.say(f"inserted {result.inserted}, updated {result.updated}")


def _db_get_sim_n(s: Shell, a: argparse.Namespace) -> None:
    result = s.db.get_sim_n(
        a.store,
        _vector(a.vector),
        a.k,
        filter=_filter(a.filter),
        mode=a.mode,
        ef=a.ef,
        include_vectors=a.vectors,
    )
    s.console.print(render.db_matches_table(result.matches))
    s.say(f"plan: {result.plan}" if result.plan else "")


def _db_create_pred_index(s: Shell, a: argparse.Namespace) -> None:
    s.say(f"created {s.db.create_pred_index(a.store, a.fields)} predicate index(es)")


def _db_drop_pred_index(s: Shell, a: argparse.Namespace) -> None:
    dropped = s.db.drop_pred_index(a.store, a.fields, missing_ok=a.missing_ok)
    s.say(f"dropped {dropped} predicate index(es)")


# -- ai handlers --------------------------------------------------------------------------------


def _ai_create_store(s: Shell, a: argparse.Namespace) -> None:
    info = s.ai.create_store(
        a.store,
        query_model=a.query_model,
        index_model=a.index_model or "",
        store_original=not a.no_store_original,
        predicate_indexes=a.pred_index,
        index=Exact() if a.exact else None,
        metric=a.metric,
        if_not_exists=a.if_not_exists,
    )
    s.say(
        f"store {info.name}: {info.db_store.dimension}-d, query model {info.query_model}, "
        f"index model {info.index_model}"
    )


def _ai_upsert(s: Shell, a: argparse.Namespace) -> None:
    if (a.text is None) == (a.image is None):
        raise ShellUsageError("give TEXT or --image PATH (one of them)")
    value: str | Image = a.text if a.image is None else _image(a.image)
    result = s.ai.upsert(
        a.store,
        [Item(value, a.id or "", _metadata(a.metadata))],
        truncation="truncate" if a.truncate else "error",
    )
    s.say(f"inserted {result.inserted}, updated {result.updated}: {', '.join(result.ids)}")


def _ai_get_sim_n(s: Shell, a: argparse.Namespace) -> None:
    if (a.query is None) == (a.image is None):
        raise ShellUsageError("give QUERY text or --image PATH (one of them)")
    query: str | Image = a.query if a.image is None else _image(a.image)
    result = s.ai.get_sim_n(
        a.store,
        query,
        a.k,
        filter=_filter(a.filter),
        rerank=a.rerank,
        rerank_candidates=a.candidates,
        rerank_field=a.rerank_field,
        truncation="truncate" if a.truncate else "error",
        query_model=a.query_model,
    )
    if result.matches:
        s.console.print(render.ai_matches_table(result.matches))
    else:
        s.say("no matches")


def _ai_embed(s: Shell, a: argparse.Namespace) -> None:
    inputs: list[str | Image] = [*a.texts, *(_image(p) for p in a.image)]
    if not inputs:
        raise ShellUsageError("give TEXT arguments or --image PATH")
    labels = [*a.texts, *a.image]
    for label, vector in zip(labels, s.ai.embed(a.model, inputs), strict=True):
        s.say(f"{render.shorten(label)}: dimension {len(vector)} {render.format_vector(vector)}")


def _ai_rerank(s: Shell, a: argparse.Namespace) -> None:
    results = s.ai.rerank(a.model, a.query, a.documents, top_k=a.top_k)
    table = render.new_table("rank", "index", "score", "document")
    for rank, r in enumerate(results, 1):
        table.add_row(
            str(rank), str(r.index), f"{r.score:.4f}", escape(render.shorten(a.documents[r.index]))
        )
    s.console.print(table)


def _ai_list_models(s: Shell, a: argparse.Namespace) -> None:
    s.console.print(render.models_table(s.ai.list_models()))


# -- parsers ------------------------------------------------------------------------------------


def _nothing(parser: argparse.ArgumentParser) -> None:
    pass


def _store_and_ids(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store")
    parser.add_argument("ids", nargs="+", metavar="ID")


def _drop_store_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store")
    parser.add_argument("--missing-ok", action="store_true")


def _get_key_args(vectors: bool) -> Callable[[argparse.ArgumentParser], None]:
    def configure(parser: argparse.ArgumentParser) -> None:
        _store_and_ids(parser)
        if vectors:
            parser.add_argument("--vectors", action="store_true", help="include vectors")

    return configure


def _by_predicate_args(vectors: bool) -> Callable[[argparse.ArgumentParser], None]:
    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("store")
        parser.add_argument("filter", nargs="?", help="JSON or expression; none: every entry")
        parser.add_argument("--limit", type=int, default=20)
        parser.add_argument("--page-token", default="")
        if vectors:
            parser.add_argument("--vectors", action="store_true", help="include vectors")

    return configure


def _delete_by_predicate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store")
    parser.add_argument("filter", help="JSON or expression, e.g. 'year < 2000'")


def _db_create_store_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store")
    parser.add_argument("--dim", type=int, required=True, help="vector dimension")
    parser.add_argument("--metric", choices=["cosine", "l2", "ip"], default="cosine")
    parser.add_argument("--exact", action="store_true", help="brute force, no HNSW")
    parser.add_argument("--m", type=int, default=0, help="HNSW M (0: server default)")
    parser.add_argument("--ef-construction", type=int, default=0)
    parser.add_argument("--ef-search", type=int, default=0)
    parser.add_argument("--pred-index", nargs="+", default=[], metavar="FIELD")
    parser.add_argument("--if-not-exists", action="store_true")


def _db_upsert_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store")
    parser.add_argument("id")
    parser.add_argument("vector", help="JSON list of numbers")
    parser.add_argument("metadata", nargs="?", help="JSON object")


def _db_get_sim_n_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store")
    parser.add_argument("vector", help="JSON list of numbers")
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--filter", help="JSON or expression")
    parser.add_argument("--mode", choices=["auto", "exact", "hnsw"], default="auto")
    parser.add_argument("--ef", type=int, default=0, help="HNSW ef for this query")
    parser.add_argument("--vectors", action="store_true", help="include vectors")


def _fields_args(missing_ok: bool) -> Callable[[argparse.ArgumentParser], None]:
    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("store")
        parser.add_argument("fields", nargs="+", metavar="FIELD")
        if missing_ok:
            parser.add_argument("--missing-ok", action="store_true")

    return configure


def _ai_create_store_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store")
    parser.add_argument("--query-model", required=True)
    parser.add_argument("--index-model", default="")
    parser.add_argument("--no-store-original", action="store_true")
    parser.add_argument("--pred-index", nargs="+", default=[], metavar="FIELD")
    parser.add_argument("--metric", choices=["cosine", "l2", "ip"], default=None)
    parser.add_argument("--exact", action="store_true")
    parser.add_argument("--if-not-exists", action="store_true")


def _ai_upsert_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store")
    parser.add_argument("text", nargs="?")
    parser.add_argument("--image", metavar="PATH")
    parser.add_argument("--id", help="default: a hash of the content")
    parser.add_argument("--metadata", "--meta", help="JSON object")
    parser.add_argument("--truncate", action="store_true")


def _ai_get_sim_n_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store")
    parser.add_argument("query", nargs="?")
    parser.add_argument("--image", metavar="PATH")
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--filter", help="JSON or expression")
    parser.add_argument("--rerank", metavar="MODEL")
    parser.add_argument("--rerank-field", metavar="FIELD")
    parser.add_argument("--candidates", type=int, default=0)
    parser.add_argument("--truncate", action="store_true")
    parser.add_argument(
        "--query-model",
        default="",
        metavar="MODEL",
        help="embed the query with this model of the store's space instead",
    )


def _ai_embed_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("texts", nargs="*", metavar="TEXT")
    parser.add_argument("--image", action="append", default=[], metavar="PATH")
    parser.add_argument("--model", required=True)


def _ai_rerank_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query")
    parser.add_argument("documents", nargs="+", metavar="DOC")
    parser.add_argument("--model", required=True)
    parser.add_argument("--top-k", type=int, default=0)


def _both(
    name: str,
    summary: str,
    example: str,
    configure: Callable[[argparse.ArgumentParser], None],
    handler: Handler,
    takes_store: bool = True,
) -> list[ShellCommand]:
    return [
        ShellCommand(name, service, summary, example, configure, handler, takes_store)
        for service in SERVICES
    ]


COMMANDS: tuple[ShellCommand, ...] = (
    ShellCommand(
        "create_store",
        "ai",
        "create a store bound to embedding models",
        "create_store docs --query-model all-minilm-l6-v2",
        _ai_create_store_args,
        _ai_create_store,
    ),
    ShellCommand(
        "create_store",
        "db",
        "create a store for your own vectors",
        "create_store vecs --dim 3 --metric cosine --pred-index lang",
        _db_create_store_args,
        _db_create_store,
    ),
    *_both(
        "drop_store",
        "delete a store and its entries",
        "drop_store docs",
        _drop_store_args,
        _drop_store,
    ),
    *_both(
        "list_stores", "table of stores", "list_stores", _nothing, _list_stores, takes_store=False
    ),
    *_both("get_store", "one store's details", "get_store docs", _store, _get_store),
    ShellCommand(
        "upsert",
        "ai",
        "embed and insert (or update) one text or image",
        'upsert docs "a cat on a mat" --id cat1 --meta \'{"lang": "en"}\'',
        _ai_upsert_args,
        _ai_upsert,
    ),
    ShellCommand(
        "upsert",
        "db",
        "insert (or update) one vector with metadata",
        "upsert vecs a '[1, 0, 0]' '{\"lang\": \"en\"}'",
        _db_upsert_args,
        _db_upsert,
    ),
    ShellCommand(
        "get_key", "ai", "entries by id", "get_key docs cat1 cat2", _get_key_args(False), _get_key
    ),
    ShellCommand(
        "get_key",
        "db",
        "entries by id",
        "get_key vecs a b --vectors",
        _get_key_args(True),
        _get_key,
    ),
    ShellCommand(
        "get_by_predicate",
        "ai",
        "entries matching a filter, paged",
        "get_by_predicate docs 'lang = \"en\"' --limit 10",
        _by_predicate_args(False),
        _get_by_predicate,
    ),
    ShellCommand(
        "get_by_predicate",
        "db",
        "entries matching a filter, paged",
        'get_by_predicate vecs \'{"lang": {"eq": "en"}}\'',
        _by_predicate_args(True),
        _get_by_predicate,
    ),
    ShellCommand(
        "get_sim_n",
        "ai",
        "the k entries most similar to a text or image",
        'get_sim_n docs "cats" -k 3 --filter \'lang = "en"\'',
        _ai_get_sim_n_args,
        _ai_get_sim_n,
    ),
    ShellCommand(
        "search",
        "ai",
        "same as get_sim_n",
        'search photos "a dog" -k 3',
        _ai_get_sim_n_args,
        _ai_get_sim_n,
    ),
    ShellCommand(
        "get_sim_n",
        "db",
        "the k entries nearest to a vector",
        "get_sim_n vecs '[1, 0.1, 0]' -k 2 --mode exact",
        _db_get_sim_n_args,
        _db_get_sim_n,
    ),
    *_both(
        "delete_keys",
        "delete entries by id",
        "delete_keys docs cat1 cat2",
        _store_and_ids,
        _delete_keys,
    ),
    *_both(
        "delete_by_predicate",
        "delete entries matching a filter",
        "delete_by_predicate docs 'year < 2000'",
        _delete_by_predicate_args,
        _delete_by_predicate,
    ),
    ShellCommand(
        "create_pred_index",
        "db",
        "index metadata fields for fast filters",
        "create_pred_index vecs lang year",
        _fields_args(False),
        _db_create_pred_index,
    ),
    ShellCommand(
        "drop_pred_index",
        "db",
        "drop predicate indexes",
        "drop_pred_index vecs year",
        _fields_args(True),
        _db_drop_pred_index,
    ),
    ShellCommand(
        "embed",
        "ai",
        "vectors of texts or images, no store",
        'embed "hello world" --model all-minilm-l6-v2',
        _ai_embed_args,
        _ai_embed,
        takes_store=False,
    ),
    ShellCommand(
        "rerank",
        "ai",
        "score documents against a query with a cross-encoder",
        'rerank "a cat" "a kitten" "a car" --model stsb-minilm-l6-cross-encoder',
        _ai_rerank_args,
        _ai_rerank,
        takes_store=False,
    ),
    ShellCommand(
        "list_models",
        "ai",
        "models the service can serve",
        "list_models",
        _nothing,
        _ai_list_models,
        takes_store=False,
    ),
    *_both("info", "version and state of the service", "info", _nothing, _info, takes_store=False),
    *_both("ping", "check the service answers", "ping", _nothing, _ping, takes_store=False),
)


def command_names() -> list[str]:
    return sorted({c.name for c in COMMANDS} | set(BUILTINS))


def find_command(name: str, service: str) -> ShellCommand | None:
    """The variant for `service`, or the only variant when one service alone has it."""
    variants = [c for c in COMMANDS if c.name == name]
    for command in variants:
        if command.service == service:
            return command
    return variants[0] if len(variants) == 1 else None


def split_line(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as error:
        raise ShellUsageError(f"cannot split the line: {error} (close your quotes)") from None


class Shell:
    """One interactive shell: the current service, lazily opened clients, and the output."""

    def __init__(
        self, ctx: CliContext, service: str = "ai", console: Console | None = None
    ) -> None:
        if service not in SERVICES:
            raise ValueError(f"service must be ai or db, not {service!r}")
        self.ctx = ctx
        self.service = service
        self.console = console or ctx.out
        # The service of the command being run (handlers shared by both services read it).
        self.service_of_call = service
        self._ai: AIClient | None = None
        self._db: DBClient | None = None
        self._stores: dict[str, tuple[float, list[str]]] = {}
        self._models: tuple[float, list[str]] | None = None
        # Lines that ended in an error; a piped script exits nonzero when there were any.
        self.errors = 0

    # -- clients ----------------------------------------------------------------------------

    @property
    def ai(self) -> AIClient:
        if self._ai is None:
            self._ai = self.ctx.ai_client()
        return self._ai

    @property
    def db(self) -> DBClient:
        if self._db is None:
            self._db = self.ctx.db_client()
        return self._db

    def address(self, service: str) -> str:
        return self.ctx.address(service)

    def close(self) -> None:
        for client in (self._ai, self._db):
            if client is not None:
                client.close()

    @property
    def prompt(self) -> str:
        return f"nachbar({self.service})> "

    def say(self, text: str) -> None:
        if text:
            self.console.print(escape(text), highlight=False)

    # -- running lines ----------------------------------------------------------------------

    def execute(self, line: str) -> bool:
        """Run one line; False when the shell should end. Errors are printed, not raised."""
        try:
            return self._execute(line)
        except NachbarError as error:
            self.errors += 1
            self.console.print(
                f"[bold red]{error.code.name}[/]: {escape(error.message)}", highlight=False
            )
        except ShellUsageError as error:
            self.errors += 1
            self.console.print(f"[red]usage error[/]: {escape(str(error))}", highlight=False)
        return True

    def _execute(self, line: str) -> bool:
        words = split_line(line)
        if not words:
            return True
        service = self.service
        if words[0] in SERVICES and len(words) > 1:
            service, words = words[0], words[1:]
        name, rest = words[0], words[1:]
        if name in ("exit", "quit"):
            return False
        if name == "help":
            self.help(rest[0] if rest else None)
            return True
        if name == "use":
            if len(rest) != 1 or rest[0] not in SERVICES:
                raise ShellUsageError("use ai | use db")
            self.service = rest[0]
            self.say(f"commands now go to nachbar-{self.service} at {self.address(self.service)}")
            return True
        command = find_command(name, service)
        if command is None:
            raise ShellUsageError(f"unknown command {name!r}; `help` lists the commands")
        if any(word in ("-h", "--help") for word in rest):
            self.help(name)
            return True
        args = command.parser().parse_args(rest)
        self.service_of_call = command.service
        with explain_unavailable(command.service, self.address(command.service)):
            command.handler(self, args)
        if command.name in ("create_store", "drop_store"):
            self._stores.clear()
        return True

    # -- help ---------------------------------------------------------------------------------

    def help(self, name: str | None = None) -> None:
        if name is None:
            table = render.new_table("command", "service", "what it does")
            for builtin, summary in BUILTINS.items():
                table.add_row(builtin, "", summary)
            for command_name in dict.fromkeys(c.name for c in COMMANDS):
                services = sorted(c.service for c in COMMANDS if c.name == command_name)
                shown = find_command(command_name, self.service)
                assert shown is not None
                table.add_row(command_name, "/".join(services), shown.summary)
            self.console.print(table)
            self.say(
                f"current service: {self.service}. `help CMD` explains one command; "
                "prefix a command with ai or db to send it to that service once."
            )
            return
        if name in BUILTINS:
            self.say(f"{name}: {BUILTINS[name]}")
            return
        variants = [c for c in COMMANDS if c.name == name]
        if not variants:
            raise ShellUsageError(f"unknown command {name!r}; `help` lists the commands")
        for command in variants:
            usage = command.parser().format_help().rstrip()
            self.console.print(
                f"[bold]{command.name}[/] (nachbar-{command.service})", highlight=False
            )
            self.say(usage)
            self.say(f"example: {command.example}\n")

    # -- completion ---------------------------------------------------------------------------

    def completions(self, before_cursor: str) -> list[str]:
        """Candidates for the word under the cursor, given the line up to the cursor."""
        try:
            words = shlex.split(before_cursor)
        except ValueError:
            words = before_cursor.split()
        if before_cursor and not before_cursor[-1].isspace() and words:
            current, previous = words[-1], words[:-1]
        else:
            current, previous = "", words
        service = self.service
        if not previous:
            return _matching([*command_names(), *SERVICES], current)
        if previous[0] in SERVICES:  # a one-off `db CMD ...`
            service, previous = previous[0], previous[1:]
            if not previous:
                return _matching(command_names(), current)
        name = previous[0]
        if name == "help":
            return _matching(command_names(), current) if len(previous) == 1 else []
        if name == "use":
            return _matching(SERVICES, current) if len(previous) == 1 else []
        command = find_command(name, service)
        if command is None:
            return []
        if previous[-1] in MODEL_OPTIONS:
            return _matching(self.model_names(), current)
        if current.startswith("-"):
            options = [o for action in command.parser()._actions for o in action.option_strings]
            return _matching(options, current)
        positionals = [w for w in previous[1:] if not w.startswith("-")]
        if command.takes_store and not positionals:
            return _matching(self.store_names(command.service), current)
        return []

    def store_names(self, service: str) -> list[str]:
        cached = self._stores.get(service)
        if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1]
        try:
            if service == "db":
                names = [s.name for s in self.db.list_stores(timeout=2.0)]
            else:
                names = [s.name for s in self.ai.list_stores(timeout=2.0)]
        except NachbarError:
            names = []  # completion must never break the prompt
        self._stores[service] = (time.monotonic(), names)
        return names

    def model_names(self) -> list[str]:
        if self._models is not None and time.monotonic() - self._models[0] < CACHE_SECONDS:
            return self._models[1]
        try:
            names = [m.name for m in self.ai.list_models(timeout=2.0)]
        except NachbarError:
            from nachbar.ai.registry import all_specs

            names = [spec.name for spec in all_specs()]
        self._models = (time.monotonic(), names)
        return names


def _matching(candidates: Iterable[str], prefix: str) -> list[str]:
    return sorted({c for c in candidates if c.startswith(prefix)})


@contextmanager
def open_shell(
    ctx: CliContext, service: str = "ai", console: Console | None = None
) -> Iterator[Shell]:
    shell = Shell(ctx, service, console)
    try:
        yield shell
    finally:
        shell.close()
