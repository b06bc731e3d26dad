"""The one server interceptor: API keys, metrics, traces and request ids around every RPC.

It wraps each method's handler once (cached) and, per call:
1. sets the request id for the logs: the caller's `x-request-id`, or a new one when tracing;
2. opens a server span whose parent is the caller's W3C `traceparent` (when tracing is on);
3. checks the API key: missing or unknown -> UNAUTHENTICATED; a role or store scope that does
   not cover the call -> PERMISSION_DENIED (health checks stay open);
4. runs the method, and for ListStores drops the stores outside the key's scope;
5. counts the outcome by status code, with latency and in-flight gauges.

A small interceptor instead of opentelemetry-instrumentation-grpc: the auth and metrics need
the same hook anyway, and one wrapper costs one set of per-call work instead of three.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import propagate, trace

from nachbar.server.auth import (
    OPEN_SERVICES,
    ApiKey,
    KeyRing,
    PermissionDeniedError,
    Role,
    UnauthenticatedError,
    authorize,
    bearer_token,
    required_role,
)
from nachbar.server.errors import status_for
from nachbar.server.logs import REQUEST_ID
from nachbar.server.metrics import RequestMetrics
from nachbar.server.tracing import tracer

if TYPE_CHECKING:  # generic only in the type stubs
    Handler = grpc.RpcMethodHandler[Any, Any]
    _Interceptor = grpc.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    _Interceptor = grpc.ServerInterceptor
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# Server-side failures worth an error status on the span (client mistakes are not).
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


@dataclass(frozen=True)
class _Method:
    service: str
    name: str
    open: bool  # no key needed
    role: Role

    @property
    def full_name(self) -> str:
        return f"{self.service}/{self.name}"


def _parse(path: str) -> _Method:
    service, _, name = path.lstrip("/").rpartition("/")
    return _Method(service, name, service in OPEN_SERVICES, required_role(name))


@dataclass
class _Metadata:
    authorization: str | None = None
    request_id: str | None = None
    carrier: dict[str, str] | None = None

    @staticmethod
    def read(context: grpc.ServicerContext) -> _Metadata:
        found = _Metadata()
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                found.authorization = value if isinstance(value, str) else None
            elif key == "x-request-id" and isinstance(value, str) and _REQUEST_ID.match(value):
                found.request_id = value
            elif key in ("traceparent", "tracestate") and isinstance(value, str):
                if found.carrier is None:
                    found.carrier = {}
                found.carrier[key] = value
        return found


def _store_of(request: Any) -> str | None:
    """The store a request names (most requests have a `store` field); None if it has none."""
    descriptor = getattr(request, "DESCRIPTOR", None)
    if descriptor is None or "store" not in descriptor.fields_by_name:
        return None
    return str(request.store)


def _keep_in_scope(response: Any, key: ApiKey) -> None:
    if key.stores and hasattr(response, "stores"):
        kept = [s for s in response.stores if key.allows_store(s.name)]
        del response.stores[:]
        response.stores.extend(kept)


class RequestInterceptor(_Interceptor):
    def __init__(
        self,
        *,
        keys: KeyRing | None = None,
        metrics: RequestMetrics | None = None,
        traced: bool = False,
    ) -> None:
        self._keys = keys
        self._metrics = metrics
        self._tracer = tracer() if traced else None
        self._lock = threading.Lock()
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = continuation(details)
        if handler is None:
            return None
        path: str = details.method
        cached = self._wrapped.get(path)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(_parse(path), handler)
        with self._lock:
            self._wrapped[path] = (handler, wrapped)
        return wrapped

    # -- per call -----------------------------------------------------------------------------

    def _authenticate(
        self, method: _Method, metadata: _Metadata, context: grpc.ServicerContext
    ) -> ApiKey | None:
        if self._keys is None or method.open:
            return None
        try:
            return self._keys.authenticate(bearer_token(metadata.authorization))
        except UnauthenticatedError as error:
            context.abort(status_for(error) or grpc.StatusCode.UNAUTHENTICATED, str(error))
            raise  # unreachable: abort raises

    def _authorize(
        self, method: _Method, key: ApiKey, request: Any, context: grpc.ServicerContext
    ) -> None:
        try:
            authorize(key, method.name, method.role, _store_of(request))
        except PermissionDeniedError as error:
            context.abort(status_for(error) or grpc.StatusCode.PERMISSION_DENIED, str(error))

    def _finish(
        self,
        method: _Method,
        context: grpc.ServicerContext,
        started: float,
        failed: bool,
    ) -> grpc.StatusCode:
        code = context.code()  # type: ignore[attr-defined]  # grpc has it; the stubs lack it
        if not isinstance(code, grpc.StatusCode):
            code = grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
        if self._metrics is not None:
            seconds = time.perf_counter() - started
            self._metrics.finished(method.service, method.name, code, seconds)
        return code

    def _span(
        self, method: _Method, metadata: _Metadata, request_id: str | None
    ) -> AbstractContextManager[Any]:
        if self._tracer is None:
            return contextlib.nullcontext()
        return self._traced(self._tracer, method, metadata, request_id or "")

    @staticmethod
    @contextlib.contextmanager
    def _traced(
        tracer: trace.Tracer, method: _Method, metadata: _Metadata, request_id: str
    ) -> Iterator[Any]:
        parent = propagate.extract(metadata.carrier) if metadata.carrier else None
        with tracer.start_as_current_span(
            method.full_name,
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": method.service,
                "rpc.method": method.name,
                "nachbar.request_id": request_id,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield span

    def _wrap(self, method: _Method, handler: Handler) -> Handler:
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(method, handler.stream_unary, streamed_request=True),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        assert handler.stream_stream is not None  # one of the four is always set
        return grpc.stream_stream_rpc_method_handler(
            self._streaming(method, handler.stream_stream, streamed_request=True),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _begin(self, method: _Method) -> float:
        if self._metrics is not None:
            self._metrics.started(method.service, method.name)
        return time.perf_counter()

    def _unary(
        self, method: _Method, behavior: Callable[..., Any], *, streamed_request: bool = False
    ) -> Callable[[Any, grpc.ServicerContext], Any]:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            started = self._begin(method)
            metadata = _Metadata.read(context)
            # Ids for the logs: the caller's, or a new one when tracing (a new one costs ~2 us).
            request_id = metadata.request_id
            if request_id is None and self._tracer is not None:
                request_id = secrets.token_hex(6)
            token = REQUEST_ID.set(request_id) if request_id is not None else None
            failed = True
            try:
                with self._span(method, metadata, request_id) as span:
                    try:
                        key = self._authenticate(method, metadata, context)
                        if key is not None:
                            scoped = None if streamed_request else request
                            self._authorize(method, key, scoped, context)
                        response = behavior(request, context)
                        if key is not None and method.name == "ListStores":
                            _keep_in_scope(response, key)
                        failed = False
                        return response
                    finally:
                        code = self._finish(method, context, started, failed)
                        if span is not None:
                            span.set_attribute("rpc.grpc.status_code", code.value[0])
                            if code in _SERVER_ERRORS:
                                span.set_status(trace.StatusCode.ERROR, code.name)
            finally:
                if token is not None:
                    REQUEST_ID.reset(token)

        return handle

    def _streaming(
        self, method: _Method, behavior: Callable[..., Any], *, streamed_request: bool = False
    ) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
        # Streams (health Watch, reflection) get keys and metrics; they carry no store.
        def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            started = self._begin(method)
            try:
                key = self._authenticate(method, _Metadata.read(context), context)
                if key is not None:
                    self._authorize(method, key, None if streamed_request else request, context)
                responses = behavior(request, context)
            except BaseException:
                self._finish(method, context, started, True)
                raise
            return self._counted(method, context, started, responses)

        return handle

    def _counted(
        self,
        method: _Method,
        context: grpc.ServicerContext,
        started: float,
        responses: Iterator[Any],
    ) -> Iterator[Any]:
        failed = True
        try:
            yield from responses
            failed = False
        finally:
            self._finish(method, context, started, failed)
