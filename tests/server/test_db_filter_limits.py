"""Filter limits over real gRPC: every limit is INVALID_ARGUMENT naming it, undecodable requests
are INVALID_ARGUMENT (never INTERNAL), and the server keeps serving."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from nachbar.client import DBClient, Field, InvalidArgument
from nachbar.server.app import RunningServer
from nachbar.server.config import parse_db_config
from nachbar.server.db_main import start_db_server
from nachbar.v1 import common_pb2, db_pb2, db_pb2_grpc

ENTRIES = 500


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[RunningServer]:
    running = start_db_server(
        parse_db_config(
            [
                "--port",
                "0",
                "--data-dir",
                str(tmp_path / "data"),
                "--max-filter-conditions",
                "8",
                "--max-filter-depth",
                "4",
                "--max-filter-values",
                "100",
                "--max-filter-bytes",
                "3000",
            ]
        )
    )
    yield running
    running.stop(grace=1)


def fill(db: DBClient) -> None:
    db.create_store("s", 2, predicate_indexes=["tag"])
    db.upsert("s", [(str(i), [1, i + 1], {"n": i, "tag": f"t{i % 5}"}) for i in range(ENTRIES)])


def condition(
    field: str, op: common_pb2.Condition.Op.ValueType, value: int | None = None
) -> common_pb2.Filter:
    cond = common_pb2.Condition(field=field, op=op)
    if value is not None:
        cond.value.int_value = value
    return common_pb2.Filter(condition=cond)


def any_of(filters: list[common_pb2.Filter]) -> common_pb2.Filter:
    return common_pb2.Filter(any_of=common_pb2.FilterList(filters=filters))


def one_of(values: range | list[str]) -> common_pb2.Filter:
    cond = common_pb2.Condition(field="n", op=common_pb2.Condition.OP_IN)
    for value in values:
        if isinstance(value, str):
            cond.values.add().string_value = value
        else:
            cond.values.add().int_value = value
    return common_pb2.Filter(condition=cond)


def nest_into(target: common_pb2.Filter, depth: int) -> None:
    """Fill `target` with `depth` levels of not / all_of around one condition, in place:
    copying a message nested deeper than protobuf's decoding limit would fail client-side."""
    for level in range(depth):
        target = target.negate if level % 2 == 0 else target.all_of.filters.add()
    target.condition.field = "n"
    target.condition.op = common_pb2.Condition.OP_EXISTS


def nested(depth: int) -> common_pb2.Filter:
    flt = common_pb2.Filter()
    nest_into(flt, depth)
    return flt


def still_serving(stub: db_pb2_grpc.DBServiceStub) -> None:
    reply = stub.GetSimN(db_pb2.GetSimNRequest(store="s", query=[1, 0], k=3), timeout=10)
    assert len(reply.matches) == 3


EQ = common_pb2.Condition.OP_EQ


@pytest.mark.parametrize(
    ("flt", "message"),
    [
        (any_of([condition("n", EQ, i) for i in range(9)]), "more than 8 conditions"),
        (one_of(range(101)), "101 values, over the limit of 100 per in / not_in"),
        (nested(5), "deeper than the limit of 4 levels"),
        (one_of([f"{i:040d}" for i in range(80)]), "bytes encoded, over the limit of 3000 bytes"),
    ],
)
def test_each_filter_limit_is_invalid_argument_naming_it(
    limited: RunningServer, flt: common_pb2.Filter, message: str
) -> None:
    with DBClient(f"127.0.0.1:{limited.port}", timeout=10) as db:
        fill(db)
    with grpc.insecure_channel(f"127.0.0.1:{limited.port}") as channel:
        stub = db_pb2_grpc.DBServiceStub(channel)
        calls: list[Callable[[], object]] = [
            lambda: stub.GetSimN(
                db_pb2.GetSimNRequest(store="s", query=[1, 0], k=3, filter=flt), timeout=10
            ),
            lambda: stub.GetByPredicate(
                db_pb2.GetByPredicateRequest(store="s", filter=flt), timeout=10
            ),
            lambda: stub.DeleteByPredicate(
                db_pb2.DeleteByPredicateRequest(store="s", filter=flt), timeout=10
            ),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in (caught.value.details() or "")
            still_serving(stub)
        # Nothing was deleted by the refused DeleteByPredicate.
        assert stub.GetStore(db_pb2.GetStoreRequest(store="s"), timeout=10).store.count == ENTRIES


def test_filters_within_the_limits_are_served(limited: RunningServer) -> None:
    with DBClient(f"127.0.0.1:{limited.port}", timeout=10) as db:
        fill(db)
        eights = Field("n") == 0
        for i in range(1, 8):
            eights = eights | (Field("n") == i)
        assert sorted(
            int(m.id) for m in db.get_sim_n("s", [1, 0], k=20, filter=eights).matches
        ) == (list(range(8)))
        assert (
            len(db.get_sim_n("s", [1, 0], k=200, filter=Field("n").is_in(range(100))).matches)
            == 100
        )


def test_deeply_nested_or_corrupt_requests_are_invalid_argument_not_internal(
    db_server: RunningServer, db: DBClient
) -> None:
    fill(db)
    address = f"127.0.0.1:{db_server.port}"
    with grpc.insecure_channel(address) as channel:
        stub = db_pb2_grpc.DBServiceStub(channel)
        for depth in (100, 150):  # beyond protobuf's 100 levels: never reaches nachbar's checks
            search = db_pb2.GetSimNRequest(store="s", query=[1, 0], k=1)
            nest_into(search.filter, depth)
            page = db_pb2.GetByPredicateRequest(store="s")
            nest_into(page.filter, depth)
            for method, request in (("GetSimN", search), ("GetByPredicate", page)):
                with pytest.raises(grpc.RpcError) as caught:
                    getattr(stub, method)(request, timeout=10)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                details = caught.value.details() or ""
                assert details.startswith(method)
                assert "deeper than protobuf's limit of 100" in details
                assert "flatten" in details
                still_serving(stub)
        # Within protobuf's limit but beyond nachbar's default 32 levels.
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetSimN(
                db_pb2.GetSimNRequest(store="s", query=[1, 0], k=1, filter=nested(40)), timeout=10
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "deeper than the limit of 32 levels" in (caught.value.details() or "")

        raw = channel.unary_unary(
            "/nachbar.db.v1.DBService/GetSimN", request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.RpcError) as caught:
            raw(b"\xff\xff\xff\xff", timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid protobuf message of type nachbar.db.v1.GetSimNRequest" in (
            caught.value.details() or ""
        )
        still_serving(stub)


def test_large_allowed_filters_are_answered_exactly(db: DBClient) -> None:
    fill(db)
    # 128 conditions (the default limit) on one unindexed field, joined by any_of, and an
    # `in` with 65,536 values: both are one set lookup per entry.
    many_ors = Field("n") == -1
    for i in range(1, 128):
        many_ors = many_ors | (Field("n") == 3 * i)
    hits = db.get_sim_n("s", [1, 0], k=ENTRIES, filter=many_ors, timeout=30)
    assert sorted(int(m.id) for m in hits.matches) == [3 * i for i in range(1, 128)]
    values = list(range(0, 2 * 65_536, 2))
    evens = db.get_sim_n("s", [1, 0], k=ENTRIES, filter=Field("n").is_in(values), timeout=30)
    assert len(evens.matches) == ENTRIES // 2
    with pytest.raises(InvalidArgument, match="65537 values"):
        db.get_sim_n("s", [1, 0], k=1, filter=Field("n").is_in([*values, 1]))
    # An unfiltered search still works afterwards.
    assert len(db.get_sim_n("s", np.array([1.0, 0.0]), k=2).matches) == 2


def test_filter_limit_flags_have_environment_twins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NACHBAR_MAX_FILTER_CONDITIONS", "7")
    monkeypatch.setenv("NACHBAR_MAX_FILTER_DEPTH", "9")
    monkeypatch.setenv("NACHBAR_MAX_FILTER_VALUES", "11")
    monkeypatch.setenv("NACHBAR_MAX_FILTER_BYTES", "13")
    config = parse_db_config([])
    assert (config.filter_limits.max_conditions, config.filter_limits.max_depth) == (7, 9)
    assert (config.filter_limits.max_values, config.max_filter_bytes) == (11, 13)
    assert parse_db_config(["--max-filter-depth", "3"]).filter_limits.max_depth == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-filter-depth", "49"], "--max-filter-depth must be at most 48"),
        (["--max-filter-conditions", "0"], "--max-filter-conditions must be at least 1"),
        (["--max-filter-bytes", "0"], "--max-filter-bytes must be at least 1"),
    ],
)
def test_bad_filter_limits_are_refused_at_start(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_db_config(argv)
    assert message in capsys.readouterr().err
