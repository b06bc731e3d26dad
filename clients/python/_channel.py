"""Channel setup and call execution shared by every client.

An address is one server ("host:port"), several replicas ("host1:1370,host2:1370", or a list),
or any gRPC target with a scheme ("dns:///nachbar-ai:1370" resolves a name to all its
addresses). With several, calls are spread round-robin (gRPC's `round_robin` policy) and a
replica that stops is skipped. Idempotent calls that fail with UNAVAILABLE (a replica went away,
a server could not reach its backend) are retried with backoff by gRPC's retry policy, set in the
channel's service config like the balancing policy.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
import grpc.aio

from nachbar.client.errors import InvalidArgument, from_rpc_error

T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]
# Calls whose repetition leaves the same state (Upsert replaces by id), retried on UNAVAILABLE.
# Creates, drops and deletes are not: a retry could report a different outcome.
IDEMPOTENT_METHODS = {
    "nachbar.db.v1.DBService": (
        "ListStores",
        "GetStore",
        "Upsert",
        "GetKey",
        "GetByPredicate",
        "GetSimN",
        "Info",
        "Ping",
    ),
    "nachbar.ai.v1.AIService": (
        "ListStores",
        "GetStore",
        "Upsert",
        "GetSimN",
        "GetKey",
        "GetByPredicate",
        "Embed",
        "Rerank",
        "ListModels",
        "Info",
        "Ping",
    ),
}
RETRY_POLICY = {
    "maxAttempts": 5,
    "initialBackoff": "0.05s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def service_config(service: str, *, balance: bool) -> str:
    """The gRPC service config: retries for idempotent calls, round-robin when `balance`."""
    config: dict[str, Any] = {
        "methodConfig": [
            {
                "name": [{"service": service, "method": m} for m in IDEMPOTENT_METHODS[service]],
                "retryPolicy": RETRY_POLICY,
            }
        ]
    }
    if balance:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
    return json.dumps(config)


def channel_target(address: str | Sequence[str]) -> tuple[str, bool]:
    """The gRPC target for an address (see the module docstring) and whether it names several
    servers to balance over."""
    if isinstance(address, str):
        if "://" in address or address.split(":", 1)[0] in {"dns", "ipv4", "ipv6", "unix"}:
            return address, True  # a gRPC target: its resolver may yield several addresses
        parts = [part.strip() for part in address.split(",") if part.strip()]
    else:
        parts = [str(part).strip() for part in address]
    if not parts:
        raise InvalidArgument(f"no server address in {address!r}; give host:port")
    if len(parts) == 1:
        return parts[0], False
    # gRPC's multi-address targets take IP literals of one family: resolve names here.
    hosts: list[str] = []
    for part in parts:
        host, sep, port = part.rpartition(":")
        if not sep or not port.isdigit():
            raise InvalidArgument(f"address {part!r} has no port; give host:port")
        hosts.extend(f"{ip}:{port}" for ip in _resolve(host.strip("[]")))
    family = "ipv6" if any(h.startswith("[") for h in hosts) else "ipv4"
    if family == "ipv6" and not all(h.startswith("[") for h in hosts):
        raise InvalidArgument(
            f"addresses {address!r} mix IPv4 and IPv6; list one family or use a dns:/// name"
        )
    return f"{family}:{','.join(hosts)}", True


def _resolve(host: str) -> list[str]:
    try:
        ip = ipaddress.ip_address(host)
        return [f"[{ip}]" if ip.version == 6 else str(ip)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError as error:
        raise InvalidArgument(f"cannot resolve {host!r}: {error}") from None
    return sorted({str(info[4][0]) for info in infos})


def channel_options(address: str | Sequence[str], service: str) -> tuple[str, list[Any]]:
    target, balance = channel_target(address)
    options: list[Any] = [
        *CHANNEL_OPTIONS,
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config(service, balance=balance)),
    ]
    return target, options


def _service_name(stub_cls: Callable[..., Any]) -> str:
    # The generated stubs are named <Service>Stub; the service's full name is in the module.
    return (
        "nachbar.db.v1.DBService" if "DBService" in stub_cls.__name__ else "nachbar.ai.v1.AIService"
    )


class SyncCaller:
    def __init__(
        self, address: str, stub_cls: Callable[[grpc.Channel], Any], timeout: float
    ) -> None:
        self.address = address
        target, options = channel_options(address, _service_name(stub_cls))
        self.channel = grpc.insecure_channel(target, options=options)
        self.stub = stub_cls(self.channel)
        self.timeout = timeout

    def call(
        self, method: str, request: Any, parse: Callable[[Any], T], timeout: float | None
    ) -> T:
        try:
            response = getattr(self.stub, method)(
                request, timeout=self.timeout if timeout is None else timeout
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return parse(response)

    def close(self) -> None:
        self.channel.close()


class AsyncCaller:
    def __init__(self, address: str, stub_cls: Callable[[Any], Any], timeout: float) -> None:
        self.address = address
        target, options = channel_options(address, _service_name(stub_cls))
        self.channel = grpc.aio.insecure_channel(target, options=options)
        self.stub = stub_cls(self.channel)
        self.timeout = timeout

    async def call(
        self, method: str, request: Any, parse: Callable[[Any], T], timeout: float | None
    ) -> T:
        try:
            response = await getattr(self.stub, method)(
                request, timeout=self.timeout if timeout is None else timeout
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return parse(response)

    async def close(self) -> None:
        await self.channel.close(None)


class SyncClient:
    """Connection and context-manager plumbing shared by the blocking clients."""

    def __init__(self, address: str, stub_cls: Callable[[grpc.Channel], Any], timeout: float):
        self._caller = SyncCaller(address, stub_cls, timeout)
        self.address = address

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._caller.close()


class AsyncClient:
    """Connection and context-manager plumbing shared by the asyncio clients."""

    def __init__(self, address: str, stub_cls: Callable[[Any], Any], timeout: float):
        self._caller = AsyncCaller(address, stub_cls, timeout)
        self.address = address

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._caller.close()
