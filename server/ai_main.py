"""`nachbar-ai`: serve embedding, search and reranking on top of nachbar-db."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from nachbar.ai.batching import BatchingConfig
from nachbar.ai.errors import AIError
from nachbar.ai.limits import ImageLimits, InputLimits
from nachbar.ai.models import ModelManager
from nachbar.ai.observe import ModelObserver
from nachbar.ai.pipeline import AIPipeline
from nachbar.ai.tailoring import Tailoring
from nachbar.server.admission import ServicePolicy
from nachbar.server.ai_service import AIServicer, Pipeline
from nachbar.server.ai_store import DBVectorStore
from nachbar.server.ai_trained import DBTrainedHome
from nachbar.server.app import RunningServer, run_until_signalled, start_server, write_port_file
from nachbar.server.config import AIConfig, parse_ai_config
from nachbar.server.errors import keep_private
from nachbar.server.logs import configure_logging
from nachbar.server.operations import ModelTelemetry, Operations
from nachbar.server.tls import db_link_credentials
from nachbar.server.tracing import configure_from_environment
from nachbar.v1 import ai_pb2, ai_pb2_grpc, targets

log = logging.getLogger("nachbar.ai")

AI_SERVICE_NAME = ai_pb2.DESCRIPTOR.services_by_name["AIService"].full_name
# Embedding a batch for an upsert takes every core for a while; so do many inputs to Embed or
# Rerank. They run in the bulk lane, so a search's one query embedding never waits behind them
# for a worker.
INTERACTIVE_MAX_INPUTS = 16
INTERACTIVE_MAX_DOCUMENTS = 64
AI_ADMISSION = ServicePolicy(
    service=AI_SERVICE_NAME,
    label="nachbar-ai",
    bulk_methods=frozenset(
        {"Upsert", "DeleteKeys", "DeleteByPredicate", "CreateStore", "DropStore", "GetByPredicate"}
    ),
    heavy={
        "Embed": lambda r: len(r.inputs) > INTERACTIVE_MAX_INPUTS,
        "Rerank": lambda r: len(r.documents) > INTERACTIVE_MAX_DOCUMENTS,
        "GetSimN": lambda r: r.rerank.candidates > INTERACTIVE_MAX_DOCUMENTS,
    },
)
HEALTH_POLL_SECONDS = 1.0
# How long a stop waits for the health watcher's poll (or model load) in flight.
HEALTH_STOP_WAIT_SECONDS = 5.0


def _check_models_present(models: ModelManager, names: Sequence[str]) -> None:
    """Refuse to start without the --models: each is on disk, or downloads now if allowed."""
    statuses = {s.spec.name: s for s in models.list_models()}
    for requested in names:
        name = models.spec(requested).name  # unknown names fail here, with close matches
        if not statuses[name].available:
            models.load(name)  # downloads it, or says how to get the files


def _model_manager(config: AIConfig, observer: ModelObserver) -> ModelManager:
    """The models of `config`, with the --models on disk; SystemExit saying why otherwise."""
    try:
        models = ModelManager(
            config.model_dir,
            offline=not config.allow_downloads,
            local_dirs=dict(config.local_models),
            batching=BatchingConfig(
                enabled=config.batching,
                max_batch_size=config.max_batch_size,
                max_wait_ms=config.max_batch_wait_ms,
                workers=config.batch_workers,
            ),
            limits=InputLimits(
                max_inputs=config.max_inputs_per_request,
                max_text_bytes=config.max_text_bytes,
                image=ImageLimits(
                    max_bytes=config.max_image_bytes, max_pixels=config.max_image_pixels
                ),
                image_decoders=config.image_decoders,
                image_decode=config.image_decode,
            ),
            max_loaded=config.max_loaded_models,
            pinned=config.models,
            observer=observer,
        )
        _check_models_present(models, config.models)
    except AIError as error:
        # The operator reads this, so the detail (which directory) belongs in it.
        where = f" ({error.detail})" if error.detail else ""
        raise SystemExit(f"nachbar-ai cannot start: {error.message}{where}") from None
    return models


def _explain_refusal(db: DBVectorStore) -> None:
    """Say so when nachbar-db answers but refuses nachbar-ai's own API key."""
    refusal = db.key_refusal()
    if refusal is not None:
        log.error(
            "nachbar-db at %s refuses nachbar-ai's API key (%s); pass --db-api-key-file with a "
            "key it accepts (`nachbar keys create --role admin`)",
            db.address,
            refusal,
        )


def start_ai_server(config: AIConfig) -> RunningServer:
    """Start serving at once; health turns SERVING when the models are loaded and the db
    answers, and back to NOT_SERVING while the db is unreachable."""
    ops = Operations.build(config.exposure, "ai")
    telemetry = ModelTelemetry.of(ops)
    keep_private(config.model_dir, "<model-dir>")
    for name, directory in config.local_models:
        keep_private(directory, f"<local dir of {name}>")
    models = _model_manager(config, telemetry)
    if telemetry.metrics is not None:
        telemetry.metrics.watch(models)
    link = config.db_link
    db = DBVectorStore(
        config.db_address,
        timeout=config.db_timeout_seconds,
        max_message_bytes=config.max_message_bytes,
        api_key=link.api_key,  # "" sends none; never the NACHBAR_API_KEY of the environment
        credentials=db_link_credentials(link),
        traced=ops.traced,
    )
    pipeline: Pipeline = AIPipeline(models, db)
    tailoring = Tailoring(pipeline, DBTrainedHome(db))
    pipeline.tailoring = tailoring
    service = AIServicer(
        pipeline, db, max_message_bytes=config.max_message_bytes, tailoring=tailoring
    )
    running = start_server(
        config,
        lambda server: ai_pb2_grpc.add_AIServiceServicer_to_server(service, server),
        [AI_ADMISSION],
        before_admission=ops.before_admission,
        after_admission=ops.after_admission,
        credentials=ops.credentials,
    )
    ops.attach(running, config.host)
    stopping = threading.Event()

    def watch_health() -> None:
        for name in config.models:
            if stopping.is_set():
                return
            try:
                models.load(name)
            except Exception:
                if not stopping.is_set():  # a load cut short by the stop is no failure
                    log.exception("could not load model %s", name)
                return
        log.info("models loaded: %s", ", ".join(config.models) or "(none; load on first use)")
        serving: bool | None = None
        while not stopping.is_set():
            try:
                serving = poll_db(serving)
            except ValueError:
                if stopping.is_set():  # the channel closed under a poll the stop did not wait for
                    return
                raise
            stopping.wait(HEALTH_POLL_SECONDS)

    def poll_db(serving: bool | None) -> bool:
        reachable = db.reachable()
        if reachable != serving:
            running.set_serving(reachable)
            if reachable:
                log.info("nachbar-db at %s reachable: SERVING", config.db_address)
            else:
                log.warning("nachbar-db at %s unreachable: NOT_SERVING", config.db_address)
                _explain_refusal(db)
        return reachable

    watcher = threading.Thread(target=watch_health, name="health", daemon=True)
    watcher.start()

    def stop_watching() -> None:
        stopping.set()
        # The client and the models close next: let a poll or a load in flight end first.
        watcher.join(timeout=HEALTH_STOP_WAIT_SECONDS)

    running.on_stop.insert(0, stop_watching)
    running.on_stop.append(tailoring.close)
    running.on_stop.append(db.close)
    running.on_stop.append(models.close)
    return running


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_ai_config(argv)
    configure_logging(config.log_level, config.log_format)
    tracing = configure_from_environment("nachbar-ai")
    try:
        running = start_ai_server(config)
    except targets.AddressError as error:
        raise SystemExit(f"nachbar-ai cannot start: --db-host: {error}") from None
    log.info(
        "nachbar-ai listening on %s:%d, db %s, models in %s, hub downloads %s; %s",
        config.host,
        running.port,
        config.db_address,
        config.model_dir,
        "allowed" if config.allow_downloads else "off (--allow-downloads turns them on)",
        running.admission.describe(),
    )
    write_port_file(config.port_file, running.port)
    run_until_signalled(running, exit_with_parent=config.exit_with_parent)
    if tracing is not None:
        tracing.shutdown()  # send the last spans


if __name__ == "__main__":
    main()
