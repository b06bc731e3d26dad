"""Prometheus metrics, served at http://METRICS_HOST:METRICS_PORT/metrics when --metrics-port
is given (off by default; the endpoint has no authentication, so it listens on loopback unless
--metrics-host says otherwise).

Each server keeps its own registry, so several servers can run in one process (as in tests).
Per-request families are resolved to their label children once per (method, code), because
`labels()` costs a lock and a dict lookup on every call otherwise.
"""

from __future__ import annotations

import collections
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import version
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

if TYPE_CHECKING:  # the db server must not import the model runtime, nor the ai the engine
    from nachbar.ai.models import ModelManager
    from nachbar.db.engine import Database
    from nachbar.server.admission import Admission

# Seconds; from a fast GetSimN (~0.3 ms) to a large embedding batch or a model load.
LATENCY_BUCKETS = (
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# Refusals counted in nachbar_grpc_rejected_requests_total, by status.
REJECTION_REASONS = {
    grpc.StatusCode.UNAUTHENTICATED: "unauthenticated",
    grpc.StatusCode.PERMISSION_DENIED: "permission_denied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "resource_exhausted",
}


class RequestMetrics:
    """Requests by service, method and status; latency per method; in flight; rejections.

    The request path only appends an event to a deque (atomic, well under a microsecond); the
    Prometheus families are brought up to date from those events at each scrape, or inline
    once many have piled up. Updating them per request took ~15 us of locks and lookups, a
    measurable share of a 0.6 ms search.
    """

    MAX_PENDING = 50_000

    def __init__(self, registry: CollectorRegistry) -> None:
        # (service, method, code or None for "started", seconds)
        self._events: deque[tuple[str, str, grpc.StatusCode | None, float]] = deque()
        self._drain_lock = threading.Lock()
        self._latency_children: dict[
            tuple[str, str], Histogram
        ] = {}  # label children, resolved once
        # Registered first, so a scrape applies the pending events before reading the families.
        registry.register(_Callback(self._drained))
        self.requests = Counter(
            "nachbar_grpc_requests",
            "RPCs handled, by service, method and status code",
            ["service", "method", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            "nachbar_grpc_request_duration_seconds",
            "Time from receiving an RPC to its answer, by service and method",
            ["service", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "nachbar_grpc_requests_in_flight",
            "RPCs being handled now",
            ["service"],
            registry=registry,
        )
        self.rejected = Counter(
            "nachbar_grpc_rejected_requests",
            "RPCs refused before doing their work: unauthenticated, permission_denied "
            "(API keys), resource_exhausted (limits)",
            ["service", "method", "reason"],
            registry=registry,
        )

    def started(self, service: str, method: str) -> None:
        self._events.append((service, method, None, 0.0))

    def finished(self, service: str, method: str, code: grpc.StatusCode, seconds: float) -> None:
        self._events.append((service, method, code, seconds))
        if len(self._events) > self.MAX_PENDING:
            self.drain()

    def drain(self) -> None:
        """Apply the pending events: one observe per request for the latency histogram, and
        one update per (method, code) and per service for the counters and the gauge."""
        with self._drain_lock:
            counts: collections.Counter[tuple[str, str, grpc.StatusCode]] = collections.Counter()
            in_flight: collections.Counter[str] = collections.Counter()
            pop = self._events.popleft
            while True:
                try:
                    service, method, code, seconds = pop()
                except IndexError:
                    break
                if code is None:
                    in_flight[service] += 1
                    continue
                in_flight[service] -= 1
                latency = self._latency_children.get((service, method))
                if latency is None:
                    latency = self._latency_children[(service, method)] = self.latency.labels(
                        service, method
                    )
                latency.observe(seconds)
                counts[(service, method, code)] += 1
            for service, change in in_flight.items():
                if change:
                    self.in_flight.labels(service).inc(change)
            for (service, method, code), number in counts.items():
                self.requests.labels(service, method, code.name).inc(number)
                reason = REJECTION_REASONS.get(code)
                if reason is not None:
                    self.rejected.labels(service, method, reason).inc(number)

    def _drained(self) -> Iterable[Metric]:
        self.drain()
        return ()


class _Callback(Collector):
    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()


class ServerMetrics:
    """One server's registry, its HTTP endpoint, and the families every server has."""

    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        Gauge(
            "nachbar_build_info",
            "The running nachbar version",
            ["service", "version"],
            registry=self.registry,
        ).labels(service, version("nachbar")).set(1)
        self.requests = RequestMetrics(self.registry)
        self._http: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def add_callback(self, collect: Callable[[], Iterable[Metric]]) -> None:
        """Families computed at scrape time (store sizes, queue depths)."""
        self.registry.register(_Callback(collect))

    def serve(self, host: str, port: int) -> int:
        server, thread = start_http_server(port, host, registry=self.registry)
        self._http, self._thread = server, thread
        return int(server.server_port)

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class AdmissionMetrics:
    """The admission lanes (server/admission.py) at scrape time: requests running and waiting
    per lane, and request bytes held against the in-flight budget. Refusals are counted in
    nachbar_grpc_rejected_requests_total{reason="resource_exhausted"}."""

    def __init__(self, metrics: ServerMetrics, admission: Admission) -> None:
        self._admission = admission
        metrics.add_callback(self._lanes)

    def _lanes(self) -> Iterator[Metric]:
        admission = self._admission
        running = GaugeMetricFamily(
            "nachbar_admission_running_requests",
            "Requests holding a worker of each admission lane",
            labels=["lane"],
        )
        queued = GaugeMetricFamily(
            "nachbar_admission_queued_requests",
            "Requests waiting for a worker of each admission lane",
            labels=["lane"],
        )
        for lane in (admission.interactive, admission.bulk):
            running.add_metric([lane.name], lane.running)
            queued.add_metric([lane.name], lane.queued)
        yield running
        yield queued
        yield GaugeMetricFamily(
            "nachbar_admission_inflight_request_bytes",
            "Bytes of request messages held by requests in progress (--max-inflight-bytes)",
            value=admission.budget.held,
        )


class StorageMetrics:
    """nachbar-db: commit and checkpoint durations, checkpoint age, entries and bytes per store.
    Implements nachbar.db.observe.StorageObserver."""

    def __init__(self, metrics: ServerMetrics, db: Database) -> None:
        self._commit = Histogram(
            "nachbar_db_sqlite_commit_seconds",
            "Time of one SQLite COMMIT (with the --fsync policy's syncs)",
            buckets=LATENCY_BUCKETS,
            registry=metrics.registry,
        )
        self._checkpoint = Histogram(
            "nachbar_db_graph_checkpoint_seconds",
            "Time of one pass that saves every changed HNSW graph",
            buckets=LATENCY_BUCKETS,
            registry=metrics.registry,
        )
        self._last_checkpoint = time.monotonic()
        Gauge(
            "nachbar_db_graph_checkpoint_age_seconds",
            "Seconds since the last graph checkpoint finished (or since the server started)",
            registry=metrics.registry,
        ).set_function(lambda: time.monotonic() - self._last_checkpoint)
        self._db = db
        metrics.add_callback(self._stores)

    def committed(self, seconds: float) -> None:
        self._commit.observe(seconds)

    def graphs_saved(self, seconds: float) -> None:
        self._checkpoint.observe(seconds)
        self._last_checkpoint = time.monotonic()

    def _stores(self) -> Iterator[Metric]:
        entries = GaugeMetricFamily(
            "nachbar_db_store_entries", "Entries in each store", labels=["store"]
        )
        size = GaugeMetricFamily(
            "nachbar_db_store_bytes",
            "Bytes of vectors, ids and metadata held for each store",
            labels=["store"],
        )
        try:
            stores = self._db.list_stores()
        except Exception:  # closed while shutting down: report nothing rather than fail
            stores = []
        for info in stores:
            entries.add_metric([info.name], info.count)
            size.add_metric([info.name], info.bytes_used)
        yield entries
        yield size


class ModelMetrics:
    """nachbar-ai: batch sizes, inference and load times per model, and queue depths."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._batch_size = Histogram(
            "nachbar_ai_batch_size",
            "Items per ONNX run (merged from concurrent requests), by model",
            ["model"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=metrics.registry,
        )
        self._inference = Histogram(
            "nachbar_ai_inference_seconds",
            "Time of one ONNX run, by model",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=metrics.registry,
        )
        self._load = Gauge(
            "nachbar_ai_model_load_seconds",
            "Time the last load of each model took",
            ["model"],
            registry=metrics.registry,
        )
        self._models: ModelManager | None = None
        metrics.add_callback(self._queues)

    def watch(self, models: ModelManager) -> None:
        self._models = models

    def model_loaded(self, model: str, seconds: float) -> None:
        self._load.labels(model).set(seconds)

    def batch_ran(self, model: str, size: int, seconds: float) -> None:
        self._batch_size.labels(model).observe(size)
        self._inference.labels(model).observe(seconds)

    def _queues(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "nachbar_ai_batch_queue_depth",
            "Items waiting for a batch, by model",
            labels=["model"],
        )
        if self._models is not None:
            for model, queued in sorted(self._models.queue_depths().items()):
                depth.add_metric([model], queued)
        yield depth
