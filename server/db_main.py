"""`nachbar-db`: serve the vector database."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from nachbar.db.engine import Database
from nachbar.db.errors import DBError
from nachbar.db.interface import Engine
from nachbar.server.admission import ServicePolicy
from nachbar.server.app import RunningServer, run_until_signalled, start_server, write_port_file
from nachbar.server.config import DBConfig, parse_db_config
from nachbar.server.db_service import DBServicer
from nachbar.server.errors import keep_private
from nachbar.server.logs import configure_logging
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


def open_engine(config: DBConfig) -> Engine:
    """The engine the flags ask for: the data dir, or the Milvus at --milvus-uri."""
    if config.engine == "milvus":
        # Imported here: pymilvus is an optional extra.
        from nachbar.db.milvus_engine import MilvusEngine, MilvusSettings

        return MilvusEngine.open(
            MilvusSettings(
                uri=config.milvus_uri,
                token=config.milvus_token,
                db_name=config.milvus_db,
                consistency=config.milvus_consistency,
                timeout_seconds=config.milvus_timeout_seconds,
            )
        )
    return Database.open(config.data_dir, fsync=config.fsync)  # type: ignore[arg-type]


def start_db_server(config: DBConfig) -> RunningServer:
    """Open the engine and serve it. The caller owns `stop()`."""
    if config.engine == "milvus" and "://" not in config.milvus_uri:
        # A milvus-lite file is a server path like the data dir.
        keep_private(Path(config.milvus_uri), "<milvus-uri>")
    elif config.engine != "milvus":
        keep_private(config.data_dir, "<data-dir>")
    db = open_engine(config)
    if config.engine == "milvus":
        service = DBServicer(
            db,
            fsync="milvus",
            max_message_bytes=config.max_message_bytes,
            engine="milvus",
            consistency=config.milvus_consistency,
        )
    else:
        service = DBServicer(db, fsync=config.fsync, max_message_bytes=config.max_message_bytes)
    try:
        running = start_server(
            config,
            lambda server: db_pb2_grpc.add_DBServiceServicer_to_server(service, server),
            [DB_ADMISSION],
        )
    except BaseException:
        db.close()
        raise
    running.on_stop.append(db.close)
    running.set_serving(True)
    return running


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_db_config(argv)
    configure_logging(config.log_level, config.log_format)
    try:
        running = start_db_server(config)
    except DBError as error:
        # Corrupt files, a data dir held by another process: refuse to start, saying why.
        raise SystemExit(f"nachbar-db cannot start: {error}") from None
    if config.engine == "milvus":
        log.info(
            "nachbar-db listening on %s:%d, stores in Milvus at %s (consistency %s); %s",
            config.host,
            running.port,
            config.milvus_uri,
            config.milvus_consistency,
            running.admission.describe(),
        )
    else:
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


if __name__ == "__main__":
    main()
