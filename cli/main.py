"""`nachbar`: start the stack, search, ingest, manage stores and models, or open a shell.

Exit codes: 0 success, 1 a failed operation (the server's message goes to stderr), 2 a usage
error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version

from rich.console import Console
from rich.markup import escape

from nachbar.cli import commands, ingest, keys_cmd, models_cmd, serve, shell, stack, tailoring
from nachbar.cli.context import (
    CONNECTION_ENV,
    CliContext,
    CliError,
    connection_options,
    describe_error,
    env_address,
    env_timeout,
    make_console,
)
from nachbar.client import NachbarError
from nachbar.v1 import defaults

Handler = Callable[[CliContext, argparse.Namespace], int]


def _version() -> str:
    try:
        return version("nachbar")
    except PackageNotFoundError:
        return "unknown"


def _positive_seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {raw!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("the timeout must be positive")
    return value


def _global_options() -> argparse.ArgumentParser:
    # SUPPRESS defaults let these flags go before or after the subcommand (compose health checks
    # write `nachbar ping --service db --db ADDR`); real defaults are filled in after parsing.
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("connection")
    group.add_argument(
        "--db",
        metavar="ADDR",
        default=argparse.SUPPRESS,
        help=f"nachbar-db address (env NACHBAR_DB_ADDRESS, default {defaults.DB_ADDRESS})",
    )
    group.add_argument(
        "--ai",
        metavar="ADDR",
        default=argparse.SUPPRESS,
        help=f"nachbar-ai address (env NACHBAR_AI_ADDRESS, default {defaults.AI_ADDRESS})",
    )
    group.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive_seconds,
        default=argparse.SUPPRESS,
        help=f"deadline of each call (env NACHBAR_TIMEOUT, default {defaults.TIMEOUT_SECONDS:g})",
    )
    group.add_argument(
        "--api-key",
        metavar="KEY",
        default=argparse.SUPPRESS,
        help="API key for servers that require one (env NACHBAR_API_KEY, which unlike the flag "
        "does not show in the process list)",
    )
    group.add_argument(
        "--tls-ca",
        metavar="PEM",
        default=argparse.SUPPRESS,
        help="connect over TLS, trusting this CA (env NACHBAR_TLS_CA)",
    )
    group.add_argument(
        "--tls-client-cert",
        metavar="PEM",
        default=argparse.SUPPRESS,
        help="client certificate for mutual TLS (env NACHBAR_TLS_CLIENT_CERT)",
    )
    group.add_argument(
        "--tls-client-key",
        metavar="PEM",
        default=argparse.SUPPRESS,
        help="private key of --tls-client-cert (env NACHBAR_TLS_CLIENT_KEY)",
    )
    return options


def build_parser() -> argparse.ArgumentParser:
    common = _global_options()
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser = argparse.ArgumentParser(
        prog="nachbar",
        parents=[common],
        description="nachbar: similarity search for text and images. Start with `nachbar up`.",
    )
    parser.add_argument("--version", action="version", version=f"nachbar {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    stack.register(sub, [common])
    serve.register(sub)
    commands.register(sub, [common], json_flag)
    ingest.register(sub, [common], json_flag)
    models_cmd.register(sub, [common], json_flag)
    keys_cmd.register(sub, json_flag)
    tailoring.register(sub, [common], json_flag)
    shell.register(sub, [common])
    return parser


def make_context(
    args: argparse.Namespace, out: Console | None = None, err: Console | None = None
) -> CliContext:
    return CliContext(
        db_address=getattr(args, "db", None) or env_address("db"),
        ai_address=getattr(args, "ai", None) or env_address("ai"),
        timeout=getattr(args, "timeout", None) or env_timeout(),
        out=out or make_console(),
        err=err or make_console(stderr=True),
        connection=connection_options({name: getattr(args, name, None) for name in CONNECTION_ENV}),
    )


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    # `nachbar db serve ...` / `nachbar ai serve ...` hand every flag to the server's own parser,
    # so flags and NACHBAR_* environment twins are exactly those of nachbar-db / nachbar-ai.
    served = serve.dispatch(arguments)
    if served is not None:
        return served
    args = build_parser().parse_args(arguments)
    err = make_console(stderr=True)
    try:
        ctx = make_context(args, err=err)
        handler: Handler = args.func
        return handler(ctx, args)
    except NachbarError as error:
        err.print(f"error: {escape(describe_error(error))}", highlight=False)
        return 1
    except CliError as error:
        err.print(f"error: {escape(error.message)}", highlight=False)
        return error.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
