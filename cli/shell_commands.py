"""The interactive shell's parsing, help and completion, free of any terminal code.

A line is split with shlex; its first word names a command of the one command table
(nachbar.cli.commands), the rest is parsed by that command's parser for the service. Commands
run against the current service (`use ai` / `use db`, or a one-off `db CMD ...` / `ai CMD ...`);
commands only one service has go to that service.
"""

from __future__ import annotations

import argparse
import shlex
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import NoReturn

from rich.console import Console
from rich.markup import escape

from nachbar.cli import render
from nachbar.cli.adapters import LABELS, SERVICES, AIAdapter, DBAdapter, ServiceAdapter
from nachbar.cli.commands import COMMANDS, Command, Invocation, find
from nachbar.cli.context import CliContext, CliError, UsageError, explain_unavailable
from nachbar.client import AIClient, DBClient, NachbarError

# Options whose value is a model name (completed from the server's list).
MODEL_OPTIONS = frozenset({"--model", "--query-model", "--index-model", "--rerank"})
# Options whose value is a store name.
STORE_OPTIONS = frozenset({"--store"})
CACHE_SECONDS = 5.0
BUILTINS = {
    "help": "list commands, or explain one: help CMD",
    "use": "switch the service commands go to: use ai | use db",
    "exit": "leave the shell (also quit, Ctrl-D)",
    "quit": "leave the shell",
}


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that raises instead of printing and exiting, so the shell survives."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}\n{self.format_usage().rstrip()}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise UsageError(message or "")


def shell_parser(command: Command, service: str) -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog=command.name, description=command.summary, add_help=False)
    command.configure(parser, service)
    parser.add_argument("--json", action="store_true", help="print JSON")
    return parser


def command_names() -> list[str]:
    return sorted({c.name for c in COMMANDS} | set(BUILTINS))


def find_command(name: str, service: str) -> tuple[Command, str] | None:
    """The command and the service it runs on: `service` when it has the command, else the one
    service that has it."""
    command = find(name)
    if command is None:
        return None
    if service in command.services:
        return command, service
    return command, command.services[0]


def split_line(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as error:
        raise UsageError(f"cannot split the line: {error} (close your quotes)") from None


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
        self.timeout = ctx.timeout
        self._ai: AIClient | None = None
        self._db: DBClient | None = None
        self._stores: dict[str, tuple[float, list[str]]] = {}
        self._models: tuple[float, list[str]] | None = None
        # Lines that ended in an error; a piped script exits nonzero when there were any.
        self.errors = 0

    # -- clients (the commands' Session) ----------------------------------------------------

    @property
    def ai(self) -> AIClient:
        if self._ai is None:
            self._ai = AIClient(self.ctx.ai_address, timeout=self.ctx.timeout)
        return self._ai

    @property
    def db(self) -> DBClient:
        if self._db is None:
            self._db = DBClient(self.ctx.db_address, timeout=self.ctx.timeout)
        return self._db

    def adapter(self, service: str) -> ServiceAdapter:
        return DBAdapter(self.db) if service == "db" else AIAdapter(self.ai)

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
        except CliError as error:
            self.errors += 1
            kind = "usage error" if error.exit_code == 2 else "error"
            self.console.print(f"[red]{kind}[/]: {escape(error.message)}", highlight=False)
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
                raise UsageError("use ai | use db")
            self.service = rest[0]
            self.say(f"commands now go to nachbar-{self.service} at {self.address(self.service)}")
            return True
        found = find_command(name, service)
        if found is None:
            raise UsageError(f"unknown command {name!r}; `help` lists the commands")
        command, service = found
        if any(word in ("-h", "--help") for word in rest):
            self.help(name)
            return True
        args = shell_parser(command, service).parse_args(rest)
        invocation = Invocation((service,), args, self.console, self.console, self)
        with explain_unavailable(service, self.address(service)):
            code = command.run(invocation)
        if code != 0:
            self.errors += 1
        if command.name in ("create_store", "drop_store"):
            self._stores.clear()
        return True

    # -- help ---------------------------------------------------------------------------------

    def help(self, name: str | None = None) -> None:
        if name is None:
            table = render.new_table("command", "service", "what it does")
            for builtin, summary in BUILTINS.items():
                table.add_row(builtin, "", summary)
            for command in COMMANDS:
                names = ", ".join(command.names[:1] + command.aliases)
                table.add_row(names, "/".join(command.services), command.summary)
            self.console.print(table)
            self.say(
                f"current service: {self.service}. `help CMD` explains one command; "
                "prefix a command with ai or db to send it to that service once."
            )
            return
        if name in BUILTINS:
            self.say(f"{name}: {BUILTINS[name]}")
            return
        explained = find(name)
        if explained is None:
            raise UsageError(f"unknown command {name!r}; `help` lists the commands")
        for service in explained.services:
            usage = shell_parser(explained, service).format_help().rstrip()
            self.console.print(f"[bold]{explained.name}[/] ({LABELS[service]})", highlight=False)
            self.say(usage)
            self.say(f"example: {explained.examples[service]}\n")

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
        found = find_command(name, service)
        if found is None:
            return []
        command, service = found
        if previous[-1] in MODEL_OPTIONS:
            return _matching(self.model_names(), current)
        if previous[-1] in STORE_OPTIONS:
            return _matching(self.store_names(service), current)
        if current.startswith("-"):
            parser = shell_parser(command, service)
            options = [o for action in parser._actions for o in action.option_strings]
            return _matching(options, current)
        positionals = [w for w in previous[1:] if not w.startswith("-")]
        if command.takes_store and not positionals:
            return _matching(self.store_names(service), current)
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
