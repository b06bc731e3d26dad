"""nachbar-db with --engine milvus over real gRPC: the same service, Milvus behind it."""

from __future__ import annotations

import socket
from pathlib import Path

import grpc
import pytest

from nachbar.client import DBClient, Field, NotFound, Unavailable
from nachbar.server.config import parse_db_config
from nachbar.server.db_main import start_db_server
from nachbar.v1 import db_pb2, db_pb2_grpc


def test_milvus_engine_serves_the_same_service(tmp_path: Path) -> None:
    config = parse_db_config(
        ["--port", "0", "--engine", "milvus", "--milvus-uri", str(tmp_path / "lite.db")]
    )
    running = start_db_server(config)
    try:
        address = f"127.0.0.1:{running.port}"
        with DBClient(address, timeout=30) as db:
            db.create_store("docs", 3, store_metadata={"ai.query_model": "m"})
            db.upsert("docs", [("a", [1, 0, 0], {"lang": "en"}), ("b", [0, 1, 0], {"lang": "de"})])
            hits = db.get_sim_n("docs", [1, 0.1, 0], k=5, filter=Field("lang") == "de")
            assert [m.id for m in hits.matches] == ["b"]
            assert db.get_store("docs").store_metadata == {"ai.query_model": "m"}
            with pytest.raises(NotFound, match="store 'nope' does not exist"):
                db.get_store("nope")
            info = db.info()
            assert info.fsync_policy == "milvus" and info.store_count == 1
        with grpc.insecure_channel(address) as channel:
            reply = db_pb2_grpc.DBServiceStub(channel).Info(db_pb2.InfoRequest(), timeout=10)
            assert (reply.engine, reply.consistency) == ("milvus", "strong")
    finally:
        running.stop(grace=1)


def test_unreachable_milvus_is_unavailable(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = parse_db_config(
        [
            "--port",
            "0",
            "--engine",
            "milvus",
            "--milvus-uri",
            f"http://127.0.0.1:{port}",
            "--milvus-timeout",
            "1",
        ]
    )
    running = start_db_server(config)  # starts without Milvus; requests say why they fail
    try:
        with DBClient(f"127.0.0.1:{running.port}", timeout=30) as db:
            with pytest.raises(Unavailable, match="Milvus is unreachable"):
                db.list_stores()
            db.ping()  # the server itself keeps serving
    finally:
        running.stop(grace=1)


def test_engine_flags_are_checked() -> None:
    with pytest.raises(SystemExit):
        parse_db_config(["--engine", "milvus"])  # no --milvus-uri
    with pytest.raises(SystemExit):
        parse_db_config(["--engine", "milvus", "--milvus-uri", "x.db", "--milvus-consistency", "x"])
