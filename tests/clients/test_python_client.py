"""The Python client's conversions, filters, exceptions and the asyncio client."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from nachbar.client import AsyncDBClient, Field, NotFound, ResourceExhausted, filter_from_dict
from nachbar.client.errors import NachbarError, from_rpc_error
from nachbar.client.values import (
    MetadataValue,
    filter_to_dict,
    metadata_from_proto,
    metadata_to_proto,
    value_to_proto,
)
from nachbar.server.config import parse_db_config
from nachbar.server.db_main import start_db_server


def test_metadata_round_trip_keeps_types() -> None:
    metadata: dict[str, MetadataValue] = {
        "s": "x",
        "i": 3,
        "f": 2.5,
        "b": True,
        "raw": b"\x01",
        "tags": ["a", "b"],
    }
    back = metadata_from_proto(metadata_to_proto(metadata))
    assert back == metadata
    assert type(back["b"]) is bool and type(back["i"]) is int


def test_unsupported_metadata_type_says_which() -> None:
    with pytest.raises(TypeError, match="dict"):
        value_to_proto({"nested": 1})  # type: ignore[arg-type]


def test_filter_builder_and_dict_form_agree() -> None:
    built = (Field("kind") == "photo") & ((Field("year") >= 2020) | ~Field("tags").contains("x"))
    as_dict = {
        "all_of": [
            {"kind": {"eq": "photo"}},
            {"any_of": [{"year": {"gte": 2020}}, {"not": {"tags": {"eq": "x"}}}]},
        ]
    }
    assert built.proto == filter_from_dict(as_dict)
    assert filter_to_dict(built.proto) == as_dict
    assert filter_from_dict({"a": {"in": [1, 2]}, "b": {"exists": True}}).HasField("all_of")


def test_chains_of_and_or_build_flat_lists_not_deep_nests() -> None:
    ors = Field("n") == 0
    for i in range(1, 200):
        ors = ors | (Field("n") == i)
    assert filter_to_dict(ors.proto) == {"any_of": [{"n": {"eq": i}} for i in range(200)]}
    mixed = (Field("a") == 1) & (Field("b") == 2) & ((Field("c") == 3) | (Field("d") == 4))
    assert filter_to_dict(mixed.proto) == {
        "all_of": [
            {"a": {"eq": 1}},
            {"b": {"eq": 2}},
            {"any_of": [{"c": {"eq": 3}}, {"d": {"eq": 4}}]},
        ]
    }
    assert filter_to_dict((~mixed).proto) == {"not": filter_to_dict(mixed.proto)}


@pytest.mark.parametrize(
    "bad", [{}, {"x": {"near": 1}}, {"x": 3}, {"all_of": []}, {"x": {"in": 3}}]
)
def test_malformed_filter_dicts_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        filter_from_dict(bad)


def test_status_codes_map_to_exception_classes() -> None:
    class FakeError(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.NOT_FOUND

        def details(self) -> str:
            return "store 'x' not found"

    error = from_rpc_error(FakeError())
    assert isinstance(error, NotFound) and isinstance(error, NachbarError)
    assert str(error) == "NOT_FOUND: store 'x' not found"


def test_async_client(tmp_path: Path) -> None:
    server = start_db_server(parse_db_config(["--port", "0", "--data-dir", str(tmp_path)]))

    async def scenario() -> None:
        async with AsyncDBClient(f"127.0.0.1:{server.port}", timeout=10) as db:
            await db.create_store("a", 2)
            result = await db.upsert("a", [("x", [1, 0], {"n": 1}), ("y", [0, 1])], batch_size=1)
            assert (result.inserted, result.updated) == (2, 0)
            hits = await asyncio.gather(*(db.get_sim_n("a", [1, 0.1], k=1) for _ in range(8)))
            assert {h.matches[0].id for h in hits} == {"x"}
            with pytest.raises(NotFound):
                await db.get_store("missing")

    try:
        asyncio.run(scenario())
    finally:
        server.stop(grace=1)


def test_async_client_reads_large_entries_within_the_servers_limit(tmp_path: Path) -> None:
    server = start_db_server(
        parse_db_config(
            ["--port", "0", "--data-dir", str(tmp_path), "--max-message-bytes", str(1 << 20)]
        )
    )
    blob = b"\x07" * 400_000  # two of these fit into 1 MiB, three do not

    async def scenario() -> None:
        async with AsyncDBClient(f"127.0.0.1:{server.port}", timeout=10) as db:
            await db.create_store("a", 2)
            entries = [(f"e{i}", [1, i], {"blob": blob, "i": i}) for i in range(3)]
            await db.upsert("a", entries, batch_size=1)
            got = await db.get_key("a", ["e0", "e1", "e2"])
            assert [e.metadata["i"] for e in got.entries] == [0, 1, 2]
            with pytest.raises(ResourceExhausted, match="k=2 fits"):
                await db.get_sim_n("a", [1, 0], k=3)
            light = await db.get_sim_n("a", [1, 0], k=3, exclude_metadata_keys=["blob"])
            assert [m.omitted_metadata_keys for m in light.matches] == [["blob"]] * 3
            page = await db.get_by_predicate("a", include_metadata=False)
            assert [(e.id, e.metadata) for e in page.entries] == [(f"e{i}", {}) for i in range(3)]
            small = await db.get_by_predicate("a", max_metadata_value_bytes=10)
            assert [e.metadata for e in small.entries] == [{"i": i} for i in range(3)]

    try:
        asyncio.run(scenario())
    finally:
        server.stop(grace=1)
