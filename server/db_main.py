"""`nachbar-db`: serve the vector database.

Start-up order: the gRPC port opens first, with health NOT_SERVING, so that probes see a live
process at once; the data directory opens in a background thread meanwhile (DBService calls get
UNAVAILABLE "loading stores, retry" until then), and health turns SERVING once every store's
entries are in memory. HNSW graphs keep coming back in the background after that (searches scan
exactly until a store's graph is in, see nachbar.db.engine). A data directory that cannot be
opened (corrupt files, lost commits, held by another process) stops the process with a message
naming the file.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from nachbar.db.engine import Database
from nachbar.db.errors import DBError
from nachbar.db.interface import Engine
from nachbar.server.admission import ServicePolicy
from nachbar.server.app import RunningServer, run_until_signalled, start_server, write_port_file
from nachbar.server.config import DBConfig, parse_db_config
from nachbar.server.db_service import DBServicer
from nachbar.server.errors import NotReadyError, keep_private
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
            "CreateKeywordIndex",
            "DropKeywordIndex",
            "CreateStore",
            "DropStore",
            "GetByPredicate",
        }
    ),
)
POLL_SECONDS = 0.2


class DatabaseLoader:
    """Opens the engine in a background thread; calling it returns the Engine, or
    raises NotReadyError while it is still opening (the opening error once it failed)."""

    def __init__(
        self,
        config: DBConfig,
        on_ready: Callable[[], None],
        on_open: Callable[[Engine], None] = lambda db: None,
    ) -> None:
        self._config = config
        self._on_ready = on_ready
        self._on_open = on_open
        self._db: Engine | None = None
        self._error: DBError | None = None
        self._done = threading.Event()
        self._closed = False
        self._lock = threading.Lock()
        self._began = time.monotonic()
        self._thread = threading.Thread(target=self._open, name="nachbar-db-open", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _open(self) -> None:
        config = self._config
        try:
            db = open_engine(config)
        except DBError as error:
            self._error = error
            self._done.set()
            return
        except BaseException as error:
            log.exception("opening %s failed", storage_location(config))
            self._error = DBError(f"opening {storage_location(config)} failed: {error}")
            self._done.set()
            return
        with self._lock:
            if self._closed:  # stopped while opening
                db.close()
                self._done.set()
                return
            self._on_open(db)
            self._db = db
            self._on_ready()
        elapsed = time.monotonic() - self._began
        log.info("stores in %s loaded in %.1f s: SERVING", storage_location(config), elapsed)
        self._done.set()

    def __call__(self) -> Engine:
        db = self._db
        if db is not None:
            return db
        if self._error is not None:
            raise self._error
        raise NotReadyError(
            f"nachbar-db is loading its stores from {storage_location(self._config)} "
            f"({time.monotonic() - self._began:.0f} s so far); retry in a few seconds, or wait "
            "until its health check reports SERVING"
        )

    @property
    def done(self) -> threading.Event:
        return self._done

    def result(self) -> Engine:
        """The open Database once loading is over; the DBError if it failed."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._db is not None
        return self._db

    def close(self) -> None:
        """Close the database (waiting for an open in progress to finish first)."""
        with self._lock:
            self._closed = True
        self._thread.join()
        db, self._db = self._db, None
        if db is not None:
            db.close()


def open_db_server(config: DBConfig) -> tuple[RunningServer, DatabaseLoader]:
    """Listen at once (NOT_SERVING) and open the data directory in the background; health
    turns SERVING when the stores are loaded. The caller owns `stop()`."""
    ops = Operations.build(config.exposure, "db")
    if config.engine == "milvus" and "://" not in config.milvus_uri:
        # A milvus-lite file is a server path like the data dir.
        keep_private(Path(config.milvus_uri), "<milvus-uri>")
    elif config.engine != "milvus":
        keep_private(config.data_dir, "<data-dir>")
    serving: list[RunningServer] = []

    def observe(db: Engine) -> None:
        if ops.metrics is not None and isinstance(db, Database):
            db.observe(StorageMetrics(ops.metrics, db))

    loader = DatabaseLoader(config, on_ready=lambda: serving[0].set_serving(True), on_open=observe)
    milvus = config.engine == "milvus"
    service = DBServicer(
        loader,
        fsync="milvus" if milvus else config.fsync,
        max_message_bytes=config.max_message_bytes,
        max_filter_bytes=config.max_filter_bytes,
        engine=config.engine,
        consistency=config.milvus_consistency if milvus else "strong",
    )
    running = start_server(
        config,
        lambda server: db_pb2_grpc.add_DBServiceServicer_to_server(service, server),
        [DB_ADMISSION],
        before_admission=ops.before_admission,
        after_admission=ops.after_admission,
        credentials=ops.credentials,
    )
    serving.append(running)
    ops.attach(running, config.host)
    running.on_stop.append(loader.close)
    loader.start()
    return running, loader


def storage_location(config: DBConfig) -> str:
    """Where the engine keeps the stores: the data dir, or the Milvus URI."""
    return config.milvus_uri if config.engine == "milvus" else str(config.data_dir)


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
            ),
            config.filter_limits,
        )
    return Database.open(
        config.data_dir,
        fsync=config.fsync,  # type: ignore[arg-type]
        checkpoint_seconds=config.graph_checkpoint_seconds,
        checkpoint_changes=config.graph_checkpoint_changes,
        wait_for_indexes=False,
        filter_limits=config.filter_limits,
    )


def start_db_server(config: DBConfig) -> RunningServer:
    """Open the data dir and serve it, returning once the stores are loaded (DBError if they
    cannot be). The caller owns `stop()`."""
    running, loader = open_db_server(config)
    try:
        loader.result()
    except BaseException:
        running.stop(grace=0)
        raise
    return running


# Python hands the GIL over every 5 ms by default: a search thread waiting behind a bulk
# request's Python work lost up to that much per hand-over (see bench/RESULTS.md, load_bench).
GIL_SWITCH_SECONDS = 0.0005


def _wait_for_stores(loader: DatabaseLoader, exit_with_parent: bool) -> bool:
    """Block until the stores are loaded (True) or a stop is asked for meanwhile (False)."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s while loading the stores", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    parent = os.getppid()
    while not loader.done.wait(POLL_SECONDS):
        if stop.is_set() or (exit_with_parent and os.getppid() != parent):
            return False
    return True


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_db_config(argv)
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    configure_logging(config.log_level, config.log_format)
    tracing = configure_from_environment("nachbar-db")
    running, loader = open_db_server(config)
    if config.engine == "milvus":
        storage = (
            f"stores in Milvus at {config.milvus_uri} (consistency {config.milvus_consistency})"
        )
    else:
        storage = f"data in {config.data_dir} (fsync={config.fsync})"
    log.info(
        "nachbar-db listening on %s:%d (NOT_SERVING until its stores are loaded), %s; %s",
        config.host,
        running.port,
        storage,
        running.admission.describe(),
    )
    write_port_file(config.port_file, running.port)
    try:
        if not _wait_for_stores(loader, config.exit_with_parent):
            running.stop()
            return
        try:
            loader.result()
        except DBError as error:
            # Corrupt files, lost commits, a data dir held by another process: refuse to serve,
            # saying why.
            running.stop(grace=0)
            raise SystemExit(f"nachbar-db cannot start: {error}") from None
        run_until_signalled(running, exit_with_parent=config.exit_with_parent)
    finally:
        if tracing is not None:
            tracing.shutdown()  # send the last spans


if __name__ == "__main__":
    main()
