"""Reads never build a response the client cannot receive (the conftest server allows 4 MiB),
and each read can leave out what it does not need."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from nachbar.client import DBClient, ResourceExhausted
from nachbar.server.app import RunningServer
from nachbar.v1 import db_pb2, db_pb2_grpc

MB = 1 << 20
IMAGE = "_nachbar_image"  # where nachbar-ai keeps an original image


def fill(db: DBClient) -> None:
    """Three entries of 1.5 MB each: any two fit into 4 MiB, all three do not."""
    db.create_store("big", 4)
    rng = np.random.default_rng(0)
    for i in range(3):
        db.upsert(
            "big",
            [(f"e{i}", [1, i + 1, 0, 0], {"caption": f"photo {i}", IMAGE: rng.bytes(3 * MB // 2)})],
        )


def refused(call: object) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    return caught.value.details() or ""


def test_get_sim_n_refuses_before_building_and_says_what_to_ask(db: DBClient) -> None:
    fill(db)
    with pytest.raises(ResourceExhausted) as caught:
        db.get_sim_n("big", [1, 1, 0, 0], k=3)
    message = caught.value.message
    assert "GetSimN on store 'big': the 3 matches would make a 4.5 MB response" in message
    assert "over the 4.0 MB limit (the server's --max-message-bytes)" in message
    assert "k=2 fits" in message
    assert f"exclude_metadata_keys=['{IMAGE}', 'caption']" in message
    assert "max_metadata_value_bytes" in message and "include_metadata=false" in message

    # The server keeps serving, and each way out works.
    assert len(db.get_sim_n("big", [1, 1, 0, 0], k=2).matches) == 2
    without = db.get_sim_n("big", [1, 1, 0, 0], k=3, exclude_metadata_keys=[IMAGE])
    assert [m.metadata for m in without.matches] == [{"caption": f"photo {i}"} for i in (0, 1, 2)]
    assert all(m.omitted_metadata_keys == [IMAGE] for m in without.matches)
    small = db.get_sim_n("big", [1, 1, 0, 0], k=3, max_metadata_value_bytes=1000)
    assert [m.omitted_metadata_keys for m in small.matches] == [[IMAGE]] * 3
    assert small.matches[0].metadata == {"caption": "photo 0"}
    bare = db.get_sim_n("big", [1, 1, 0, 0], k=3, include_metadata=False, include_vectors=True)
    assert [(m.metadata, m.omitted_metadata_keys) for m in bare.matches] == [({}, [])] * 3
    assert bare.matches[0].vector == [1, 1, 0, 0]


def test_get_key_returns_what_fits_and_the_client_fetches_the_rest(
    db_server: RunningServer, db: DBClient
) -> None:
    fill(db)
    every = db.get_key("big", ["e2", "nope", "e0", "e1"])  # two requests behind the scenes
    assert [e.id for e in every.entries] == ["e2", "e0", "e1"]
    assert every.missing_ids == ["nope"]
    assert all(len(e.metadata[IMAGE]) == 3 * MB // 2 for e in every.entries)  # type: ignore[arg-type]

    with grpc.insecure_channel(f"127.0.0.1:{db_server.port}") as channel:
        stub = db_pb2_grpc.DBServiceStub(
            channel,
        )
        request = db_pb2.GetKeyRequest(store="big", ids=["e0", "e1", "e2"])
        message = refused(lambda: stub.GetKey(request, timeout=10))
        assert "GetKey on store 'big': the 3 entries would make a 4.5 MB response" in message
        assert "the first 2 fit" in message and "allow_partial" in message

        request.allow_partial = True
        part = stub.GetKey(request, timeout=10)
        assert [e.id for e in part.entries] == ["e0", "e1"]
        assert list(part.unreturned_ids) == ["e2"]

        # A caller that receives at most 1 MB: no entry fits whole.
        request.max_response_bytes = MB
        message = refused(lambda: stub.GetKey(request, timeout=10))
        assert "entry 'e0' alone does not fit" in message
        assert "over the 1.0 MB limit (the request's max_response_bytes)" in message
        request.exclude_metadata_keys.append(IMAGE)
        small = stub.GetKey(request, timeout=10)
        assert [e.id for e in small.entries] == ["e0", "e1", "e2"]
        assert [list(e.omitted_metadata_keys) for e in small.entries] == [[IMAGE]] * 3


def test_get_by_predicate_ends_pages_early_instead_of_failing(
    db_server: RunningServer, db: DBClient
) -> None:
    fill(db)
    first = db.get_by_predicate("big", limit=100)
    assert [e.id for e in first.entries] == ["e0", "e1"] and first.next_page_token
    rest = db.get_by_predicate("big", limit=100, page_token=first.next_page_token)
    assert [e.id for e in rest.entries] == ["e2"] and not rest.next_page_token

    light = db.get_by_predicate("big", limit=100, max_metadata_value_bytes=100)
    assert [e.id for e in light.entries] == ["e0", "e1", "e2"] and not light.next_page_token

    with grpc.insecure_channel(f"127.0.0.1:{db_server.port}") as channel:
        stub = db_pb2_grpc.DBServiceStub(channel)
        request = db_pb2.GetByPredicateRequest(store="big", max_response_bytes=MB)
        message = refused(lambda: stub.GetByPredicate(request, timeout=10))
        assert "GetByPredicate on store 'big': the 1 entry would make a 1.5 MB response" in message
        assert "entry 'e0' alone does not fit" in message


def test_default_reads_are_unchanged_for_small_entries(db: DBClient) -> None:
    db.create_store("small", 2)
    db.upsert("small", [("a", [1, 0], {"x": 1, "tags": ["p", "q"]})])
    got = db.get_key("small", ["a"], include_vectors=True)
    assert got.entries[0].metadata == {"x": 1, "tags": ["p", "q"]}
    assert got.entries[0].omitted_metadata_keys == [] and got.entries[0].vector == [1, 0]
    assert db.get_sim_n("small", [1, 0], k=1).matches[0].metadata == {"x": 1, "tags": ["p", "q"]}
