"""Admission control: which requests run now, which wait, and which are turned away.

A server has two lanes, each with its own workers and its own bounded FIFO queue:

- **interactive**: cheap reads (searches, key lookups, store info, small Embed / Rerank, Ping).
- **bulk**: writes, scans and anything large (Upsert, deletes, predicate index changes,
  GetByPredicate, requests over `interactive_max_bytes` or with many inputs).

A cheap read therefore never waits behind bulk work: when every bulk worker is busy and the bulk
queue is full, bulk requests are refused while interactive ones still run. A request that finds
its lane's queue full gets RESOURCE_EXHAUSTED at once instead of waiting without bound.

Request bytes held by requests in progress are bounded by a budget (`max_inflight_bytes`): past
it a request is refused with RESOURCE_EXHAUSTED. Bulk requests may fill only the budget less
`interactive_reserve` bytes, so small reads always find room. A request alone on the server is
always admitted (it passed the message size limit already).

Bulk methods are served as client-streaming handlers (the wire format of a unary call is the
same), so a queued bulk request's message stays in the transport, under HTTP/2 flow control,
until a bulk worker takes it: waiting requests hold a thread each but not their bytes.

`Lane` and `ByteBudget` are plain threading; `AdmissionInterceptor` is the gRPC glue.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError

from nachbar.server.errors import Overloaded, RequestError, abort_for

log = logging.getLogger("nachbar.server")

INTERACTIVE = "interactive"
BULK = "bulk"
WAIT_POLL_SECONDS = 0.25  # how often a queued request checks that its caller still waits
EXEMPT_SLOTS = 32  # RPCs beyond the lanes' capacity: health checks, reflection, refusals
MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    interactive_workers: int
    bulk_workers: int
    max_queued: int  # per lane
    max_inflight_bytes: int
    interactive_max_bytes: int

    @property
    def interactive_reserve(self) -> int:
        return self.max_inflight_bytes // 4

    @property
    def max_concurrent_rpcs(self) -> int:
        """Every RPC the server accepts at once, each with its own thread: both lanes' workers
        and queues plus EXEMPT_SLOTS. gRPC refuses RPCs beyond it (RESOURCE_EXHAUSTED)."""
        lanes = self.interactive_workers + self.bulk_workers + 2 * self.max_queued
        return lanes + EXEMPT_SLOTS


@dataclass(frozen=True)
class ServicePolicy:
    """How one gRPC service's methods are sorted into lanes."""

    service: str  # full name, e.g. "nachbar.db.v1.DBService"
    label: str  # the server's name in messages, e.g. "nachbar-db"
    bulk_methods: frozenset[str]
    # Methods whose parsed request says whether it is heavy (e.g. many inputs to embed).
    heavy: Mapping[str, Callable[[Any], bool]] = field(default_factory=dict)


class Lane:
    """At most `workers` requests run at once; up to `max_queued` more wait, first come first
    served; beyond that `enter` raises Overloaded."""

    def __init__(self, name: str, workers: int, max_queued: int, label: str = "the server"):
        if workers < 1 or max_queued < 0:
            raise ValueError(f"lane {name}: need workers >= 1 and max_queued >= 0")
        self.name = name
        self.workers = workers
        self.max_queued = max_queued
        self.label = label
        self._lock = threading.Lock()
        self._running = 0
        self._queue: deque[threading.Condition] = deque()

    @property
    def running(self) -> int:
        return self._running

    @property
    def queued(self) -> int:
        return len(self._queue)

    def full(self) -> bool:
        """No worker free and no room to wait (a hint: the answer may change at once)."""
        return self._running >= self.workers and len(self._queue) >= self.max_queued

    def enter(self, still_wanted: Callable[[], bool] = lambda: True) -> bool:
        """Take a worker, waiting in line for one if needed. False when `still_wanted` turned
        false while waiting (the caller cancelled or its deadline passed)."""
        with self._lock:
            if self._running < self.workers and not self._queue:
                self._running += 1
                return True
            if len(self._queue) >= self.max_queued:
                raise Overloaded(self.refusal())
            turn = threading.Condition(self._lock)
            self._queue.append(turn)
            admitted = False
            try:
                while not (self._queue[0] is turn and self._running < self.workers):
                    if not still_wanted():
                        return False
                    turn.wait(WAIT_POLL_SECONDS)
                self._queue.popleft()
                self._running += 1
                admitted = True
                return True
            finally:
                if not admitted:
                    self._queue.remove(turn)
                self._wake_next()

    def leave(self) -> None:
        with self._lock:
            self._running -= 1
            self._wake_next()

    def _wake_next(self) -> None:
        if self._queue and self._running < self.workers:
            self._queue[0].notify()

    def refusal(self) -> str:
        flag = "--bulk-workers" if self.name == BULK else "--workers"
        advice = "retry with backoff" + (", or send smaller batches" if self.name == BULK else "")
        return (
            f"{self.label} is busy: all {self.workers} {self.name} workers ({flag}) are taken "
            f"and {self.max_queued} requests wait for them, the most it queues (--max-queued); "
            f"{advice}"
        )


class ByteBudget:
    """Bytes of request messages held by requests in progress, bounded by `limit`; bulk
    requests leave `reserve` of it to interactive ones."""

    def __init__(self, limit: int, reserve: int, label: str = "the server") -> None:
        self.limit = limit
        self.reserve = reserve
        self.label = label
        self._lock = threading.Lock()
        self._held = 0

    @property
    def held(self) -> int:
        return self._held

    def take(self, size: int, *, bulk: bool) -> None:
        cap = self.limit - self.reserve if bulk else self.limit
        with self._lock:
            if self._held and self._held + size > cap:
                raise Overloaded(
                    f"{self.label} is holding {self._held / MIB:.1f} MiB of requests in "
                    f"progress and this one adds {size / MIB:.1f} MiB, over its "
                    f"{cap / MIB:.0f} MiB budget for {'bulk' if bulk else 'all'} requests "
                    "(--max-inflight-bytes); retry with backoff, or send smaller batches"
                )
            self._held += size

    def give_back(self, size: int) -> None:
        with self._lock:
            self._held -= size

    @contextmanager
    def holding(self, size: int, *, bulk: bool) -> Iterator[None]:
        self.take(size, bulk=bulk)
        try:
            yield
        finally:
            self.give_back(size)


class Admission:
    """The lanes and the byte budget of one server."""

    def __init__(self, limits: Limits, label: str) -> None:
        self.limits = limits
        self.interactive = Lane(INTERACTIVE, limits.interactive_workers, limits.max_queued, label)
        self.bulk = Lane(BULK, limits.bulk_workers, limits.max_queued, label)
        self.budget = ByteBudget(limits.max_inflight_bytes, limits.interactive_reserve, label)

    def describe(self) -> str:
        limits = self.limits
        return (
            f"{limits.interactive_workers} interactive + {limits.bulk_workers} bulk workers, "
            f"{limits.max_queued} queued per lane, {limits.max_inflight_bytes / MIB:.0f} MiB "
            "of requests in flight"
        )

    @contextmanager
    def running_in(self, lane: Lane, context: grpc.ServicerContext) -> Iterator[None]:
        """Hold a worker of `lane` for the block, waiting in its queue while the caller waits."""
        if not lane.enter(context.is_active):
            # The client cancelled or its deadline passed: it has its status already.
            context.abort(grpc.StatusCode.CANCELLED, "the caller left while the request waited")
        try:
            yield
        finally:
            lane.leave()


# --- gRPC glue ------------------------------------------------------------------------------


# grpc's classes are generic only in its type stubs.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Call = Callable[[Any, grpc.ServicerContext], Any]
Parse = Callable[[bytes], Any]
if TYPE_CHECKING:
    _Interceptor = grpc.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.ServerInterceptor


class AdmissionInterceptor(_Interceptor):
    """Runs every unary method of the given services through the admission lanes; other
    services (health, reflection) pass through untouched."""

    def __init__(self, admission: Admission, policies: list[ServicePolicy]) -> None:
        self._admission = admission
        self._policies = {p.service: p for p in policies}
        # Per method: the lane it queues in (None: not admission-controlled) and its handler.
        self._handlers: dict[str, tuple[Lane | None, Handler]] = {}
        self._refusals = {
            lane.name: _refusing(lane) for lane in (admission.interactive, admission.bulk)
        }

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        # This runs on gRPC's serving thread: peek only, never block or hold anything here.
        known = self._handlers.get(handler_call_details.method)
        if known is None:
            handler = continuation(handler_call_details)
            if handler is None:
                return None  # unknown method: not remembered, gRPC answers UNIMPLEMENTED
            known = self._wrap(handler_call_details.method, handler)
            self._handlers[handler_call_details.method] = known
        lane, handler = known
        if lane is not None and lane.full():
            return self._refusals[lane.name]
        return handler

    def _wrap(self, full_method: str, handler: Handler) -> tuple[Lane | None, Handler]:
        service, _, method = full_method.lstrip("/").rpartition("/")
        policy = self._policies.get(service)
        call, parse = handler.unary_unary, handler.request_deserializer
        if policy is None or handler.request_streaming or call is None or parse is None:
            return None, handler
        if method in policy.bulk_methods:
            return self._admission.bulk, grpc.stream_unary_rpc_method_handler(
                self._bulk_behavior(call, parse, method),
                response_serializer=handler.response_serializer,
            )
        return self._admission.interactive, grpc.unary_unary_rpc_method_handler(
            self._sized_behavior(call, parse, method, policy.heavy.get(method)),
            response_serializer=handler.response_serializer,
        )

    def _bulk_behavior(
        self, call: Call, parse: Parse, method: str
    ) -> Callable[[Iterator[bytes], grpc.ServicerContext], Any]:
        admission = self._admission

        def behavior(messages: Iterator[bytes], context: grpc.ServicerContext) -> Any:
            try:
                with admission.running_in(admission.bulk, context):
                    raw = next(messages, None)  # read only now: queued requests hold no bytes
                    if raw is None:
                        raise RequestError(f"{method} needs exactly one request message")
                    with admission.budget.holding(len(raw), bulk=True):
                        return call(_parsed(parse, method, raw), context)
            except (Overloaded, RequestError) as error:
                abort_for(context, error, method)

        return behavior

    def _sized_behavior(
        self, call: Call, parse: Parse, method: str, heavy: Callable[[Any], bool] | None
    ) -> Callable[[bytes, grpc.ServicerContext], Any]:
        admission = self._admission

        def behavior(raw: bytes, context: grpc.ServicerContext) -> Any:
            large = len(raw) > admission.limits.interactive_max_bytes
            try:
                with admission.budget.holding(len(raw), bulk=large):
                    request = _parsed(parse, method, raw)
                    bulk = large or (heavy is not None and heavy(request))
                    with admission.running_in(
                        admission.bulk if bulk else admission.interactive, context
                    ):
                        return call(request, context)
            except (Overloaded, RequestError) as error:
                abort_for(context, error, method)

        return behavior


def _parsed(parse: Parse, method: str, raw: bytes) -> Any:
    try:
        return parse(raw)
    except DecodeError as error:
        raise RequestError(
            f"{method}: the request is not a valid protobuf message ({error}); send the message "
            "type the .proto file declares"
        ) from None


def _refusing(lane: Lane) -> Handler:
    def refuse(_messages: Iterator[bytes], context: grpc.ServicerContext) -> None:
        abort_for(context, Overloaded(lane.refusal()), lane.name)

    return grpc.stream_unary_rpc_method_handler(refuse)
