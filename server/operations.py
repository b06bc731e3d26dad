"""What a server needs besides its servicer, assembled from its ExposureConfig: TLS
credentials, the API key ring, metrics and tracing, and the interceptors that apply them.

db_main and ai_main call `Operations.build` before starting the server and `attach` after; with
everything off (the default) there is no interceptor at all, so a plain server pays nothing.
The request interceptor runs before admission control, so a call without a valid key is
refused before it takes a queue slot or request bytes; store scopes are checked after it, on
the parsed request.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import grpc

from nachbar.server.app import RunningServer
from nachbar.server.auth import KeyFileError, KeyRing
from nachbar.server.exposure import ExposureConfig
from nachbar.server.interceptors import RequestInterceptor, ScopeInterceptor
from nachbar.server.metrics import AdmissionMetrics, ModelMetrics, ServerMetrics
from nachbar.server.tls import is_loopback, server_credentials
from nachbar.server.tracing import ModelTracer, tracing_active

log = logging.getLogger("nachbar.server")


@dataclass
class Operations:
    exposure: ExposureConfig
    credentials: grpc.ServerCredentials | None = None
    keys: KeyRing | None = None
    metrics: ServerMetrics | None = None
    traced: bool = False
    before_admission: list[grpc.ServerInterceptor[Any, Any]] = field(default_factory=list)
    after_admission: list[grpc.ServerInterceptor[Any, Any]] = field(default_factory=list)

    @staticmethod
    def build(exposure: ExposureConfig, service: str) -> Operations:
        """`service` labels the metrics ("db" or "ai"). SystemExit on unusable files."""
        ops = Operations(exposure)
        if exposure.tls_cert is not None and exposure.tls_key is not None:
            ops.credentials = server_credentials(
                exposure.tls_cert, exposure.tls_key, exposure.tls_client_ca
            )
        if exposure.api_keys_file is not None:
            try:
                ops.keys = KeyRing(exposure.api_keys_file)
            except KeyFileError as error:
                raise SystemExit(f"--api-keys-file: {error}") from None
        if exposure.metrics_port is not None:
            ops.metrics = ServerMetrics(service)
        ops.traced = tracing_active()
        if ops.keys is not None or ops.metrics is not None or ops.traced:
            ops.before_admission.append(
                RequestInterceptor(
                    keys=ops.keys,
                    metrics=ops.metrics.requests if ops.metrics else None,
                    traced=ops.traced,
                )
            )
        if ops.keys is not None:
            ops.after_admission.append(ScopeInterceptor())
        return ops

    def attach(self, running: RunningServer, host: str) -> None:
        """Start the metrics endpoint and say how the server is exposed."""
        if self.metrics is not None and self.exposure.metrics_port is not None:
            AdmissionMetrics(self.metrics, running.admission)
            try:
                running.metrics_port = self.metrics.serve(
                    self.exposure.metrics_host, self.exposure.metrics_port
                )
            except OSError as error:
                running.stop(grace=0)
                raise SystemExit(
                    f"cannot serve metrics on {self.exposure.metrics_host}:"
                    f"{self.exposure.metrics_port}: {error.strerror}; pick another "
                    "--metrics-port (0 for any free port)"
                ) from None
            running.on_stop.append(self.metrics.stop)
            log.info(
                "metrics at http://%s:%d/metrics", self.exposure.metrics_host, running.metrics_port
            )
        tls = "off"
        if self.credentials is not None:
            tls = "mutual" if self.exposure.tls_client_ca else "on"
        keys = f"{len(self.keys.keys())} in {self.keys.path}" if self.keys else "off"
        log.info("TLS %s, API keys %s, tracing %s", tls, keys, "on" if self.traced else "off")
        if self.keys is None and not is_loopback(host):
            log.warning(
                "listening on %s without API keys: anyone who reaches the port can read, write "
                "and drop every store (see --api-keys-file)",
                host or "every interface",
            )


class ModelTelemetry:
    """nachbar.ai.observe.ModelObserver from the parts that are on: metrics, traces, both."""

    def __init__(self, metrics: ModelMetrics | None, tracer: ModelTracer | None) -> None:
        self.metrics = metrics
        self._tracer = tracer

    def stage(self, name: str, attributes: Mapping[str, str | int]) -> AbstractContextManager[None]:
        if self._tracer is None:
            return contextlib.nullcontext()
        return self._tracer.stage(name, attributes)

    def model_loaded(self, model: str, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.model_loaded(model, seconds)

    def batch_ran(self, model: str, size: int, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.batch_ran(model, size, seconds)

    @staticmethod
    def of(ops: Operations) -> ModelTelemetry:
        return ModelTelemetry(
            ModelMetrics(ops.metrics) if ops.metrics else None,
            ModelTracer() if ops.traced else None,
        )
