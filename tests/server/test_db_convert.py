"""Proto conversion of search results: the in-place metadata fill equals the general path."""

from __future__ import annotations

import enum

import numpy as np
import pytest

from nachbar.db import types
from nachbar.server import db_convert as conv
from nachbar.v1 import db_pb2
from nachbar.v1.codec import fill_metadata, metadata_to_proto


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
    fill_metadata(filled.metadata, METADATA)
    built = db_pb2.Match(metadata=metadata_to_proto(METADATA))
    assert filled.SerializeToString(deterministic=True) == built.SerializeToString(
        deterministic=True
    )
    assert filled.metadata["draft"].WhichOneof("kind") == "bool_value"
    assert filled.metadata["year"].WhichOneof("kind") == "int_value"


def test_fill_metadata_refuses_unsupported_values() -> None:
    with pytest.raises(TypeError, match="unsupported metadata value"):
        fill_metadata(db_pb2.Match().metadata, {"when": object()})  # type: ignore[dict-item]


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
    assert [(m.id, m.similarity) for m in response.matches] == [("b", 0.75), ("a", 0.5)]
    assert list(response.matches[0].vector) == [1.0, 2.0]
    assert len(response.matches[1].vector) == 0
    assert response.matches[0].metadata["n"].int_value == 1
