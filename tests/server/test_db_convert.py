"""Proto conversion of search results (the in-place metadata fill equals the general path) and
the encoded sizes reads are checked with before building."""

from __future__ import annotations

import enum
from pathlib import Path

import numpy as np
import pytest

from nachbar.db import types
from nachbar.db.engine import Database
from nachbar.server import db_convert as conv
from nachbar.server import db_responses as responses
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


ADVERSARIAL: list[dict[str, types.MetadataValue]] = [
    {"k": -1},  # a one-letter key with a ten-byte int
    {"a": -(2**63), "b": -5, "c": True, "d": 0.0},
    {"l": [""] * 5000},  # many empty list items
    {"l": ["x" * 20_000] * 40},  # list items whose length takes a three-byte varint
    {"s": "Ö" * 70_000, "y": b"\x00" * 3},
    {f"f{i}": i - 500 for i in range(1000)},
]


def test_the_stored_size_bound_is_never_below_the_encoded_size(tmp_path: Path) -> None:
    with Database.open(tmp_path, fsync="off", checkpoint_seconds=0) as db:
        db.create_store(types.StoreSpec("s", 3))
        ids = [f"e{i}" for i in range(len(ADVERSARIAL))]
        vector = np.ones(3, dtype=np.float32)
        db.upsert("s", [types.Entry(i, vector, m) for i, m in zip(ids, ADVERSARIAL, strict=True)])
        for selection in (types.ALL_METADATA, types.MetadataSelection(max_value_bytes=10)):
            for with_vectors in (False, True):
                found, _ = db.get_keys("s", ids, include_vectors=with_vectors, metadata=selection)
                matches = db.get_sim_n(
                    "s", vector, len(ids), include_vectors=with_vectors, metadata=selection
                ).matches
                items: list[types.Entry | types.Match] = [*found, *matches]
                for item in items:
                    assert item.stored_bytes > 0
                    assert responses.stored_size_bound([item]) >= conv.entry_size(item), item.id
