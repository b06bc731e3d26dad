"""Start real nachbar servers for tests: in-process on port 0, or as child processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nachbar.cli.health import wait_until_serving

BIN = Path(sys.executable).parent


def wait_serving(address: str, service: str = "", timeout: float = 60.0) -> None:
    """Block until grpc.health.v1 reports SERVING for `service` at `address`."""
    report = wait_until_serving(address, timeout, service=service)
    if not report.serving:
        raise TimeoutError(
            f"{address} not SERVING after {timeout}s (last: {report.health.value} {report.detail})"
        )


@dataclass
class ServerProcess:
    """A server run as a child process; it also exits by itself if the test process dies."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def spawn(
    script: str,
    args: Sequence[str],
    workdir: Path,
    *,
    wait: bool = True,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> ServerProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    port_file = workdir / f"{script}-{time.monotonic_ns()}.port"
    log_path = port_file.with_suffix(".log")
    cmd = [
        str(BIN / script),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--port-file",
        str(port_file),
        "--exit-with-parent",
        *args,
    ]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            cmd, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    deadline = time.monotonic() + timeout
    while not port_file.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"{script} exited with {proc.returncode}:\n{log_path.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError(f"{script} did not start:\n{log_path.read_text()}")
        time.sleep(0.05)
    server = ServerProcess(proc, int(port_file.read_text()), log_path)
    if wait:
        wait_serving(server.address, timeout=timeout)
    return server
