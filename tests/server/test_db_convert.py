"""Proto conversion of search results: the in-place metadata fill equals the general path."""

from __future__ import annotations

import enum

import numpy as np
import pytest

from nachbar.client.values import metadata_to_proto
from nachbar.db import types
from nachbar.server import db_convert as conv
from nachbar.v1 import db_pb2


class Level(enum.IntEnum):
    HIGH = 3


METADATA: dict[str, types.MetadataValue] = {
    "title": "a photo",
    "year": 2024,
    "big": -(2**62),
    "ratio": 0.25,
    "nan": float("nan"),
    "draft": False,
    "one": True,
    "raw": b"\x00\xff",
    "tags": ["x", "y"],
    "none": [],
    "level": Level.HIGH,  # an int subclass takes the general path
}


def test_fill_metadata_equals_metadata_to_proto() -> None:
    filled = db_pb2.Match()
    conv.fill_metadata(filled.metadata, METADATA)
    built = db_pb2.Match(metadata=metadata_to_proto(METADATA))
    assert filled.SerializeToString(deterministic=True) == built.SerializeToString(
        deterministic=True
    )
    assert filled.metadata["draft"].WhichOneof("kind") == "bool_value"
    assert filled.metadata["year"].WhichOneof("kind") == "int_value"


def test_fill_metadata_refuses_unsupported_values() -> None:
    with pytest.raises(TypeError, match="unsupported metadata value"):
        conv.fill_metadata(db_pb2.Match().metadata, {"when": object()})  # type: ignore[dict-item]


def test_search_response_keeps_order_scores_and_vectors() -> None:
    result = types.SearchResult(
        matches=[
            types.Match(id="b", score=0.75, metadata={"n": 1}, vector=np.array([1.0, 2.0])),
            types.Match(id="a", score=0.5, metadata={}, vector=None),
        ],
        plan="hnsw",
    )
    response = conv.search_response(result)
    assert response.plan == "hnsw"
    assert [(m.id, m.score) for m in response.matches] == [("b", 0.75), ("a", 0.5)]
    assert list(response.matches[0].vector) == [1.0, 2.0]
    assert len(response.matches[1].vector) == 0
    assert response.matches[0].metadata["n"].int_value == 1


SIZED: dict[str, types.MetadataValue] = {
    **METADATA,
    "ünïcode": "Ärger über Öl " * 50,
    "zero": 0,
    "max": 2**63 - 1,
    "min": -(2**63),
    "empty": "",
    "blob": bytes(range(256)) * 300,  # a length that takes a three-byte varint
    "list": ["ä" * 200, "", "z"],
    "float0": 0.0,
}


@pytest.mark.parametrize("with_vector", [False, True])
def test_entry_size_is_the_encoded_size(with_vector: bool) -> None:
    vector = np.arange(384, dtype=np.float32) if with_vector else None
    for metadata in ({}, METADATA, SIZED):
        entry = types.Entry(
            id="entry-ü", vector=vector, metadata=metadata, omitted_keys=("a", "bb")
        )
        response = db_pb2.GetKeyResponse(entries=[conv.entry_to_proto(entry)])
        assert conv.entry_size(entry) == response.ByteSize()
        match = types.Match(id="m", score=0.5, metadata=metadata, vector=vector)
        found = conv.search_response(types.SearchResult(matches=[match], plan=""))
        assert conv.entry_size(match) == found.ByteSize()
        zero = types.Match(id="m", score=0.0, metadata=metadata, vector=vector)
        found = conv.search_response(types.SearchResult(matches=[zero], plan=""))
        assert 0 <= conv.entry_size(zero) - found.ByteSize() <= 5  # an upper bound


def test_metadata_selection_reads_unset_include_metadata_as_true() -> None:
    assert conv.metadata_selection(db_pb2.GetSimNRequest()) == types.ALL_METADATA
    request = db_pb2.GetKeyRequest(
        include_metadata=False, exclude_metadata_keys=["a"], max_metadata_value_bytes=7
    )
    assert conv.metadata_selection(request) == types.MetadataSelection(False, frozenset("a"), 7)
