"""OpenTelemetry traces, configured by the standard OTEL_* environment variables; off by
default.

Tracing turns on when OTEL_TRACES_EXPORTER names an exporter (`otlp`, `console`) or an OTLP
endpoint is set (OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), unless
OTEL_SDK_DISABLED=true. The SDK itself reads OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,
OTEL_TRACES_SAMPLER and the exporter's OTEL_EXPORTER_OTLP_* settings. The OTLP exporter is the
optional extra `nachbar[otlp]`.

Every RPC gets a server span (server/interceptors.py) whose parent comes from the caller's W3C
`traceparent` metadata; the model layer adds spans for tokenizing or decoding, inference and
reranking through `ModelTracer`; nachbar-ai's calls to nachbar-db are client spans of the
Python client, which sends `traceparent` on.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)

log = logging.getLogger("nachbar.tracing")

TRACER_NAME = "nachbar.server"


def _wanted_exporter() -> str | None:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return None if exporter == "none" else exporter
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        return "otlp"
    return None


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise SystemExit(
                "OTEL_TRACES_EXPORTER=otlp needs the OTLP exporter: install nachbar[otlp] "
                "(opentelemetry-exporter-otlp-proto-grpc)"
            ) from None
        return OTLPSpanExporter()
    raise SystemExit(f"OTEL_TRACES_EXPORTER={name!r} is not supported; use otlp, console or none")


def configure_from_environment(service_name: str) -> TracerProvider | None:
    """Install a global tracer provider when the environment asks for traces; None if not."""
    name = _wanted_exporter()
    if name is None:
        return None
    resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME") or service_name})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    trace.set_tracer_provider(provider)
    log.info("tracing on: exporting spans with the %s exporter", name)
    return provider


def tracing_active() -> bool:
    """True once a real tracer provider is installed (here, or by an embedding application)."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


class ModelTracer:
    """The span part of nachbar.ai.observe.ModelObserver: one child span per request step."""

    def __init__(self) -> None:
        self._tracer = tracer()

    @contextlib.contextmanager
    def stage(self, name: str, attributes: Mapping[str, str | int]) -> Iterator[None]:
        with self._tracer.start_as_current_span(name, attributes=dict(attributes)):
            yield


def current_trace_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span, as hex, or None outside a sampled span."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")
