"""What every command shares: service addresses, the call timeout, output streams, clients."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
from rich.console import Console

from nachbar.client import AIClient, DBClient, NachbarError, Unavailable
from nachbar.v1 import defaults

DEFAULT_ADDRESS = {"db": defaults.DB_ADDRESS, "ai": defaults.AI_ADDRESS}
ADDRESS_ENV = {"db": "NACHBAR_DB_ADDRESS", "ai": "NACHBAR_AI_ADDRESS"}
TIMEOUT_ENV = "NACHBAR_TIMEOUT"
DEFAULT_TIMEOUT_SECONDS = defaults.TIMEOUT_SECONDS


class CliError(Exception):
    """A failure the user can fix; main prints the message and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class UsageError(CliError):
    """A command line that does not make sense (exit code 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=2)


# Width of tables written to a pipe or file, where no terminal limits the line length; rich
# would otherwise assume 80 columns and fold ids and names.
PIPE_WIDTH = 160


def make_console(*, stderr: bool = False) -> Console:
    # soft_wrap: messages stay one line each, however narrow the terminal (scripts grep them);
    # tables still fit the width.
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or os.environ.get("COLUMNS") else PIPE_WIDTH
    return Console(stderr=stderr, soft_wrap=True, width=width)


def env_address(service: str) -> str:
    return os.environ.get(ADDRESS_ENV[service]) or DEFAULT_ADDRESS[service]


def env_timeout() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if not raw:
        return DEFAULT_TIMEOUT_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise CliError(f"{TIMEOUT_ENV} must be a positive number of seconds, not {raw!r}")
    return value


@dataclass(frozen=True)
class CliContext:
    db_address: str
    ai_address: str
    timeout: float
    out: Console = field(default_factory=lambda: make_console())
    err: Console = field(default_factory=lambda: make_console(stderr=True))

    def address(self, service: str) -> str:
        return self.db_address if service == "db" else self.ai_address

    @contextmanager
    def db(self) -> Iterator[DBClient]:
        with (
            DBClient(self.db_address, timeout=self.timeout) as client,
            explain_unavailable("db", self.db_address),
        ):
            yield client

    @contextmanager
    def ai(self) -> Iterator[AIClient]:
        with (
            AIClient(self.ai_address, timeout=self.timeout) as client,
            explain_unavailable("ai", self.ai_address),
        ):
            yield client


# How gRPC itself words a failure to reach the server (as opposed to a server that answered
# UNAVAILABLE, whose message already says what to do).
_TRANSPORT_FAILURES = (
    "failed to connect to all addresses",
    "errors resolving",
    "DNS resolution failed",
    "Socket closed",
    "Connection reset",
)


@contextmanager
def explain_unavailable(service: str, address: str) -> Iterator[None]:
    """Turn gRPC's raw connection failure into a message that says what to do."""
    try:
        yield
    except Unavailable as error:
        if error.message.startswith(_TRANSPORT_FAILURES):
            raise Unavailable(
                f"cannot reach nachbar-{service} at {address} ({error.message}). Is it running? "
                f"Start the stack with `nachbar up`, or point --{service} (env "
                f"{ADDRESS_ENV[service]}) at it.",
                grpc.StatusCode.UNAVAILABLE,
            ) from None
        raise


def describe_error(error: NachbarError) -> str:
    return f"{error.code.name}: {error.message}"
