"""The server interceptors: API keys, metrics, traces and request ids around every RPC.

`RequestInterceptor` runs before admission control (server/admission.py), on the request still
in bytes, so a call without a valid key takes no queue slot and no byte budget. Per call it
1. sets the request id for the logs and error messages: the caller's `x-request-id`, or a new
   one when tracing (otherwise one is made only if the call fails, by errors.abort_for);
2. opens a server span whose parent is the caller's W3C `traceparent` (when tracing is on);
3. checks the API key: missing or unknown -> UNAUTHENTICATED; a role that does not cover the
   method -> PERMISSION_DENIED (health checks stay open);
4. counts the outcome by status code, admission's RESOURCE_EXHAUSTED refusals included, with
   latency and in-flight gauges.

`ScopeInterceptor` runs after admission, on the parsed request: a key limited to some stores
may name only those (PERMISSION_DENIED otherwise), and ListStores shows it only those.

Small interceptors instead of opentelemetry-instrumentation-grpc: the auth and metrics need
the same hook anyway, and one wrapper costs one set of per-call work instead of three.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from contextvars import ContextVar
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
from nachbar.server.errors import abort_for
from nachbar.server.logs import REQUEST_ID, REQUEST_ID_HEADER, new_request_id, valid_request_id
from nachbar.server.metrics import RequestMetrics
from nachbar.server.tracing import tracer

if TYPE_CHECKING:  # generic only in the type stubs
    Handler = grpc.RpcMethodHandler[Any, Any]
    _Interceptor = grpc.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    _Interceptor = grpc.ServerInterceptor
# The caller's key, from RequestInterceptor to ScopeInterceptor (one thread serves a call).
CALLER_KEY: ContextVar[ApiKey | None] = ContextVar("nachbar_caller_key", default=None)
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
            elif key == REQUEST_ID_HEADER:
                found.request_id = valid_request_id(value)
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


class _WrappingInterceptor(_Interceptor):
    """Wraps each handler once: per method path, per handler the next interceptor returns
    (admission returns a refusing handler instead of the method's while a lane is full)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wrapped: dict[tuple[str, int], tuple[Handler, Handler]] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = continuation(details)
        if handler is None:
            return None
        path: str = details.method
        cached = self._wrapped.get((path, id(handler)))
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(_parse(path), handler)
        with self._lock:
            self._wrapped[(path, id(handler))] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: _Method, handler: Handler) -> Handler:
        raise NotImplementedError


class RequestInterceptor(_WrappingInterceptor):
    def __init__(
        self,
        *,
        keys: KeyRing | None = None,
        metrics: RequestMetrics | None = None,
        traced: bool = False,
    ) -> None:
        super().__init__()
        self._keys = keys
        self._metrics = metrics
        self._tracer = tracer() if traced else None

    # -- per call -----------------------------------------------------------------------------

    def _authenticate(
        self, method: _Method, metadata: _Metadata, context: grpc.ServicerContext
    ) -> ApiKey | None:
        """The caller's key, its role checked against the method; None when keys are off or
        the method is open. Aborts the call otherwise."""
        if self._keys is None or method.open:
            return None
        try:
            key = self._keys.authenticate(bearer_token(metadata.authorization))
            authorize(key, method.name, method.role, None)  # stores: ScopeInterceptor
        except (UnauthenticatedError, PermissionDeniedError) as error:
            abort_for(context, error, method.name)
        return key

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
        # Admission serves bulk methods as stream-unary handlers on raw bytes: the request is
        # passed through as it comes, whatever its form.
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
                self._unary(method, handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        assert handler.stream_stream is not None  # one of the four is always set
        return grpc.stream_stream_rpc_method_handler(
            self._streaming(method, handler.stream_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _begin(self, method: _Method) -> float:
        if self._metrics is not None:
            self._metrics.started(method.service, method.name)
        return time.perf_counter()

    def _unary(
        self, method: _Method, behavior: Callable[..., Any]
    ) -> Callable[[Any, grpc.ServicerContext], Any]:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            started = self._begin(method)
            metadata = _Metadata.read(context)
            # The caller's id, or a new one when tracing (a new one costs ~2 us); without
            # either, errors.abort_for makes one if the call fails.
            request_id = metadata.request_id
            if request_id is None and self._tracer is not None:
                request_id = new_request_id()
            id_token = REQUEST_ID.set(request_id)
            key_token = None
            failed = True
            try:
                with self._span(method, metadata, request_id) as span:
                    try:
                        key = self._authenticate(method, metadata, context)
                        if key is not None:
                            key_token = CALLER_KEY.set(key)
                        response = behavior(request, context)
                        failed = False
                        return response
                    finally:
                        code = self._finish(method, context, started, failed)
                        if span is not None:
                            span.set_attribute("rpc.grpc.status_code", code.value[0])
                            if code in _SERVER_ERRORS:
                                span.set_status(trace.StatusCode.ERROR, code.name)
            finally:
                if key_token is not None:
                    CALLER_KEY.reset(key_token)
                REQUEST_ID.reset(id_token)

        return handle

    def _streaming(
        self, method: _Method, behavior: Callable[..., Any]
    ) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
        # Streams (health Watch, reflection) get keys and metrics; they carry no store.
        def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            started = self._begin(method)
            try:
                self._authenticate(method, _Metadata.read(context), context)
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


class ScopeInterceptor(_WrappingInterceptor):
    """Store scopes of the caller's key (CALLER_KEY), on parsed unary requests."""

    def _wrap(self, method: _Method, handler: Handler) -> Handler:
        call = handler.unary_unary
        if method.open or call is None:
            return handler  # streams (health, reflection) name no store
        lists_stores = method.name == "ListStores"

        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            key = CALLER_KEY.get()
            if key is None or not key.stores:
                return call(request, context)
            store = _store_of(request)
            if store is not None and not key.allows_store(store):
                try:
                    authorize(key, method.name, method.role, store)
                except PermissionDeniedError as error:
                    abort_for(context, error, method.name)
            response = call(request, context)
            if lists_stores:
                _keep_in_scope(response, key)
            return response

        return grpc.unary_unary_rpc_method_handler(
            handle,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
