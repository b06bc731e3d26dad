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

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from nachbar.server.config import CommonConfig
from nachbar.server.errors import UndecodableRequest

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


def add_service(server: grpc.Server, service: ServiceDescriptor, servicer: object) -> None:
    """Serve every RPC of `service` (all unary) with the servicer's method of the same name,
    as the generated add_*Servicer_to_server does, except for requests that fail to decode.

    grpc answers a deserializer that raises with INTERNAL ("Exception deserializing
    request!"); here such a request reaches the servicer as an UndecodableRequest, which the
    error table answers with INVALID_ARGUMENT and a message saying what was wrong."""
    handlers = {}
    for method in service.methods:
        response_class = message_factory.GetMessageClass(method.output_type)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=_lenient_decoder(method.name, method.input_type),
            response_serializer=response_class.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    # As the generated code does: lets grpc find the handlers without asking each generic one.
    server.add_registered_method_handlers(service.full_name, handlers)  # type: ignore[attr-defined]


def _lenient_decoder(
    method: str, request_type: Descriptor
) -> Callable[[bytes], Message | UndecodableRequest]:
    request_class = message_factory.GetMessageClass(request_type)

    def decode(data: bytes) -> Message | UndecodableRequest:
        try:
            return request_class.FromString(data)
        except DecodeError as error:
            if "MaxDepth" in str(error):  # upb's words for its recursion limit
                return UndecodableRequest(
                    f"{method}: the request nests messages deeper than protobuf's limit of 100 "
                    "levels, so it cannot be decoded; flatten nested filters (an all_of inside "
                    "an all_of is one all_of, not(not(x)) is x)"
                )
            return UndecodableRequest(
                f"{method}: the request is not a valid protobuf message of type "
                f"{request_type.full_name} ({error}); send the message the .proto file declares"
            )

    return decode


def start_server(
    config: CommonConfig,
    register: Callable[[grpc.Server], None],
    service_names: Sequence[str],
) -> RunningServer:
    """Build and start a server on config.host:config.port (port 0 picks a free one)."""
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="rpc"),
        options=options,
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
