"""How a client of either service turns an address into a gRPC channel: one place for the
Python client, the CLI and nachbar-ai's channel to nachbar-db (the TypeScript client has the
same rules in `clients/typescript/src/call.ts`).

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
from collections.abc import Sequence
from typing import Any

DB_SERVICE = "nachbar.db.v1.DBService"
AI_SERVICE = "nachbar.ai.v1.AIService"
# Calls whose repetition leaves the same state (Upsert replaces by id), retried on UNAVAILABLE.
# Creates, drops and deletes are not: a retry could report a different outcome.
IDEMPOTENT_METHODS = {
    DB_SERVICE: (
        "ListStores",
        "GetStore",
        "Upsert",
        "GetKey",
        "GetByPredicate",
        "GetSimN",
        "Info",
        "Ping",
    ),
    AI_SERVICE: (
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
ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


class AddressError(ValueError):
    """An address that names no server; the message says what to give instead."""


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
    servers to balance over. AddressError for an address without a server or port."""
    if isinstance(address, str):
        if "://" in address or address.split(":", 1)[0] in {"dns", "ipv4", "ipv6", "unix"}:
            return address, True  # a gRPC target: its resolver may yield several addresses
        parts = [part.strip() for part in address.split(",") if part.strip()]
    else:
        parts = [str(part).strip() for part in address]
    if not parts:
        raise AddressError(f"no server address in {address!r}; give host:port")
    if len(parts) == 1:
        return parts[0], False
    # gRPC's multi-address targets take IP literals of one family: resolve names here.
    hosts: list[str] = []
    for part in parts:
        host, sep, port = part.rpartition(":")
        if not sep or not port.isdigit():
            raise AddressError(f"address {part!r} has no port; give host:port")
        hosts.extend(f"{ip}:{port}" for ip in _resolve(host.strip("[]")))
    family = "ipv6" if any(h.startswith("[") for h in hosts) else "ipv4"
    if family == "ipv6" and not all(h.startswith("[") for h in hosts):
        raise AddressError(
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
        raise AddressError(f"cannot resolve {host!r}: {error}") from None
    return sorted({str(info[4][0]) for info in infos})


def channel_options(address: str | Sequence[str], service: str) -> tuple[str, list[Any]]:
    """The target and the channel options (retries, balancing) for `service` at `address`."""
    target, balance = channel_target(address)
    options: list[Any] = [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config(service, balance=balance)),
    ]
    return target, options
