"""What an upsert costs beyond its data: the columns path (EntryBatch) agrees with the entry path,
metadata is encoded as before, and the memory an upsert allocates stays a small multiple of the
request.

Memory is measured with tracemalloc (numpy reports its buffers to it), so the figures are exact
for Python and numpy allocations, whatever else runs on the machine. The request of the nachbar-db
server is converted the way the server does (server/db_convert.upsert_entries).
"""

from __future__ import annotations

import base64
import json
import random
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nachbar.db import codec
from nachbar.db.engine import Database
from nachbar.db.errors import InvalidArgumentError
from nachbar.db.types import (
    Entry,
    EntryBatch,
    ExactConfig,
    Metadata,
    MetadataValue,
    Metric,
    StoreSpec,
)
from nachbar.server import db_convert as conv
from nachbar.v1 import db_pb2

MB = 1 << 20


def reference_json(metadata: Metadata) -> str:
    """The typed JSON as the codec wrote it before it assembled it itself."""
    tags = {bool: "b", int: "i", float: "f", str: "s", bytes: "y", list: "l"}
    tagged: dict[str, Any] = {}
    for key, value in metadata.items():
        tag = next(t for kind, t in tags.items() if isinstance(value, kind))
        if isinstance(value, bytes):
            value = base64.b64encode(value).decode("ascii")
        tagged[key] = [tag, value]
    return json.dumps(tagged, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


TEXTS = ["", "plain", 'quote " and \\ backslash', "tab\tnew\nline\x00\x1f", "Ärger 😀", "\u2028"]


def random_metadata(rng: random.Random) -> Metadata:
    out: Metadata = {}
    for n in range(rng.randint(0, 6)):
        key = rng.choice(TEXTS) or f"k{n}"
        choices: list[MetadataValue] = [
            rng.choice(TEXTS),
            rng.randint(-(2**63), 2**63 - 1),
            rng.uniform(-1e300, 1e300),
            rng.random(),
            0.1,
            rng.random() < 0.5,
            rng.randbytes(rng.randint(0, 40)),
            rng.sample(TEXTS, rng.randint(0, 4)),
        ]
        out[key] = rng.choice(choices)
    return out


def test_metadata_json_is_what_json_dumps_wrote() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        metadata = random_metadata(rng)
        encoded = codec.encode_metadata(metadata)
        assert encoded == reference_json(metadata)
        assert codec.decode_metadata(encoded) == metadata


def test_checksum_of_long_text_is_the_checksum_of_its_utf8() -> None:
    text = "Öl und Wasser, " * 20_000  # longer than the piece the checksum encodes at a time
    blob = np.arange(4, dtype="<f4").tobytes()
    expected = zlib.crc32(text.encode("utf-8"), zlib.crc32(blob, zlib.crc32(b"id")))
    assert codec.row_checksum("id", blob, text) == expected
    assert codec.utf8_length(text) == len(text.encode("utf-8"))


@pytest.mark.parametrize(
    ("vectors", "message"),
    [
        ([[1, 2, 3]] * 2, "has dimension 4, but entry 'a' has 3 values"),
        ([[1, 2, 3, 4], [1, np.nan, 3, 4]], "entry 'b' contains NaN"),
        ([[1, 2, 3, 4], [0, 0, 0, 0]], "entry 'b' is all zeros"),
    ],
)
def test_a_batch_of_columns_is_refused_like_a_list_of_entries(
    db: Database, vectors: list[list[float]], message: str
) -> None:
    db.create_store(StoreSpec("s", 4, metric=Metric.COSINE))
    matrix = np.asarray(vectors, dtype=np.float32)
    as_entries = [Entry(i, v, {}) for i, v in zip("ab", matrix, strict=True)]
    as_columns = EntryBatch(ids=["a", "b"], vectors=matrix, metadata=[{}, {}])
    for batch in (as_entries, as_columns):
        with pytest.raises(InvalidArgumentError) as caught:
            db.upsert("s", batch)
        assert message in caught.value.message
    with pytest.raises(InvalidArgumentError, match="appears twice"):
        db.upsert("s", EntryBatch(["a", "a"], np.ones((2, 4), np.float32), [{}, {}]))
    assert db.get_store("s").count == 0


def test_the_server_reads_vectors_of_one_length_into_one_matrix() -> None:
    request = db_pb2.UpsertRequest()
    request.entries.add(id="a", vector=[1, 2]).metadata["n"].int_value = 1
    request.entries.add(id="b", vector=[3, 4])
    batch = conv.upsert_entries(request.entries)
    assert isinstance(batch, EntryBatch)
    assert batch.ids == ["a", "b"] and batch.metadata == [{"n": 1}, {}]
    assert batch.vectors.dtype == np.float32 and batch.vectors.tolist() == [[1, 2], [3, 4]]
    request.entries.add(id="c", vector=[5])
    mixed = conv.upsert_entries(request.entries)
    assert isinstance(mixed, list) and [len(e.vector) for e in mixed] == [2, 2, 1]  # type: ignore[arg-type]


def upsert_request(shape: str, rng: np.random.Generator) -> db_pb2.UpsertRequest:
    request = db_pb2.UpsertRequest(store="s")
    if shape == "vectors":
        vectors = rng.random((8000, 384), dtype=np.float32)
        for i, vector in enumerate(vectors):
            request.entries.add(id=f"v{i}", vector=vector.tolist()).metadata["n"].int_value = i
    else:
        for i in range(3):
            entry = request.entries.add(id=f"b{i}", vector=rng.random(384).tolist())
            entry.metadata["_nachbar_image"].bytes_value = rng.bytes(4 * MB)
    return request


# Peak allocations of one upsert (conversion included) per byte of request. Before the columns
# path these were 6.6 (vectors) and 3.2 (bytes): per-vector arrays, a second matrix, a bytes
# copy of every vector, full-size gathers, and the metadata JSON copied three more times.
@pytest.mark.parametrize(("shape", "most"), [("vectors", 3.0), ("bytes", 2.9)])
def test_an_upsert_allocates_a_small_multiple_of_its_request(
    tmp_path: Path, shape: str, most: float
) -> None:
    with Database.open(tmp_path, fsync="off", checkpoint_seconds=0) as db:
        db.create_store(StoreSpec("s", 384, index=ExactConfig()))
        request = upsert_request(shape, np.random.default_rng(0))
        size = request.ByteSize()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            db.upsert("s", conv.upsert_entries(request.entries))
            peak = tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()
        print(f"{shape}: peak allocations {peak / size:.2f} x the request")
        assert peak <= most * size
        assert db.get_store("s").count == len(request.entries)
