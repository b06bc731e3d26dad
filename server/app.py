"""gRPC server plumbing shared by both services: options, health, reflection, shutdown."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from nachbar.server.config import CommonConfig

log = logging.getLogger("nachbar.server")


@dataclass
class RunningServer:
    """A started server. `stop()` is graceful: NOT_SERVING, drain, then the on_stop hooks."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    service_names: tuple[str, ...]
    grace_seconds: float
    on_stop: list[Callable[[], None]] = field(default_factory=list)
    metrics_port: int | None = None
    _stopped: threading.Event = field(default_factory=threading.Event)
    _stop_lock: threading.Lock = field(default_factory=threading.Lock)

    def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.service_names):
            self.health.set(name, status)

    def stop(self, grace: float | None = None) -> None:
        with self._stop_lock:
            if self._stopped.is_set():
                return
            log.info("shutting down: health NOT_SERVING, draining requests")
            self.set_serving(False)
            self.server.stop(self.grace_seconds if grace is None else grace).wait()
            for hook in self.on_stop:
                try:
                    hook()
                except Exception:
                    log.exception("error while stopping")
            self._stopped.set()
            log.info("stopped")

    def wait(self) -> None:
        self._stopped.wait()


def start_server(
    config: CommonConfig,
    register: Callable[[grpc.Server], None],
    service_names: Sequence[str],
    *,
    interceptors: Sequence[grpc.ServerInterceptor[Any, Any]] = (),
    credentials: grpc.ServerCredentials | None = None,
) -> RunningServer:
    """Build and start a server on config.host:config.port (port 0 picks a free one); with
    `credentials`, over TLS. `interceptors` wrap every call (server/operations.py)."""
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="rpc"),
        options=options,
        interceptors=list(interceptors),
    )
    register(server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = (
        f"[{config.host}]:{config.port}" if ":" in config.host else (f"{config.host}:{config.port}")
    )
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as error:
        raise SystemExit(
            f"cannot listen on {address}: {error}. Is another process using the port? "
            "Pick another with --port (or 0 for any free port)."
        ) from None
    server.start()
    running = RunningServer(
        server=server,
        port=port,
        health=health_servicer,
        service_names=tuple(service_names),
        grace_seconds=config.grace_seconds,
    )
    running.set_serving(False)
    return running


def write_port_file(path: Path | None, port: int) -> None:
    if path is None:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, path)


def run_until_signalled(running: RunningServer, *, exit_with_parent: bool) -> None:
    """Block until SIGTERM/SIGINT (or the parent exits), then stop gracefully."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    parent = os.getppid()
    while not stop.wait(0.5):
        if exit_with_parent and os.getppid() != parent:
            log.info("parent process exited")
            break
    running.stop()
