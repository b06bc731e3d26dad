"""A real Milvus standalone server for the integration tier and the benchmark.

The `milvus` PyPI package (2.3.x, Linux x86-64) carries a complete standalone server: embedded
etcd, local storage, rocksmq. `scripts/milvus_server.sh install` puts it in its own virtualenv
(build/milvus-server; it must not share nachbar's, its client extra pins an old grpcio), from
the hashes in requirements-milvus-server.txt.

Its components listen on every interface, whatever their configured `ip` (which only sets the
address they advertise), so it is only started inside a private network namespace whose one
interface is loopback: `scripts/milvus_server.sh test` runs the tests in one (`unshare --net`).
Every port is a free one picked here, every advertised address is 127.0.0.1.

    python -m tests.milvus_standalone DATA_DIR   # start, print the URI, stop on SIGTERM/Ctrl-C
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SERVER = REPO / "build" / "milvus-server" / "bin" / "milvus-server"
# The template keys of the package's config.yaml.template that name a listening port.
PORT_KEYS = (
    "etcd_port",
    "proxy_port",
    "proxy_internal_port",
    "root_coord_port",
    "query_coord_port",
    "query_node_port",
    "index_coord_port",
    "index_node_port",
    "data_coord_port",
    "data_node_port",
)
METRICS_PORT = 9091
TIME_TICK_MS = 20
COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")


def isolated_network() -> bool:
    """True inside a network namespace whose only interface is loopback."""
    try:
        return [name for _, name in socket.if_nameindex()] == ["lo"]
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class MilvusStandalone:
    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, data_dir: Path, timeout: float = 120.0) -> MilvusStandalone:
        if not SERVER.exists():
            raise RuntimeError(f"{SERVER} is missing: run `bash scripts/milvus_server.sh install`")
        if not isolated_network():
            raise RuntimeError(
                "Milvus standalone listens on every interface: start it only inside a private "
                "network namespace (`bash scripts/milvus_server.sh test` makes one)"
            )
        data_dir.mkdir(parents=True, exist_ok=True)
        ports = {key: free_port() for key in PORT_KEYS}
        argv = [str(SERVER), "--data", str(data_dir)]
        for key, port in ports.items():
            argv += [f"--{key.replace('_', '-')}", str(port)]
        for component in COMPONENTS:
            argv += ["--extra-config", f"{component}.ip=127.0.0.1"]
        # A strong read waits for the next time tick: 200 ms by default, 20 ms here, so the
        # tier's thousands of strong reads take minutes, not a quarter of an hour.
        argv += ["--extra-config", f"proxy.timeTickInterval={TIME_TICK_MS}"]
        log = open(data_dir / "server.log", "wb")  # noqa: SIM115 - the child keeps it
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        log.close()
        server = cls(process, ports["proxy_port"], data_dir)
        deadline = time.monotonic() + timeout
        while not server._listening():
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(
                    f"Milvus standalone did not start; see {data_dir}/server.log and "
                    f"{data_dir}/logs"
                )
            time.sleep(0.5)
        return server

    def _listening(self) -> bool:
        # The launcher serves Milvus's health check on the first free port from 9091; in a
        # fresh namespace that is 9091.
        return healthz(METRICS_PORT) and _connectable(self.port)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # the launcher stops the server on SIGINT
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def _connectable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def healthz(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
            return b"OK" in reply.read()
    except OSError:
        return False


def main() -> None:
    server = MilvusStandalone.start(Path(sys.argv[1]))
    print(server.uri, flush=True)
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop and server.process.poll() is None:
        time.sleep(0.2)
    server.stop()


if __name__ == "__main__":
    main()
