"""Channel setup and call execution shared by every client: TLS, API keys, trace context.
Addresses, balancing over replicas and retries follow `nachbar.v1.targets`."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypedDict, TypeVar

import grpc
import grpc.aio
from opentelemetry import propagate, trace

from nachbar.client.errors import InvalidArgument, NachbarError, Unavailable, from_rpc_error
from nachbar.v1 import defaults, targets

T = TypeVar("T")

DEFAULT_TIMEOUT = defaults.TIMEOUT_SECONDS
MAX_MESSAGE_BYTES = defaults.MAX_MESSAGE_BYTES
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]
API_KEY_ENV = "NACHBAR_API_KEY"
_tracer = trace.get_tracer("nachbar.client")


class ConnectionKwargs(TypedDict, total=False):
    """How a client authenticates, taken by every client constructor.

    api_key: sent as `authorization: Bearer <key>`; None reads NACHBAR_API_KEY, "" sends none.
    tls: use TLS with the system's CAs (implied by any of the files below).
    tls_ca: PEM file of the CA that signed the server's certificate.
    tls_client_cert, tls_client_key: PEM files of this client's certificate and key, for
    servers that require mutual TLS.
    """

    api_key: str | None
    tls: bool
    tls_ca: str | Path | None
    tls_client_cert: str | Path | None
    tls_client_key: str | Path | None


def _read(path: str | Path | None, option: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise InvalidArgument(f"{option} {path}: cannot read it ({error.strerror})") from None


@dataclass(frozen=True)
class Connection:
    address: str
    api_key: str = field(default="", repr=False)
    tls: bool = False
    tls_ca: str | Path | None = None
    tls_client_cert: str | Path | None = None
    tls_client_key: str | Path | None = None

    @staticmethod
    def of(address: str, options: ConnectionKwargs) -> Connection:
        api_key = options.get("api_key")
        if api_key is None:
            api_key = os.environ.get(API_KEY_ENV, "")
        ca, cert, key = (
            options.get("tls_ca"),
            options.get("tls_client_cert"),
            options.get("tls_client_key"),
        )
        if (cert is None) != (key is None):
            raise InvalidArgument("tls_client_cert and tls_client_key go together; pass both")
        return Connection(
            address,
            api_key.strip(),
            bool(options.get("tls")) or ca is not None or cert is not None,
            ca,
            cert,
            key,
        )

    def credentials(self) -> grpc.ChannelCredentials | None:
        if not self.tls:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.tls_ca, "tls_ca"),
            private_key=_read(self.tls_client_key, "tls_client_key"),
            certificate_chain=_read(self.tls_client_cert, "tls_client_cert"),
        )

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()

    def channel(self, service: str) -> grpc.Channel:
        """A channel to `service` at this address (several replicas: balanced, with retries)."""
        target, options = channel_options(self.address, service)
        credentials = self.credentials()
        if credentials is None:
            return grpc.insecure_channel(target, options=options)
        return grpc.secure_channel(target, credentials, options=options)

    def aio_channel(self, service: str) -> grpc.aio.Channel:
        target, options = channel_options(self.address, service)
        credentials = self.credentials()
        if credentials is None:
            return grpc.aio.insecure_channel(target, options=options)
        return grpc.aio.secure_channel(target, credentials, options=options)

    def explain(self, error: NachbarError) -> NachbarError:
        """gRPC's words for a failed TLS handshake, turned into what to do about it."""
        if not isinstance(error, Unavailable):
            return error
        text = error.message
        hint = ""
        if "CERTIFICATE_VERIFY_FAILED" in text:
            hint = (
                "the server's certificate is not signed by a CA this client trusts; pass the CA "
                "that signed it (tls_ca=..., CLI --tls-ca or NACHBAR_TLS_CA)"
            )
        elif "WRONG_VERSION_NUMBER" in text:
            hint = (
                "the server does not speak TLS; drop the TLS options, or start the server with "
                "--tls-cert and --tls-key"
            )
        elif "Peer name" in text and "not in peer certificate" in text:
            hint = (
                "the server's certificate does not name this address; connect by a name the "
                "certificate lists, or reissue it with this host in its subject alternative names"
            )
        elif text.endswith("Socket closed") and self.tls:
            hint = (
                "the server closed the connection during the TLS handshake: under mutual TLS it "
                "needs a client certificate signed by its --tls-client-ca "
                "(tls_client_cert/tls_client_key, CLI --tls-client-cert/--tls-client-key)"
            )
        elif text.endswith("Socket closed"):
            hint = (
                "the server closed the connection during setup; if it serves TLS, pass the CA "
                "that signed its certificate (tls_ca=..., CLI --tls-ca or NACHBAR_TLS_CA)"
            )
        if not hint:
            return error
        return Unavailable(f"TLS handshake with {self.address} failed: {hint} ({text})")


def _trace_context(
    service: str, method: str
) -> tuple[trace.Span | None, tuple[tuple[str, str], ...]]:
    """A client span and the W3C trace context to send, when an application traces at all:
    without a configured tracer provider this costs one type check instead of ~30 us."""
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return None, ()
    span = _tracer.start_span(
        f"{service}/{method}",
        kind=trace.SpanKind.CLIENT,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
    )
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return span, tuple(carrier.items())


def _end(span: trace.Span | None, error: grpc.RpcError | None) -> None:
    if span is None:
        return
    if error is not None:
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        span.set_status(trace.StatusCode.ERROR, code.name)
    else:
        span.set_attribute("rpc.grpc.status_code", 0)
    span.end()


def _service_name(stub_cls: Callable[..., Any]) -> str:
    # Generated stubs are named after the service (DBServiceStub); the full name is in their
    # module's descriptor.
    module = __import__(stub_cls.__module__.replace("_grpc", ""), fromlist=["DESCRIPTOR"])
    name = stub_cls.__name__.removesuffix("Stub")
    return str(module.DESCRIPTOR.services_by_name[name].full_name)


def channel_options(address: str | Sequence[str], service: str) -> tuple[str, list[Any]]:
    try:
        target, options = targets.channel_options(address, service)
    except targets.AddressError as error:
        raise InvalidArgument(str(error)) from None
    return target, [*CHANNEL_OPTIONS, *options]


class SyncCaller:
    def __init__(
        self, connection: Connection, stub_cls: Callable[[grpc.Channel], Any], timeout: float
    ) -> None:
        self.connection = connection
        self.address = connection.address
        self.service = _service_name(stub_cls)
        self.channel = connection.channel(self.service)
        self.stub = stub_cls(self.channel)
        self.timeout = timeout
        self._metadata = connection.metadata()

    def call(
        self, method: str, request: Any, parse: Callable[[Any], T], timeout: float | None
    ) -> T:
        span, trace_metadata = _trace_context(self.service, method)
        try:
            response = getattr(self.stub, method)(
                request,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata + trace_metadata,
            )
        except grpc.RpcError as error:
            _end(span, error)
            raise self.connection.explain(from_rpc_error(error)) from None
        _end(span, None)
        return parse(response)

    def close(self) -> None:
        self.channel.close()


class AsyncCaller:
    def __init__(
        self, connection: Connection, stub_cls: Callable[[Any], Any], timeout: float
    ) -> None:
        self.connection = connection
        self.address = connection.address
        self.service = _service_name(stub_cls)
        self.channel = connection.aio_channel(self.service)
        self.stub = stub_cls(self.channel)
        self.timeout = timeout
        self._metadata = connection.metadata()

    async def call(
        self, method: str, request: Any, parse: Callable[[Any], T], timeout: float | None
    ) -> T:
        span, trace_metadata = _trace_context(self.service, method)
        try:
            response = await getattr(self.stub, method)(
                request,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata + trace_metadata,
            )
        except grpc.RpcError as error:
            _end(span, error)
            raise self.connection.explain(from_rpc_error(error)) from None
        _end(span, None)
        return parse(response)

    async def close(self) -> None:
        await self.channel.close(None)


class SyncClient:
    """Connection and context-manager plumbing shared by the blocking clients."""

    def __init__(
        self,
        address: str,
        stub_cls: Callable[[grpc.Channel], Any],
        timeout: float,
        connection: ConnectionKwargs,
    ):
        self._caller = SyncCaller(Connection.of(address, connection), stub_cls, timeout)
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

    def __init__(
        self,
        address: str,
        stub_cls: Callable[[Any], Any],
        timeout: float,
        connection: ConnectionKwargs,
    ):
        self._caller = AsyncCaller(Connection.of(address, connection), stub_cls, timeout)
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
