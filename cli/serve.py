"""`nachbar db serve` and `nachbar ai serve`: one service in the foreground.

Every flag goes to the server's own parser (nachbar.server.config), so the flags and their
NACHBAR_* environment twins are exactly those of the `nachbar-db` and `nachbar-ai` scripts.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

SERVICES = ("db", "ai")
# Connection options of the client commands; meaningless for a server but harmless before it.
_CLIENT_OPTIONS = (
    "--db",
    "--ai",
    "--timeout",
    "--api-key",
    "--tls-ca",
    "--tls-client-cert",
    "--tls-client-key",
)


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Show `db serve` / `ai serve` in `nachbar --help`; `dispatch` runs them."""
    for service in SERVICES:
        parser = sub.add_parser(
            service,
            help=f"run nachbar-{service} in the foreground "
            f"(`nachbar {service} serve --help` lists its flags)",
        )
        actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
        actions.add_parser("serve", add_help=False, help=f"serve nachbar-{service}")


def _skip_client_options(arguments: Sequence[str]) -> list[str]:
    rest = list(arguments)
    while rest:
        head = rest[0]
        if head in _CLIENT_OPTIONS and len(rest) >= 2:
            rest = rest[2:]
        elif head.startswith(tuple(f"{o}=" for o in _CLIENT_OPTIONS)):
            rest = rest[1:]
        else:
            break
    return rest


def dispatch(arguments: Sequence[str]) -> int | None:
    """Run `db serve` / `ai serve` if that is the command; None for every other command."""
    rest = _skip_client_options(arguments)
    if len(rest) >= 2 and rest[0] in SERVICES and rest[1] == "serve":
        return run(rest[0], rest[2:])
    return None


def run(service: str, argv: Sequence[str]) -> int:
    """Serve until SIGTERM/SIGINT. Configuration errors exit through the server's SystemExit."""
    # Imported here: the servers pull in the storage engine and the model runtime, which the
    # client commands do not need.
    if service == "db":
        from nachbar.server import config, db_main

        if "-h" in argv or "--help" in argv:
            config.db_parser(prog="nachbar db serve").print_help()
            return 0
        db_main.main(list(argv))
        return 0
    from nachbar.server import ai_main, config

    if "-h" in argv or "--help" in argv:
        config.ai_parser(prog="nachbar ai serve").print_help()
        return 0
    ai_main.main(list(argv))
    return 0
