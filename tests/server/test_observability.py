"""Prometheus metrics scraped after real traffic, and one OpenTelemetry trace that spans a
client call, nachbar-ai and nachbar-db."""

from __future__ import annotations

import io
import logging
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from nachbar.client import AIClient, DBClient, NotFound, Unauthenticated
from nachbar.server.ai_main import start_ai_server
from nachbar.server.auth import Role, create_key
from nachbar.server.config import parse_ai_config, parse_db_config
from nachbar.server.db_main import start_db_server
from nachbar.server.logs import RequestContextFilter, TextFormatter
from nachbar.server.metrics import RequestMetrics
from tests.models_fixture import built_model_dir
from tests.servers import wait_serving

TEXT_MODEL = "all-minilm-l6-v2"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int | None) -> Samples:
    assert port is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_db_metrics_follow_real_traffic(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    _, secret = create_key(keys, Role.ADMIN)
    db = start_db_server(
        parse_db_config(
            [
                *("--port", "0", "--data-dir", str(tmp_path / "data")),
                *("--api-keys-file", str(keys), "--metrics-port", "0"),
            ]
        )
    )
    service = "nachbar.db.v1.DBService"
    try:
        before = scrape(db.metrics_port)
        assert value(before, "nachbar_build_info", service="db", version=_version()) == 1
        assert value(before, "process_resident_memory_bytes") > 0
        with DBClient(f"127.0.0.1:{db.port}", timeout=10, api_key=secret) as client:
            client.create_store("docs", dimension=3)
            client.upsert("docs", [(f"id{i}", [1.0, float(i), 0.0]) for i in range(50)])
            for _ in range(3):
                client.get_sim_n("docs", [1.0, 0.0, 0.0], k=5)
            with pytest.raises(NotFound):
                client.get_store("missing")
        with (
            DBClient(f"127.0.0.1:{db.port}", timeout=10, api_key="") as client,
            pytest.raises(Unauthenticated),
        ):
            client.list_stores()
        after = scrape(db.metrics_port)
        ok = {"service": service, "code": "OK"}
        assert value(after, "nachbar_grpc_requests_total", method="GetSimN", **ok) == 3
        assert value(after, "nachbar_grpc_requests_total", method="Upsert", **ok) == 1
        assert (
            value(
                after,
                "nachbar_grpc_requests_total",
                service=service,
                method="GetStore",
                code="NOT_FOUND",
            )
            == 1
        )
        rejected = {"service": service, "method": "ListStores", "reason": "unauthenticated"}
        assert value(after, "nachbar_grpc_rejected_requests_total", **rejected) == 1
        assert (
            value(
                after,
                "nachbar_grpc_request_duration_seconds_count",
                service=service,
                method="GetSimN",
            )
            == 3
        )
        assert value(after, "nachbar_grpc_requests_in_flight", service=service) == 0
        assert value(after, "nachbar_db_store_entries", store="docs") == 50
        assert value(after, "nachbar_db_store_bytes", store="docs") > 50 * 3 * 4
        assert value(after, "nachbar_db_sqlite_commit_seconds_count") >= 2  # create + upsert
        assert value(after, "nachbar_db_graph_checkpoint_age_seconds") > 0
    finally:
        db.stop(grace=0)


def _version() -> str:
    from importlib.metadata import version

    return version("nachbar")


def test_ai_metrics_count_batches_per_model(tmp_path: Path) -> None:
    db = start_db_server(parse_db_config(["--port", "0", "--data-dir", str(tmp_path / "d")]))
    ai = start_ai_server(
        parse_ai_config(
            [
                *("--port", "0", "--db-port", str(db.port), "--hub-offline"),
                *("--model-dir", str(built_model_dir([TEXT_MODEL])), "--models", TEXT_MODEL),
                *("--metrics-port", "0"),
            ]
        )
    )
    try:
        wait_serving(f"127.0.0.1:{ai.port}")
        before = scrape(ai.metrics_port)
        assert value(before, "nachbar_ai_model_load_seconds", model=TEXT_MODEL) > 0
        runs_before = value(before, "nachbar_ai_batch_size_count", model=TEXT_MODEL)
        with AIClient(f"127.0.0.1:{ai.port}", timeout=30) as client:
            for _ in range(2):
                client.embed(TEXT_MODEL, ["one text", "another text", "a third"])
        after = scrape(ai.metrics_port)
        assert value(after, "nachbar_ai_batch_size_count", model=TEXT_MODEL) == runs_before + 2
        assert value(after, "nachbar_ai_batch_size_sum", model=TEXT_MODEL) >= 6
        assert value(after, "nachbar_ai_inference_seconds_count", model=TEXT_MODEL) >= 2
        assert value(after, "nachbar_ai_batch_queue_depth", model=TEXT_MODEL) == 0
        assert (
            value(
                after,
                "nachbar_grpc_requests_total",
                service="nachbar.ai.v1.AIService",
                method="Embed",
                code="OK",
            )
            == 2
        )
    finally:
        ai.stop(grace=0)
        db.stop(grace=0)


# -- traces -----------------------------------------------------------------------------------


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """A global tracer provider that keeps spans in memory, removed afterwards so that later
    tests run untraced (OpenTelemetry allows one global provider; its own tests reset it the
    same way)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    trace.set_tracer_provider(provider)
    yield memory
    provider.shutdown()
    trace._TRACER_PROVIDER = None
    trace._TRACER_PROVIDER_SET_ONCE = Once()


def _by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def test_one_trace_spans_the_client_nachbar_ai_and_nachbar_db(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    db = start_db_server(parse_db_config(["--port", "0", "--data-dir", str(tmp_path / "d")]))
    ai = start_ai_server(
        parse_ai_config(
            [
                *("--port", "0", "--db-port", str(db.port), "--hub-offline"),
                *("--model-dir", str(built_model_dir([TEXT_MODEL])), "--models", TEXT_MODEL),
            ]
        )
    )
    log_lines = io.StringIO()
    handler = logging.StreamHandler(log_lines)
    handler.setFormatter(TextFormatter())
    handler.addFilter(RequestContextFilter())
    db_log = logging.getLogger("nachbar.db")
    db_log.addHandler(handler)
    db_log.setLevel(logging.INFO)
    try:
        wait_serving(f"127.0.0.1:{ai.port}")
        with AIClient(f"127.0.0.1:{ai.port}", timeout=30) as client:
            client.create_store("notes", query_model=TEXT_MODEL)
            client.upsert("notes", ["the cat sleeps", "markets fell"])
            exporter.clear()
            client.get_sim_n("notes", "a sleeping kitten", k=1)
            spans = exporter.get_finished_spans()
            exporter.clear()
            client.drop_store("notes")
            drop_spans = exporter.get_finished_spans()
    finally:
        db_log.removeHandler(handler)
        ai.stop(grace=0)
        db.stop(grace=0)

    (client_span,) = [
        s
        for s in _by_name(spans, "nachbar.ai.v1.AIService/GetSimN")
        if s.kind is trace.SpanKind.CLIENT
    ]
    trace_id = client_span.context.trace_id
    assert {s.context.trace_id for s in spans} == {trace_id}, [s.name for s in spans]
    (ai_span,) = [
        s
        for s in _by_name(spans, "nachbar.ai.v1.AIService/GetSimN")
        if s.kind is trace.SpanKind.SERVER
    ]
    assert ai_span.parent is not None and ai_span.parent.span_id == client_span.context.span_id
    children = {s.name for s in spans if s.parent and s.parent.span_id == ai_span.context.span_id}
    # The store's binding is cached since the upsert, so the search asks the db only GetSimN.
    assert {
        "nachbar.ai.tokenize",
        "nachbar.ai.inference",
        "nachbar.db.v1.DBService/GetSimN",
    } <= children
    (db_call,) = [
        s
        for s in _by_name(spans, "nachbar.db.v1.DBService/GetSimN")
        if s.kind is trace.SpanKind.CLIENT
    ]
    (db_span,) = [
        s
        for s in _by_name(spans, "nachbar.db.v1.DBService/GetSimN")
        if s.kind is trace.SpanKind.SERVER
    ]
    assert db_span.parent is not None and db_span.parent.span_id == db_call.context.span_id
    assert db_span.attributes is not None and db_span.attributes["rpc.grpc.status_code"] == 0
    # One request id for the request in both services: nachbar-ai sends its own on.
    assert ai_span.attributes is not None
    assert db_span.attributes["nachbar.request_id"] == ai_span.attributes["nachbar.request_id"]

    # The db logged the drop inside a traced RPC: the line carries its trace and request ids.
    (line,) = [ln for ln in log_lines.getvalue().splitlines() if "dropped store" in ln]
    # nachbar-ai's DropStore also drops the store's adapters and re-scorers (a companion store,
    # never created here): two db DropStores in the one request and trace; one logged the drop.
    db_drops = [
        s
        for s in _by_name(drop_spans, "nachbar.db.v1.DBService/DropStore")
        if s.kind is trace.SpanKind.SERVER
    ]
    assert len(db_drops) == 2
    for db_drop in db_drops:
        assert db_drop.attributes is not None
        assert f"request_id={db_drop.attributes['nachbar.request_id']!s}" in line
        assert f"trace_id={db_drop.context.trace_id:032x}" in line


def test_request_metrics_apply_pending_events_in_order() -> None:
    registry = CollectorRegistry()
    metrics = RequestMetrics(registry)
    service = "nachbar.db.v1.DBService"
    for code in [grpc.StatusCode.OK] * 3 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2:
        metrics.started(service, "GetSimN")
        metrics.finished(service, "GetSimN", code, 0.002)
    metrics.started(service, "Upsert")  # still running at the scrape

    def sample(name: str, **labels: str) -> float:
        found = registry.get_sample_value(name, {"service": service, **labels})
        return 0.0 if found is None else found

    assert sample("nachbar_grpc_requests_total", method="GetSimN", code="OK") == 3
    assert sample("nachbar_grpc_requests_total", method="GetSimN", code="RESOURCE_EXHAUSTED") == 2
    assert (
        sample(
            "nachbar_grpc_rejected_requests_total", method="GetSimN", reason="resource_exhausted"
        )
        == 2
    )
    assert sample("nachbar_grpc_request_duration_seconds_count", method="GetSimN") == 5
    assert sample("nachbar_grpc_request_duration_seconds_bucket", method="GetSimN", le="0.001") == 0
    assert (
        sample("nachbar_grpc_request_duration_seconds_bucket", method="GetSimN", le="0.0025") == 5
    )
    assert sample("nachbar_grpc_requests_in_flight") == 1
    metrics.finished(service, "Upsert", grpc.StatusCode.OK, 0.5)
    assert sample("nachbar_grpc_requests_in_flight") == 0
    assert sample("nachbar_grpc_requests_total", method="Upsert", code="OK") == 1
