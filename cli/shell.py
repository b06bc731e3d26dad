"""`nachbar shell`: interactive in a terminal (see `prompt`), or a script when input is piped.

Piped input runs as a script, one command a line. History lives in $NACHBAR_HISTORY, else
$XDG_STATE_HOME/nachbar/history (default ~/.local/state/nachbar/history).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nachbar.cli.adapters import SERVICES
from nachbar.cli.context import CliContext
from nachbar.cli.shell_commands import open_shell


def register(sub: argparse._SubParsersAction[Any], common: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "shell",
        parents=common,
        help="interactive shell for every RPC of both services",
        description="An interactive shell with history and tab completion of commands, store "
        "and model names. `help` lists the commands; `use db` / `use ai` switches the service.",
    )
    p.add_argument(
        "--service",
        choices=SERVICES,
        default="ai",
        help="the service commands go to at first (default ai)",
    )
    p.set_defaults(func=run)


def history_path() -> Path:
    explicit = os.environ.get("NACHBAR_HISTORY")
    if explicit:
        return Path(explicit).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "nachbar" / "history"


def run(ctx: CliContext, args: argparse.Namespace) -> int:
    if not sys.stdin.isatty():
        return run_script(ctx, args.service, sys.stdin)
    from nachbar.cli.prompt import interact  # prompt_toolkit loads only for the shell

    path = history_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open_shell(ctx, args.service) as shell:
        return interact(ctx, shell, path)


def run_script(ctx: CliContext, service: str, lines: Iterable[str]) -> int:
    """Commands piped in (`nachbar shell < script`): no prompt, exit 1 if any line failed."""
    with open_shell(ctx, service) as shell:
        for line in lines:
            if line.lstrip().startswith("#"):
                continue
            if not shell.execute(line):
                break
        return 1 if shell.errors else 0
