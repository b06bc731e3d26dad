"""Both services answer requests that do not decode with INVALID_ARGUMENT, never INTERNAL."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from nachbar.server.ai_main import start_ai_server
from nachbar.server.config import parse_ai_config, parse_db_config
from nachbar.server.db_main import start_db_server
from nachbar.v1 import ai_pb2, ai_pb2_grpc, common_pb2


def deep_search(depth: int) -> ai_pb2.GetSimNRequest:
    request = ai_pb2.GetSimNRequest(store="s", query=ai_pb2.Input(text="hello"), k=1)
    target = request.filter
    for _ in range(depth):  # built in place: copying it would hit the same decoding limit
        target = target.negate
    target.condition.field = "n"
    target.condition.op = common_pb2.Condition.OP_EXISTS
    return request


def test_ai_service_refuses_undecodable_requests_with_invalid_argument(tmp_path: Path) -> None:
    db = start_db_server(parse_db_config(["--port", "0", "--data-dir", str(tmp_path / "data")]))
    ai = start_ai_server(
        parse_ai_config(
            [
                "--port",
                "0",
                "--db-port",
                str(db.port),
                "--model-dir",
                str(tmp_path / "models"),
                "--models",
                "",
                "--hub-offline",
            ]
        )
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{ai.port}") as channel:
            stub = ai_pb2_grpc.AIServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.GetSimN(deep_search(120), timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            details = caught.value.details() or ""
            assert details.startswith("GetSimN: the request nests messages deeper than")
            raw = channel.unary_unary(
                "/nachbar.ai.v1.AIService/Embed",
                request_serializer=None,
                response_deserializer=None,
            )
            with pytest.raises(grpc.RpcError) as caught:
                raw(b"\x0a\xff", timeout=10)  # a string field whose length runs past the end
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid protobuf message of type nachbar.ai.v1.EmbedRequest" in (
                caught.value.details() or ""
            )
            stub.Ping(ai_pb2.PingRequest(), timeout=10)  # still serving
    finally:
        ai.stop(grace=1)
        db.stop(grace=1)
