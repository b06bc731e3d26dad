"""`nachbar-ai`: serve embedding, search and reranking on top of nachbar-db."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from nachbar.ai.batching import BatchingConfig
from nachbar.ai.models import ModelManager
from nachbar.client.db import DBClient
from nachbar.client.errors import NachbarError, PermissionDenied, Unauthenticated
from nachbar.server.ai_service import AIServicer
from nachbar.server.app import RunningServer, run_until_signalled, start_server, write_port_file
from nachbar.server.config import AIConfig, parse_ai_config
from nachbar.server.logs import configure_logging
from nachbar.server.operations import ModelTelemetry, Operations
from nachbar.server.tracing import configure_from_environment
from nachbar.v1 import ai_pb2, ai_pb2_grpc

log = logging.getLogger("nachbar.ai")

AI_SERVICE_NAME = ai_pb2.DESCRIPTOR.services_by_name["AIService"].full_name
HEALTH_POLL_SECONDS = 1.0


def _check_models_present(models: ModelManager, names: Sequence[str]) -> None:
    statuses = {s.spec.name: s for s in models.list_models()}
    for requested in names:
        name = models.spec(requested).name  # unknown names fail here, listing close matches
        if not statuses[name].available:
            models.load(name)  # raises ModelUnavailableError saying how to get the files


def _explain_refusal(db: DBClient, address: str) -> None:
    """Say so when nachbar-db answers but refuses nachbar-ai's own API key."""
    try:
        db.ping(timeout=2.0)
    except (Unauthenticated, PermissionDenied) as error:
        log.error(
            "nachbar-db at %s refuses nachbar-ai's API key (%s); pass --db-api-key-file with a "
            "key it accepts (`nachbar keys create --role admin`)",
            address,
            error.message,
        )
    except NachbarError:
        pass


def start_ai_server(config: AIConfig) -> RunningServer:
    """Start serving at once; health turns SERVING when the models are loaded and the db
    answers, and back to NOT_SERVING while the db is unreachable."""
    ops = Operations.build(config.exposure, "ai")
    telemetry = ModelTelemetry.of(ops)
    models = ModelManager(
        config.model_dir,
        offline=config.hub_offline,
        local_dirs=dict(config.local_models),
        batching=BatchingConfig(
            enabled=config.batching,
            max_batch_size=config.max_batch_size,
            max_wait_ms=config.max_batch_wait_ms,
            workers=config.batch_workers,
        ),
        observer=telemetry,
    )
    if telemetry.metrics is not None:
        telemetry.metrics.watch(models)
    _check_models_present(models, config.models)
    link = config.db_link
    db = DBClient(
        config.db_address,
        timeout=config.db_timeout_seconds,
        api_key=link.api_key,  # "" sends none; never the NACHBAR_API_KEY of the environment
        tls=link.tls,
        tls_ca=link.tls_ca,
        tls_client_cert=link.tls_cert,
        tls_client_key=link.tls_key,
    )
    service = AIServicer(models, db, max_message_bytes=config.max_message_bytes)
    running = start_server(
        config,
        lambda server: ai_pb2_grpc.add_AIServiceServicer_to_server(service, server),
        [AI_SERVICE_NAME],
        interceptors=ops.interceptors,
        credentials=ops.credentials,
    )
    ops.attach(running, config.host)
    stopping = threading.Event()

    def watch_health() -> None:
        for name in config.models:
            try:
                models.load(name)
            except Exception:
                log.exception("could not load model %s", name)
                return
        log.info("models loaded: %s", ", ".join(config.models) or "(none; load on first use)")
        serving: bool | None = None
        while not stopping.is_set():
            reachable = service.db_reachable()
            if reachable != serving:
                serving = reachable
                running.set_serving(reachable)
                if reachable:
                    log.info("nachbar-db at %s reachable: SERVING", config.db_address)
                else:
                    log.warning("nachbar-db at %s unreachable: NOT_SERVING", config.db_address)
                    _explain_refusal(db, config.db_address)
            stopping.wait(HEALTH_POLL_SECONDS)

    watcher = threading.Thread(target=watch_health, name="health", daemon=True)
    watcher.start()
    running.on_stop.insert(0, stopping.set)
    running.on_stop.append(db.close)
    running.on_stop.append(models.close)
    return running


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_ai_config(argv)
    configure_logging(config.log_level, config.log_format)
    tracing = configure_from_environment("nachbar-ai")
    running = start_ai_server(config)
    log.info(
        "nachbar-ai listening on %s:%d, db %s, models in %s",
        config.host,
        running.port,
        config.db_address,
        config.model_dir,
    )
    write_port_file(config.port_file, running.port)
    run_until_signalled(running, exit_with_parent=config.exit_with_parent)
    if tracing is not None:
        tracing.shutdown()  # send the last spans


if __name__ == "__main__":
    main()
