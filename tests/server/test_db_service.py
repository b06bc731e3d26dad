"""DBService over real gRPC: statuses, messages, and that the server keeps serving."""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from nachbar.client import (
    AlreadyExists,
    DBClient,
    Exact,
    Field,
    Hnsw,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from nachbar.server.app import RunningServer
from nachbar.v1 import common_pb2, db_pb2, db_pb2_grpc


def test_health_and_reflection(db_server: RunningServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{db_server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "nachbar.db.v1.DBService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        response = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=5)))
        names = {s.name for s in response.list_services_response.service}
        assert {"nachbar.db.v1.DBService", "grpc.health.v1.Health"} <= names


def test_store_lifecycle_and_search(db: DBClient) -> None:
    info = db.create_store("docs", 3, predicate_indexes=["lang"], index=Hnsw(m=8))
    assert (info.dimension, info.count, info.index) == (3, 0, Hnsw(8, 200, 64))
    result = db.upsert(
        "docs",
        [
            ("a", [1, 0, 0], {"lang": "en", "n": 1}),
            ("b", [0, 1, 0], {"lang": "de", "n": 2}),
            ("c", [0.9, 0.1, 0], {"lang": "de", "tags": ["x", "y"], "raw": b"\x00"}),
        ],
    )
    assert (result.inserted, result.updated) == (3, 0)
    assert db.upsert("docs", [("a", [1, 0, 0], {"lang": "en", "n": 5})]).updated == 1

    hits = db.get_sim_n("docs", [1, 0, 0], k=2)
    assert [m.id for m in hits.matches] == ["a", "c"]
    assert hits.matches[0].score == pytest.approx(1.0, abs=1e-5)  # cosine similarity
    assert hits.matches[0].metadata == {"lang": "en", "n": 5}

    only_de = db.get_sim_n("docs", [1, 0, 0], k=5, filter=Field("lang") == "de")
    assert [m.id for m in only_de.matches] == ["c", "b"]
    tagged = db.get_sim_n("docs", [1, 0, 0], k=5, filter=Field("tags").contains("y"))
    assert [m.id for m in tagged.matches] == ["c"]
    assert tagged.matches[0].metadata["raw"] == b"\x00"

    got = db.get_key("docs", ["b", "zz"], include_vectors=True)
    assert [e.id for e in got.entries] == ["b"] and got.missing_ids == ["zz"]
    assert got.entries[0].vector == [0.0, 1.0, 0.0]

    page = db.get_by_predicate("docs", {"n": {"gte": 2}}, limit=1)
    assert len(page.entries) == 1 and page.next_page_token
    rest = db.get_by_predicate("docs", {"n": {"gte": 2}}, limit=1, page_token=page.next_page_token)
    assert {page.entries[0].id, rest.entries[0].id} == {"b", "a"}

    assert db.delete_by_predicate("docs", Field("lang") == "de") == 2
    assert db.delete_keys("docs", ["a", "nope"]) == 1
    assert db.get_store("docs").count == 0
    assert db.drop_store("docs") is True
    assert db.list_stores() == []


def test_metrics_keep_one_score_direction(db: DBClient) -> None:
    for metric in ("cosine", "l2", "ip"):
        db.create_store(f"m-{metric}", 2, metric=metric, index=Exact())
        db.upsert(f"m-{metric}", [("near", [1, 0]), ("far", [-1, 0.5])])
        hits = db.get_sim_n(f"m-{metric}", [0.9, 0], k=2).matches
        assert [h.id for h in hits] == ["near", "far"], metric
        assert hits[0].score > hits[1].score
    l2 = db.get_sim_n("m-l2", [0.9, 0], k=1).matches[0].score
    assert l2 == pytest.approx(-(0.1**2), abs=1e-5)  # negative squared distance
    ip = db.get_sim_n("m-ip", [0.9, 0], k=1).matches[0].score
    assert ip == pytest.approx(0.9, abs=1e-5)


def test_bad_requests_get_precise_statuses_and_server_keeps_serving(db: DBClient) -> None:
    db.create_store("s", 4)
    good = ("ok", [1, 2, 3, 4])

    def still_serving() -> None:
        assert db.upsert("s", [good]).inserted + db.upsert("s", [good]).updated >= 1

    with pytest.raises(NotFound, match="nope"):
        db.get_sim_n("nope", [1, 2, 3, 4], k=1)
    still_serving()
    with pytest.raises(AlreadyExists, match="'s'|s"):
        db.create_store("s", 4)
    still_serving()
    with pytest.raises(InvalidArgument, match="dimension|4") as wrong_dim:
        db.upsert("s", [("x", [1, 2, 3])])
    assert "s" in wrong_dim.value.message
    still_serving()
    with pytest.raises(InvalidArgument, match="(?i)nan|finite"):
        db.upsert("s", [("x", [1, math.nan, 3, 4])])
    with pytest.raises(InvalidArgument, match="(?i)nan|finite|inf"):
        db.get_sim_n("s", [1, math.inf, 3, 4], k=1)
    with pytest.raises(InvalidArgument, match="(?i)id"):
        db.upsert("s", [("", [1, 2, 3, 4])])
    with pytest.raises(InvalidArgument, match="k"):
        db.get_sim_n("s", [1, 2, 3, 4], k=0)
    with pytest.raises(InvalidArgument, match="(?i)empty|no entries|at least"):
        db.upsert("s", [])
    still_serving()
    # A batch with one bad entry stores nothing.
    with pytest.raises(InvalidArgument):
        db.upsert("s", [("fine", [1, 1, 1, 1]), ("bad", [1, 1])])
    assert db.get_key("s", ["fine"]).missing_ids == ["fine"]
    still_serving()


def test_malformed_filter_is_invalid_argument(db_server: RunningServer, db: DBClient) -> None:
    db.create_store("f", 2)
    db.upsert("f", [("a", [1, 0], {"x": 1})])
    with grpc.insecure_channel(f"127.0.0.1:{db_server.port}") as channel:
        stub = db_pb2_grpc.DBServiceStub(channel)
        no_op = common_pb2.Filter(condition=common_pb2.Condition(field="x"))
        empty = common_pb2.Filter()
        for bad in (no_op, empty, common_pb2.Filter(all_of=common_pb2.FilterList())):
            request = db_pb2.GetSimNRequest(store="f", query=[1, 0], k=1, filter=bad)
            with pytest.raises(grpc.RpcError) as error:
                stub.GetSimN(request, timeout=5)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "filter" in (error.value.details() or "")
        ok = stub.GetSimN(db_pb2.GetSimNRequest(store="f", query=[1, 0], k=1), timeout=5)
        assert [m.id for m in ok.matches] == ["a"]


def test_oversized_message_is_resource_exhausted(db: DBClient) -> None:
    db.create_store("big", 512)
    vectors = np.random.default_rng(0).random((3000, 512), dtype=np.float32)  # ~6 MB > 4 MB cap
    with pytest.raises(ResourceExhausted):
        db.upsert("big", [(str(i), v) for i, v in enumerate(vectors)], batch_size=3000)
    assert db.upsert("big", [("one", vectors[0])]).inserted == 1
    assert db.get_store("big").count == 1


def test_info_and_ping(db: DBClient) -> None:
    db.ping()
    info = db.info()
    assert info.fsync_policy == "full"
    assert info.max_message_bytes == 4 * 1024 * 1024
    assert info.version


def test_a_stale_expected_store_id_is_aborted(db: DBClient, db_server: RunningServer) -> None:
    first = db.create_store("again", 3)
    db.drop_store("again")
    second = db.create_store("again", 3)
    assert second.store_id != first.store_id
    with grpc.insecure_channel(f"127.0.0.1:{db_server.port}") as channel:
        stub = db_pb2_grpc.DBServiceStub(channel)
        request = db_pb2.UpsertRequest(
            store="again",
            entries=[db_pb2.Entry(id="a", vector=[1, 0, 0])],
            expected_store_id=first.store_id,
        )
        with pytest.raises(grpc.RpcError) as caught:
            stub.Upsert(request, timeout=5)
        assert caught.value.code() == grpc.StatusCode.ABORTED
        assert "dropped and created again" in (caught.value.details() or "")
        request.expected_store_id = second.store_id
        assert stub.Upsert(request, timeout=5).inserted == 1
