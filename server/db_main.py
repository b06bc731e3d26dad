"""`nachbar-db`: serve the vector database."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from nachbar.db.engine import Database
from nachbar.db.errors import DBError
from nachbar.server.app import (
    RunningServer,
    add_service,
    run_until_signalled,
    start_server,
    write_port_file,
)
from nachbar.server.config import DBConfig, parse_db_config
from nachbar.server.db_service import DBServicer
from nachbar.server.logs import configure_logging
from nachbar.v1 import db_pb2

log = logging.getLogger("nachbar.db")

DB_SERVICE = db_pb2.DESCRIPTOR.services_by_name["DBService"]
DB_SERVICE_NAME = DB_SERVICE.full_name


def start_db_server(config: DBConfig) -> RunningServer:
    """Open the data dir and serve it. The caller owns `stop()`."""
    db = Database.open(
        config.data_dir,
        fsync=config.fsync,  # type: ignore[arg-type]
        filter_limits=config.filter_limits,
    )
    service = DBServicer(
        db,
        fsync=config.fsync,
        max_message_bytes=config.max_message_bytes,
        max_filter_bytes=config.max_filter_bytes,
    )
    try:
        running = start_server(
            config,
            lambda server: add_service(server, DB_SERVICE, service),
            [DB_SERVICE_NAME],
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
    log.info(
        "nachbar-db listening on %s:%d, data in %s (fsync=%s)",
        config.host,
        running.port,
        config.data_dir,
        config.fsync,
    )
    write_port_file(config.port_file, running.port)
    run_until_signalled(running, exit_with_parent=config.exit_with_parent)


if __name__ == "__main__":
    main()
