"""Channel setup and call execution shared by every client. Addresses, balancing over
replicas and retries follow `nachbar.v1.targets`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
import grpc.aio

from nachbar.client.errors import InvalidArgument, from_rpc_error
from nachbar.v1 import defaults, targets

T = TypeVar("T")

DEFAULT_TIMEOUT = defaults.TIMEOUT_SECONDS
MAX_MESSAGE_BYTES = defaults.MAX_MESSAGE_BYTES
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


def channel_options(address: str | Sequence[str], service: str) -> tuple[str, list[Any]]:
    try:
        target, options = targets.channel_options(address, service)
    except targets.AddressError as error:
        raise InvalidArgument(str(error)) from None
    return target, [*CHANNEL_OPTIONS, *options]


def _service_name(stub_cls: Callable[..., Any]) -> str:
    # The generated stubs are named <Service>Stub; the service's full name is in the module.
    return targets.DB_SERVICE if "DBService" in stub_cls.__name__ else targets.AI_SERVICE


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
