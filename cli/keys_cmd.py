"""`nachbar keys create|list|revoke`: manage the API keys file the servers read
(--api-keys-file). Running servers pick up the change without a restart."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from nachbar.cli.context import CliContext, CliError
from nachbar.server.auth import KeyFileError, Role, create_key, load_keys, revoke_key

KEYS_FILE_ENV = "NACHBAR_API_KEYS_FILE"


def register(sub: argparse._SubParsersAction[Any], json_flag: argparse.ArgumentParser) -> None:
    keys_file = argparse.ArgumentParser(add_help=False)
    keys_file.add_argument(
        "--keys-file",
        type=Path,
        metavar="PATH",
        default=os.environ.get(KEYS_FILE_ENV) or None,
        help=f"the servers' --api-keys-file (env {KEYS_FILE_ENV})",
    )
    p = sub.add_parser(
        "keys",
        help="create, list and revoke API keys",
        description="Manage the API keys file that nachbar-db and nachbar-ai read with "
        "--api-keys-file. It stores only hashes: a key is shown once, when it is created.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    create = actions.add_parser(
        "create",
        parents=[keys_file],
        help="create a key and print it once (the last line of the output)",
        description="Create a random key, store its hash, role and scopes, and print the key "
        "as the last line (`nachbar keys create ... | tail -n 1 > my.key`). Roles: read "
        "(searches, gets, lists, Info, Embed, Rerank), write (read + upserts and deletes), "
        "admin (write + create/drop stores and predicate indexes).",
    )
    create.add_argument("--role", required=True, choices=[r.label for r in Role])
    create.add_argument(
        "--stores",
        nargs="+",
        default=[],
        metavar="GLOB",
        help="limit the key to stores whose names match one of these globs (default: all)",
    )
    create.set_defaults(func=create_cmd)

    listing = actions.add_parser(
        "list", parents=[keys_file, json_flag], help="show key ids, roles and store scopes"
    )
    listing.set_defaults(func=list_cmd)

    revoke = actions.add_parser(
        "revoke", parents=[keys_file], help="delete a key; servers refuse it at once"
    )
    revoke.add_argument("id", help="the key id (`nachbar keys list`)")
    revoke.set_defaults(func=revoke_cmd)


def _keys_file(args: argparse.Namespace) -> Path:
    if args.keys_file is None:
        raise CliError(f"which keys file? pass --keys-file PATH or set {KEYS_FILE_ENV}", 2)
    return Path(args.keys_file)


def create_cmd(ctx: CliContext, args: argparse.Namespace) -> int:
    path = _keys_file(args)
    try:
        record, secret = create_key(path, Role.parse(args.role), args.stores)
    except (KeyFileError, OSError) as error:
        raise CliError(str(error)) from None
    ctx.err.print(
        f"created key {record.id} (role {record.role.label}, stores {record.scope_label}) in "
        f"{escape(str(path))}; it is shown only now:",
        highlight=False,
    )
    ctx.out.print(secret, highlight=False, soft_wrap=True)
    return 0


def list_cmd(ctx: CliContext, args: argparse.Namespace) -> int:
    path = _keys_file(args)
    try:
        keys = load_keys(path)
    except KeyFileError as error:
        raise CliError(str(error)) from None
    if args.json:
        rows = [
            {"id": k.id, "role": k.role.label, "stores": list(k.stores), "created": k.created}
            for k in keys
        ]
        ctx.out.print(json.dumps(rows, indent=2), highlight=False, soft_wrap=True)
        return 0
    table = Table("id", "role", "stores", "created")
    for key in keys:
        table.add_row(key.id, key.role.label, escape(key.scope_label), key.created)
    ctx.out.print(table)
    return 0


def revoke_cmd(ctx: CliContext, args: argparse.Namespace) -> int:
    path = _keys_file(args)
    try:
        record = revoke_key(path, args.id)
    except KeyFileError as error:
        raise CliError(str(error)) from None
    ctx.out.print(
        f"revoked key {record.id} (role {record.role.label}); servers reading "
        f"{escape(str(path))} refuse it from their next request on",
        highlight=False,
    )
    return 0
