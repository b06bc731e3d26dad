"""`nachbar-db`: serve the vector database."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from nachbar.db.engine import Database
from nachbar.db.errors import DBError
from nachbar.server.admission import ServicePolicy
from nachbar.server.app import RunningServer, run_until_signalled, start_server, write_port_file
from nachbar.server.config import DBConfig, parse_db_config
from nachbar.server.db_service import DBServicer
from nachbar.server.errors import keep_private
from nachbar.server.logs import configure_logging
from nachbar.server.metrics import StorageMetrics
from nachbar.server.operations import Operations
from nachbar.server.tracing import configure_from_environment
from nachbar.v1 import db_pb2, db_pb2_grpc

log = logging.getLogger("nachbar.db")

DB_SERVICE_NAME = db_pb2.DESCRIPTOR.services_by_name["DBService"].full_name
# Writes take the store's writer lock and an fsync, scans walk the metadata: all of them run in
# the bulk lane, so searches and key lookups never wait behind them for a worker.
DB_ADMISSION = ServicePolicy(
    service=DB_SERVICE_NAME,
    label="nachbar-db",
    bulk_methods=frozenset(
        {
            "Upsert",
            "DeleteKeys",
            "DeleteByPredicate",
            "CreatePredIndex",
            "DropPredIndex",
            "CreateStore",
            "DropStore",
            "GetByPredicate",
        }
    ),
)


def start_db_server(config: DBConfig) -> RunningServer:
    """Open the data dir and serve it. The caller owns `stop()`."""
    ops = Operations.build(config.exposure, "db")
    keep_private(config.data_dir, "<data-dir>")
    db = Database.open(config.data_dir, fsync=config.fsync)  # type: ignore[arg-type]
    if ops.metrics is not None:
        db.observe(StorageMetrics(ops.metrics, db))
    service = DBServicer(db, fsync=config.fsync, max_message_bytes=config.max_message_bytes)
    try:
        running = start_server(
            config,
            lambda server: db_pb2_grpc.add_DBServiceServicer_to_server(service, server),
            [DB_ADMISSION],
            before_admission=ops.before_admission,
            after_admission=ops.after_admission,
            credentials=ops.credentials,
        )
    except BaseException:
        db.close()
        raise
    running.on_stop.append(db.close)
    ops.attach(running, config.host)
    running.set_serving(True)
    return running


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_db_config(argv)
    configure_logging(config.log_level, config.log_format)
    tracing = configure_from_environment("nachbar-db")
    try:
        running = start_db_server(config)
    except DBError as error:
        # Corrupt files, a data dir held by another process: refuse to start, saying why.
        raise SystemExit(f"nachbar-db cannot start: {error}") from None
    log.info(
        "nachbar-db listening on %s:%d, data in %s (fsync=%s); %s",
        config.host,
        running.port,
        config.data_dir,
        config.fsync,
        running.admission.describe(),
    )
    write_port_file(config.port_file, running.port)
    run_until_signalled(running, exit_with_parent=config.exit_with_parent)
    if tracing is not None:
        tracing.shutdown()  # send the last spans


if __name__ == "__main__":
    main()
