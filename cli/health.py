"""grpc.health.v1 checks: the same probe `nachbar ping`, `nachbar up` and compose use."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nachbar.v1.targets import ROUND_ROBIN, channel_target


class Health(StrEnum):
    SERVING = "SERVING"
    NOT_SERVING = "NOT_SERVING"
    # The health service answered something other than SERVING/NOT_SERVING.
    UNKNOWN = "UNKNOWN"
    # Nothing answered (refused, wrong address, timeout).
    UNREACHABLE = "UNREACHABLE"


@dataclass(frozen=True)
class HealthReport:
    address: str
    health: Health
    detail: str = ""

    @property
    def serving(self) -> bool:
        return self.health is Health.SERVING


_STATUS = {
    health_pb2.HealthCheckResponse.SERVING: Health.SERVING,
    health_pb2.HealthCheckResponse.NOT_SERVING: Health.NOT_SERVING,
}


def check_health(
    address: str,
    timeout: float,
    service: str = "",
    credentials: grpc.ChannelCredentials | None = None,
) -> HealthReport:
    """One Check call; `service` "" asks about the server as a whole; `credentials` for TLS."""
    target, balance = channel_target(address)
    options = [("grpc.service_config", ROUND_ROBIN)] if balance else []
    channel = (
        grpc.insecure_channel(target, options=options)
        if credentials is None
        else grpc.secure_channel(target, credentials, options=options)
    )
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as error:
            code = error.code() if hasattr(error, "code") else None
            details = error.details() if hasattr(error, "details") else str(error)
            name = code.name if code is not None else "ERROR"
            return HealthReport(address, Health.UNREACHABLE, f"{name}: {details}")
    return HealthReport(address, _STATUS.get(reply.status, Health.UNKNOWN))


def wait_until_serving(
    address: str,
    timeout: float,
    *,
    service: str = "",
    alive: Callable[[], bool] = lambda: True,
    poll_seconds: float = 0.1,
    call_timeout: float = 2.0,
    credentials: grpc.ChannelCredentials | None = None,
) -> HealthReport:
    """Poll until SERVING, `timeout` seconds pass, or `alive()` turns false (say, the server's
    process exited); returns the last report either way (`credentials` for TLS). The one wait
    the tests, benchmarks and tools share."""
    deadline = time.monotonic() + timeout
    while True:
        report = check_health(address, call_timeout, service, credentials)
        if report.serving or time.monotonic() >= deadline or not alive():
            return report
        time.sleep(poll_seconds)
