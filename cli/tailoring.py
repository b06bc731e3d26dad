"""`nachbar adapters|rescorers train|list|show|drop`: tailor a store's frozen vectors to a task.

Examples come as JSON lines, one query each:
    {"query": "cheap flights", "relevant": ["doc-17"], "irrelevant": ["doc-3"]}
    {"image": "photos/q1.jpg", "relevant": ["doc-4", "doc-9"]}
("image" paths are relative to the examples file).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from nachbar.cli.context import CliContext, CliError
from nachbar.client import AIClient, Example, Image, TrainedInfo, TrainSettings

KINDS = {"adapters": "adapter", "rescorers": "rescorer"}
POLL_SECONDS = 0.5


def register(
    sub: argparse._SubParsersAction[Any],
    parents: list[argparse.ArgumentParser],
    json_flag: argparse.ArgumentParser,
) -> None:
    for command, kind in KINDS.items():
        what = (
            "query adapters: a learned linear map of the query vector"
            if kind == "adapter"
            else "re-scorers: a small network reranking candidates by their stored vectors"
        )
        p = sub.add_parser(
            command,
            parents=parents,
            help=f"train, list, show and drop {what.split(':')[0]}",
            description=f"Tailor a store's frozen vectors to a task with {what}. Trained in "
            "the background by nachbar-ai from example queries with the ids of the entries "
            "that answer them; kept in nachbar-db next to the store; used by name in "
            f"`nachbar search --{kind} NAME`.",
        )
        actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
        train = actions.add_parser(
            "train",
            parents=parents,
            help=f"train a {kind} from examples (JSON lines), with a progress bar",
        )
        train.add_argument("--store", required=True)
        train.add_argument("--name", required=True, help="1-64 of A-Z a-z 0-9 _ . -")
        train.add_argument(
            "--examples",
            required=True,
            type=Path,
            metavar="FILE",
            help='JSON lines: {"query": TEXT or "image": PATH, "relevant": [IDS], '
            '"irrelevant": [IDS] (optional)}',
        )
        train.add_argument("--epochs", type=int, default=0, help="0: the server's default")
        train.add_argument("--learning-rate", type=float, default=0.0)
        train.add_argument("--held-out", type=float, default=0.0, help="share held out; 0: 0.2")
        train.add_argument("--seed", type=int, default=0)
        if kind == "adapter":
            train.add_argument(
                "--identity-weight",
                type=float,
                default=0.0,
                help="pull toward the frozen query vector; 0: the default 0.01",
            )
        train.add_argument(
            "--no-wait", action="store_true", help="start it and return (`show` follows it)"
        )
        train.set_defaults(func=train_cmd, kind=kind)

        listing = actions.add_parser("list", parents=[*parents, json_flag], help=f"{kind}s")
        listing.add_argument("--store", required=True)
        listing.set_defaults(func=list_cmd, kind=kind)

        show = actions.add_parser(
            "show", parents=[*parents, json_flag], help="state, progress and metrics"
        )
        show.add_argument("--store", required=True)
        show.add_argument("name")
        show.set_defaults(func=show_cmd, kind=kind)

        drop = actions.add_parser("drop", parents=parents, help="drop it (or stop its training)")
        drop.add_argument("--store", required=True)
        drop.add_argument("name")
        drop.add_argument("--missing-ok", action="store_true")
        drop.set_defaults(func=drop_cmd, kind=kind)


def read_examples(path: Path) -> list[Example]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise CliError(f"cannot read {path}: {error.strerror}", 2) from None
    out: list[Example] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise CliError(f"{where}: not JSON ({error.msg})", 2) from None
        if not isinstance(record, dict):
            raise CliError(f"{where}: each line is a JSON object", 2)
        relevant = record.get("relevant")
        irrelevant = record.get("irrelevant", [])
        for key, ids in (("relevant", relevant), ("irrelevant", irrelevant)):
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise CliError(f"{where}: {key!r} must be a list of entry ids (strings)", 2)
        query: str | Image
        if isinstance(record.get("query"), str) and "image" not in record:
            query = record["query"]
        elif isinstance(record.get("image"), str) and "query" not in record:
            image = path.parent / record["image"]
            try:
                query = Image(image.read_bytes())
            except OSError as error:
                raise CliError(f"{where}: cannot read image {image}: {error.strerror}", 2) from None
        else:
            raise CliError(f'{where}: give "query" (text) or "image" (a path), one of them', 2)
        out.append(Example(query, relevant or [], irrelevant))
    return out


def _get(ai: AIClient, kind: str, store: str, name: str) -> TrainedInfo:
    if kind == "adapter":
        return ai.get_adapter(store, name)
    return ai.get_rescorer(store, name)


def train_cmd(ctx: CliContext, args: argparse.Namespace) -> int:
    examples = read_examples(args.examples)
    settings = TrainSettings(
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        held_out=args.held_out,
        seed=args.seed,
        identity_weight=getattr(args, "identity_weight", 0.0),
    )
    with ctx.ai() as ai:
        train = ai.train_adapter if args.kind == "adapter" else ai.train_rescorer
        info = train(args.store, args.name, examples, settings=settings)
        ctx.err.print(
            f"training {args.kind} {escape(args.name)} of store {escape(args.store)} on "
            f"{len(examples)} examples",
            highlight=False,
        )
        if args.no_wait:
            ctx.out.print(f"state: {info.state}", highlight=False)
            return 0
        with Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            console=ctx.err,
            transient=True,
        ) as bar:
            task = bar.add_task(info.state, total=1.0)
            while info.state in ("queued", "training"):
                time.sleep(POLL_SECONDS)
                info = _get(ai, args.kind, args.store, args.name)
                bar.update(task, completed=info.progress, description=escape(info.message[:60]))
    _print_info(ctx, info)
    return 0 if info.state == "ready" else 1


def list_cmd(ctx: CliContext, args: argparse.Namespace) -> int:
    with ctx.ai() as ai:
        infos = (
            ai.list_adapters(args.store)
            if args.kind == "adapter"
            else ai.list_rescorers(args.store)
        )
    if args.json:
        ctx.out.print(
            json.dumps([_as_json(i) for i in infos], indent=2), highlight=False, soft_wrap=True
        )
        return 0
    if not infos:
        ctx.out.print(f"store {escape(args.store)} has no {args.kind}s", highlight=False)
        return 0
    table = Table("name", "state", "recommended", "MRR@10 before", "MRR@10 after", "examples")
    for info in infos:
        table.add_row(
            escape(info.name),
            info.state if info.state != "training" else f"training {info.progress:.0%}",
            "yes" if info.recommended else "no",
            f"{info.before.mrr_at_10:.4f}",
            f"{info.after.mrr_at_10:.4f}",
            str(info.train_examples + info.held_out_examples),
        )
    ctx.out.print(table)
    return 0


def show_cmd(ctx: CliContext, args: argparse.Namespace) -> int:
    with ctx.ai() as ai:
        info = _get(ai, args.kind, args.store, args.name)
    if args.json:
        ctx.out.print(json.dumps(_as_json(info), indent=2), highlight=False, soft_wrap=True)
        return 0
    _print_info(ctx, info)
    return 0


def drop_cmd(ctx: CliContext, args: argparse.Namespace) -> int:
    with ctx.ai() as ai:
        drop = ai.drop_adapter if args.kind == "adapter" else ai.drop_rescorer
        dropped = drop(args.store, args.name, missing_ok=args.missing_ok)
    ctx.out.print(
        f"dropped {args.kind} {escape(args.name)}" if dropped else f"no {args.kind} to drop",
        highlight=False,
    )
    return 0


def _as_json(info: TrainedInfo) -> dict[str, Any]:
    out = dict(info.__dict__)
    out["before"] = info.before.__dict__
    out["after"] = info.after.__dict__
    return out


def _print_info(ctx: CliContext, info: TrainedInfo) -> None:
    lines = [
        f"{info.name}: {info.state}"
        + (f" ({info.progress:.0%})" if info.state == "training" else ""),
        f"  {info.message}",
    ]
    if info.state == "ready":
        lines += [
            f"  held-out MRR@10 {info.before.mrr_at_10:.4f} -> {info.after.mrr_at_10:.4f}, "
            f"recall@10 {info.before.recall_at_10:.4f} -> {info.after.recall_at_10:.4f} "
            f"({info.held_out_examples} held-out queries)",
            f"  recommended: {'yes' if info.recommended else 'no (not better than frozen)'}",
            f"  {info.train_examples} training examples, {info.epochs} epochs, "
            f"{info.train_seconds:.1f} s, {info.weight_bytes / 1e6:.2f} MB of weights, "
            f"{info.corpus_size} store vectors",
        ]
    for line in lines:
        ctx.out.print(escape(line), highlight=False)
