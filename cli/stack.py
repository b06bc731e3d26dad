"""`nachbar up`: run nachbar-db and nachbar-ai together, each in its own child process.

The children are `nachbar db serve` and `nachbar ai serve`, started in their own process
group so that Ctrl-C reaches only this supervisor, which then stops them in order (ai first,
then db, which flushes its stores). Both run with --exit-with-parent, so they also shut down
gracefully if the supervisor itself is killed.
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rich.markup import escape

from nachbar.cli.context import CliContext, CliError
from nachbar.cli.health import Health, check_health
from nachbar.v1 import defaults

LOG_TAIL_LINES = 25
DEFAULT_START_TIMEOUT = 180.0
POLL_SECONDS = 0.2
# Added to the children's own drain time before they are killed.
STOP_MARGIN_SECONDS = 15.0


@dataclass(frozen=True)
class StackConfig:
    host: str
    db_port: int
    ai_port: int
    data_dir: Path
    model_dir: Path
    build: bool
    start_timeout: float
    grace_seconds: float
    # Extra flags for `nachbar ai serve`, e.g. ("--models", "all-minilm-l6-v2").
    ai_args: tuple[str, ...] = ()

    @property
    def connect_host(self) -> str:
        """Where to reach a server listening on `host` (a wildcard means this machine)."""
        if self.host in ("0.0.0.0", ""):
            return "127.0.0.1"
        if self.host == "::":
            return "::1"
        return self.host


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def register(sub: argparse._SubParsersAction[Any], common: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "up",
        parents=common,
        help="start nachbar-db and nachbar-ai together",
        description="Start nachbar-db and nachbar-ai as two child processes, wait until both "
        "report SERVING, and keep them running until Ctrl-C or SIGTERM, which stops both "
        "gracefully. Missing default models are built first unless --no-build.",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        metavar="D",
        help="where stores live (env NACHBAR_DATA_DIR, default "
        "$XDG_DATA_HOME/nachbar/data or ~/.local/share/nachbar/data)",
    )
    p.add_argument(
        "--model-dir",
        type=Path,
        metavar="M",
        help="model cache (env NACHBAR_MODEL_DIR, default "
        "$XDG_CACHE_HOME/nachbar/models or ~/.cache/nachbar/models)",
    )
    p.add_argument(
        "--db-port",
        type=int,
        metavar="P",
        help=f"nachbar-db port (env NACHBAR_DB_PORT, default {defaults.DB_PORT}; 0 picks a free "
        "one)",
    )
    p.add_argument(
        "--ai-port",
        type=int,
        metavar="P",
        help=f"nachbar-ai port (env NACHBAR_AI_PORT, default {defaults.AI_PORT}; 0 picks a free "
        "one)",
    )
    p.add_argument(
        "--host",
        metavar="H",
        default=None,
        help=f"interface both listen on (default {defaults.HOST}; 0.0.0.0 for every interface)",
    )
    p.add_argument(
        "--no-build",
        action="store_true",
        help="do not build missing default models; fail and say how to build them",
    )
    p.add_argument(
        "--models",
        metavar="NAMES",
        help="comma-separated models nachbar-ai loads at start (env NACHBAR_MODELS)",
    )
    p.add_argument(
        "--allow-downloads",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="let nachbar-ai download hub models on first use; on by default for this local "
        "stack, unlike `nachbar ai serve` (env NACHBAR_ALLOW_DOWNLOADS)",
    )
    p.add_argument(
        "--start-timeout",
        type=float,
        default=DEFAULT_START_TIMEOUT,
        metavar="SECONDS",
        help="how long to wait for both to be SERVING",
    )
    p.set_defaults(func=run)


def _config(args: argparse.Namespace) -> StackConfig:
    from nachbar.server import config

    db_defaults, ai_defaults = config.db_parser(), config.ai_parser()
    ai_args: tuple[str, ...] = ("--models", args.models) if args.models is not None else ()
    allow_downloads = args.allow_downloads
    if allow_downloads is None:
        # One person's stack on this machine: fetching a registry model when asked is what
        # they want, unless they said otherwise in the environment.
        allow_downloads = config.env_bool("ALLOW_DOWNLOADS", True)
    ai_args += ("--allow-downloads",) if allow_downloads else ("--no-allow-downloads",)
    return StackConfig(
        host=args.host or defaults.HOST,
        db_port=args.db_port if args.db_port is not None else db_defaults.get_default("port"),
        ai_port=args.ai_port if args.ai_port is not None else ai_defaults.get_default("port"),
        data_dir=args.data_dir or Path(db_defaults.get_default("data_dir")),
        model_dir=args.model_dir or Path(ai_defaults.get_default("model_dir")),
        build=not args.no_build,
        start_timeout=args.start_timeout,
        grace_seconds=float(db_defaults.get_default("grace_seconds")),
        ai_args=ai_args,
    )


def check_ports(cfg: StackConfig) -> None:
    """Refuse before spawning anything when a port is taken, naming the flag that moves it."""
    if cfg.db_port and cfg.db_port == cfg.ai_port:
        raise CliError(
            f"--db-port and --ai-port are both {cfg.db_port}; give the two services different "
            "ports",
            exit_code=2,
        )
    for service, port, flag, client_flag in (
        ("nachbar-db", cfg.db_port, "--db-port", "--db"),
        ("nachbar-ai", cfg.ai_port, "--ai-port", "--ai"),
    ):
        if port and port_in_use(cfg.host, port):
            raise CliError(
                f"port {port} on {cfg.host} is already in use, so {service} cannot listen there. "
                f"If nachbar is already running, `nachbar ping` tells. Otherwise start on another "
                f"port with `nachbar up {flag} {port + 100}` and point clients at it with "
                f"`{client_flag} {join_host_port(cfg.connect_host, port + 100)}` "
                f"(or {flag} 0 for any free port)."
            )


def port_in_use(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # The servers set SO_REUSEADDR too, so connections lingering in TIME_WAIT are no
        # obstacle; a live listener still is.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return True
            raise CliError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    return False


def missing_default_models(cfg: StackConfig) -> list[str]:
    """Models nachbar-ai loads at start that can be built offline but are not built yet."""
    from nachbar.ai.errors import ModelNotFoundError
    from nachbar.ai.models import ModelManager
    from nachbar.ai.registry import get_spec
    from nachbar.server import config

    names = _ai_models(cfg) or config.ai_parser().get_default("models")
    manager = ModelManager(cfg.model_dir, offline=True)
    try:
        missing = []
        for name in (n.strip() for n in names.split(",") if n.strip()):
            try:
                spec = get_spec(name)
            except ModelNotFoundError as error:
                raise CliError(f"--models: {error}", exit_code=2) from None
            if spec.is_built and not manager.is_available(spec):
                missing.append(spec.name)
        return missing
    finally:
        manager.close()


def _ai_models(cfg: StackConfig) -> str:
    args = list(cfg.ai_args)
    return args[args.index("--models") + 1] if "--models" in args else ""


@dataclass
class Child:
    """A running service with a thread that relays its log lines and keeps the last ones."""

    label: str
    process: subprocess.Popen[bytes]
    port_file: Path
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_TAIL_LINES))
    relay: threading.Thread | None = None

    def start_relay(self, sink: IO[str]) -> None:
        def pump() -> None:
            assert self.process.stdout is not None
            for raw in self.process.stdout:
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                self.tail.append(line)
                sink.write(f"[{self.label}] {line}\n")
                sink.flush()

        self.relay = threading.Thread(target=pump, name=f"log-{self.label}", daemon=True)
        self.relay.start()

    def port(self) -> int | None:
        try:
            return int(self.port_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def alive(self) -> bool:
        return self.process.poll() is None

    def last_lines(self) -> str:
        if self.relay is not None:
            self.relay.join(timeout=2)  # let the final lines of a dead child arrive
        return "\n".join(self.tail) or "(no output)"

    def stop(self, timeout: float) -> int:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


class ChildFailed(Exception):
    def __init__(self, child: Child, what: str) -> None:
        super().__init__(what)
        self.child = child
        self.what = what


class Stopped(Exception):
    """SIGTERM or Ctrl-C arrived."""


def spawn(label: str, args: Sequence[str], workdir: Path, sink: IO[str]) -> Child:
    port_file = workdir / f"{label}.port"
    command = [
        sys.executable,
        "-m",
        "nachbar.cli.main",
        label,
        "serve",
        *args,
        "--port-file",
        str(port_file),
        "--exit-with-parent",
    ]
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # Own process group: the terminal's Ctrl-C reaches only the supervisor, which then
        # stops the children in order.
        start_new_session=True,
    )
    child = Child(label, process, port_file)
    child.start_relay(sink)
    return child


def wait_ready(child: Child, host: str, deadline: float, stop: threading.Event) -> int:
    """The child's port once it reports SERVING; raises ChildFailed or Stopped."""
    last = Health.UNREACHABLE
    while True:
        if stop.is_set():
            raise Stopped
        if not child.alive():
            raise ChildFailed(
                child, f"exited with status {child.process.returncode} while starting"
            )
        port = child.port()
        if port is not None:
            report = check_health(join_host_port(host, port), timeout=2.0)
            if report.serving:
                return port
            last = report.health
        if time.monotonic() > deadline:
            raise ChildFailed(
                child,
                f"was not SERVING in time (last health: {last.value}); "
                "raise --start-timeout if models load slowly",
            )
        stop.wait(POLL_SECONDS)


def run(ctx: CliContext, args: argparse.Namespace) -> int:
    cfg = _config(args)
    check_ports(cfg)
    missing = missing_default_models(cfg)
    if missing:
        if not cfg.build:
            raise CliError(
                f"models {', '.join(missing)} are not built in {cfg.model_dir}. Build them with "
                f"`nachbar models build --model-dir {cfg.model_dir}` (takes a minute or two), "
                "or drop --no-build"
            )
        from nachbar.cli.models_cmd import build_with_progress

        ctx.err.print(f"building models {', '.join(missing)} into {escape(str(cfg.model_dir))}")
        build_with_progress(ctx.err, cfg.model_dir, missing)
    return Supervisor(ctx, cfg).run()


class Supervisor:
    def __init__(self, ctx: CliContext, cfg: StackConfig) -> None:
        self.ctx = ctx
        self.cfg = cfg
        self.stop_requested = threading.Event()
        self.children: list[Child] = []

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stop_requested.set()

    def run(self) -> int:
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        workdir = Path(tempfile.mkdtemp(prefix="nachbar-up-"))
        try:
            return self._run(workdir)
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            shutil.rmtree(workdir, ignore_errors=True)

    def _run(self, workdir: Path) -> int:
        cfg, sink = self.cfg, sys.stderr
        deadline = time.monotonic() + cfg.start_timeout
        try:
            db = spawn(
                "db",
                ["--host", cfg.host, "--port", str(cfg.db_port), "--data-dir", str(cfg.data_dir)],
                workdir,
                sink,
            )
            self.children.append(db)
            db_port = wait_ready(db, cfg.connect_host, deadline, self.stop_requested)
            ai = spawn(
                "ai",
                [
                    "--host",
                    cfg.host,
                    "--port",
                    str(cfg.ai_port),
                    "--db-host",
                    cfg.connect_host,
                    "--db-port",
                    str(db_port),
                    "--model-dir",
                    str(cfg.model_dir),
                    *cfg.ai_args,
                ],
                workdir,
                sink,
            )
            self.children.append(ai)
            ai_port = wait_ready(ai, cfg.connect_host, deadline, self.stop_requested)
        except Stopped:
            return 130
        except ChildFailed as failure:
            return self._report_failure(failure)
        self._announce(db_port, ai_port)
        while not self.stop_requested.wait(POLL_SECONDS):
            for child in self.children:
                if not child.alive():
                    return self._report_failure(
                        ChildFailed(
                            child, f"exited unexpectedly with status {child.process.returncode}"
                        )
                    )
        self.ctx.err.print("stopping nachbar-ai and nachbar-db")
        statuses = self._stop_all()
        if any(status != 0 for status in statuses):
            self.ctx.err.print(f"a service did not stop cleanly (exit statuses {statuses})")
            return 1
        self.ctx.err.print("stopped")
        return 0

    def _announce(self, db_port: int, ai_port: int) -> None:
        cfg, out = self.cfg, self.ctx.out
        db_address = join_host_port(cfg.connect_host, db_port)
        ai_address = join_host_port(cfg.connect_host, ai_port)
        out.print(
            f"nachbar-db serving on {join_host_port(cfg.host, db_port)} "
            f"(data in {escape(str(cfg.data_dir))})",
            highlight=False,
        )
        out.print(
            f"nachbar-ai serving on {join_host_port(cfg.host, ai_port)} "
            f"(models in {escape(str(cfg.model_dir))})",
            highlight=False,
        )
        if (db_address, ai_address) != (defaults.DB_ADDRESS, defaults.AI_ADDRESS):
            out.print(f"clients: nachbar --db {db_address} --ai {ai_address} ...", highlight=False)
        out.print("press Ctrl-C to stop both", highlight=False)

    def _report_failure(self, failure: ChildFailed) -> int:
        child = failure.child
        name = f"nachbar-{child.label}"
        self._stop_all()
        self.ctx.err.print(
            f"error: {name} {escape(failure.what)}; its last log lines:", highlight=False
        )
        self.ctx.err.print(escape(child.last_lines()), highlight=False)
        return 1

    def _stop_all(self) -> list[int]:
        """Stop ai before db (ai calls db), each given its drain time; kill only as a last
        resort."""
        statuses = []
        timeout = self.cfg.grace_seconds + STOP_MARGIN_SECONDS
        for child in reversed(self.children):
            statuses.append(child.stop(timeout))
        for child in self.children:
            if child.relay is not None:
                child.relay.join(timeout=2)
        self.children.clear()
        return statuses
