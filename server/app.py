"""gRPC server plumbing shared by both services: options, admission, health, reflection,
shutdown.

Threads: one per RPC the server accepts at once (`Limits.max_concurrent_rpcs`: both lanes'
workers and queues, plus room for health checks and refusals), and gRPC's own
`maximum_concurrent_rpcs` set to the same number, so an accepted RPC never waits for a thread
behind other work; lanes (nachbar.server.admission) decide what runs. Calls that arrive faster
than the server takes them up wait inside gRPC core; beyond MAX_PENDING_CALLS of those gRPC
cancels new ones (its default starts at 1,000 and cancelled 6-25% of a 2,000-3,000 call burst).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from nachbar.server.admission import Admission, AdmissionInterceptor, Limits, ServicePolicy
from nachbar.server.config import CommonConfig

log = logging.getLogger("nachbar.server")

MAX_PENDING_CALLS = 50_000


@dataclass
class RunningServer:
    """A started server. `stop()` is graceful: NOT_SERVING, drain, then the on_stop hooks."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    service_names: tuple[str, ...]
    grace_seconds: float
    admission: Admission
    on_stop: list[Callable[[], None]] = field(default_factory=list)
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


def limits(config: CommonConfig) -> Limits:
    return Limits(
        interactive_workers=config.workers,
        bulk_workers=config.bulk_workers,
        max_queued=config.max_queued,
        max_inflight_bytes=config.max_inflight_bytes,
        interactive_max_bytes=config.interactive_max_bytes,
    )


def start_server(
    config: CommonConfig,
    register: Callable[[grpc.Server], None],
    policies: Sequence[ServicePolicy],
) -> RunningServer:
    """Build and start a server on config.host:config.port (port 0 picks a free one)."""
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),
        ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
        ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS),
    ]
    service_names = [p.service for p in policies]
    admission = Admission(limits(config), policies[0].label)
    capacity = admission.limits.max_concurrent_rpcs
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=capacity, thread_name_prefix="rpc"),
        interceptors=[AdmissionInterceptor(admission, list(policies))],
        options=options,
        maximum_concurrent_rpcs=capacity,
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
        port = server.add_insecure_port(address)
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
        admission=admission,
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
