"""How entries are written into SQLite: vectors as float32 blobs, metadata as typed JSON.

Metadata is a JSON object whose values are `[tag, value]` pairs, so every type survives the round
trip exactly (bool stays apart from int, bytes are base64, floats keep every bit):

    {"title": ["s", "Harbour"], "year": ["i", 2021], "score": ["f", 0.5],
     "public": ["b", true], "thumb": ["y", "iVBORw0K"], "tags": ["l", ["sea", "boat"]]}

Each row also stores a CRC-32 over its id, vector and metadata so that damaged rows are found
when the database opens, not returned to users.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from nachbar.db.errors import InvalidArgumentError
from nachbar.db.types import Metadata, MetadataValue

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MAX_FIELD_NAME_CHARS = 256


def check_metadata(metadata: object, where: str) -> Metadata:
    """A private copy of `metadata` after checking every key and value type."""
    if not isinstance(metadata, Mapping):
        raise InvalidArgumentError(
            f"{where}: metadata is a {type(metadata).__name__}; give a mapping of field to value"
        )
    out: Metadata = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not key:
            raise InvalidArgumentError(f"{where}: metadata field names must be non-empty strings")
        if len(key) > MAX_FIELD_NAME_CHARS:
            raise InvalidArgumentError(
                f"{where}: metadata field name {key[:40]!r}... is longer than "
                f"{MAX_FIELD_NAME_CHARS} characters; shorten it"
            )
        _check_text(key, f"{where}: metadata field name")
        out[key] = _check_value(value, f"{where}: metadata field {key!r}")
    return out


def _check_value(value: object, where: str) -> MetadataValue:
    # bool first: it is a subclass of int.
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise InvalidArgumentError(
                f"{where} holds {value}, outside the 64-bit integer range; store it as a string"
            )
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgumentError(
                f"{where} holds {value}, which filters cannot compare; store a finite number"
            )
        return value
    if isinstance(value, str):
        _check_text(value, where)
        return value
    if isinstance(value, bytes):
        return value
    if isinstance(value, list):
        for item in value:
            if not isinstance(item, str):
                raise InvalidArgumentError(
                    f"{where} is a list holding a {type(item).__name__}; lists may hold only "
                    "strings"
                )
            _check_text(item, where)
        return list(value)
    raise InvalidArgumentError(
        f"{where} has type {type(value).__name__}; use str, int, float, bool, bytes or a list "
        "of str"
    )


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError(
            f"{where} is not valid Unicode text (it holds a lone surrogate); fix its encoding"
        ) from None


def utf8_length(text: str) -> int:
    """len(text.encode("utf-8")) without a full-size copy of a long text."""
    if text.isascii():  # O(1) in CPython
        return len(text)
    if len(text) <= _CHUNK:
        return len(text.encode("utf-8"))
    return sum(len(text[i : i + _CHUNK].encode("utf-8")) for i in range(0, len(text), _CHUNK))


_CHUNK = 1 << 16


def value_bytes(value: MetadataValue) -> int:
    """The size of a metadata value's data: UTF-8 bytes of text, bytes of bytes, the sum over
    a string list; 8 for numbers and bools."""
    if isinstance(value, str):
        return utf8_length(value)
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, list):
        return sum(utf8_length(item) for item in value)
    return 8


def encode_metadata(metadata: Metadata) -> str:
    """The typed JSON of `metadata`: what json.dumps(tagged, ensure_ascii=False,
    separators=(",", ":")) writes, assembled here so that a large value is copied once, into
    the result (json.dumps copies each string into an escaped piece and then joins the
    pieces; base64 text and strings without characters to escape need no piece)."""
    parts: list[str] = ["{"]
    for position, (key, value) in enumerate(metadata.items()):
        if position:
            parts.append(",")
        _json_string(key, parts)
        if isinstance(value, bool):
            parts.append(':["b",true]' if value else ':["b",false]')
        elif isinstance(value, int):
            parts.append(f':["i",{int.__repr__(value)}]')
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError(f"metadata field {key!r} holds {value}, which JSON cannot hold")
            parts.append(f':["f",{float.__repr__(value)}]')
        elif isinstance(value, str):
            parts.append(':["s",')
            _json_string(value, parts)
            parts.append("]")
        elif isinstance(value, bytes):
            parts.append(':["y","')
            parts.append(base64.b64encode(value).decode("ascii"))
            parts.append('"]')
        else:
            parts.append(':["l",')
            parts.append(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
            parts.append("]")
    parts.append("}")
    return "".join(parts)


# The characters json.dumps escapes when ensure_ascii is off.
_NEEDS_ESCAPE = re.compile(r'[\x00-\x1f\\"]')


def _json_string(text: str, parts: list[str]) -> None:
    if _NEEDS_ESCAPE.search(text) is None:
        parts += ('"', text, '"')
    else:
        parts.append(json.dumps(text, ensure_ascii=False))


def decode_metadata(text: str) -> Metadata:
    """Inverse of `encode_metadata`; ValueError if `text` is not what it wrote."""
    return _decode_object(json.loads(text))


def decode_metadata_many(texts: Sequence[str]) -> list[Metadata]:
    """`decode_metadata` of each text, with one JSON parse for all of them (loading a store
    decodes every row). ValueError as `decode_metadata`."""
    try:
        raws = json.loads("[" + ",".join(texts) + "]")
    except ValueError:
        raws = None
    if not isinstance(raws, list) or len(raws) != len(texts):
        return [decode_metadata(text) for text in texts]  # raises for the first bad text
    return [_decode_object(raw) for raw in raws]


def _decode_object(raw: object) -> Metadata:
    if not isinstance(raw, dict):
        raise ValueError("metadata is not a JSON object")
    out: Metadata = {}
    for key, pair in raw.items():
        if not isinstance(pair, list) or len(pair) != 2:
            raise ValueError(f"metadata field {key!r} is not a [tag, value] pair")
        tag, value = pair
        out[key] = _decode_value(tag, value, key)
    return out


def _decode_value(tag: object, value: object, key: str) -> MetadataValue:
    if tag == "b" and isinstance(value, bool):
        return value
    if tag == "i" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tag == "f" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tag == "s" and isinstance(value, str):
        return value
    if tag == "y" and isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error:
            raise ValueError(f"metadata field {key!r} holds invalid base64") from None
    if tag == "l" and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"metadata field {key!r} has an unknown tag {tag!r} or a mismatched value")


def vector_rows(vectors: np.ndarray) -> np.ndarray:
    """A float32 matrix whose rows are the vectors' blobs (see `blob`): little-endian float32
    whatever the machine, so data directories can move between hosts. The matrix itself on
    little-endian machines, so a batch is not copied again to be written."""
    return np.ascontiguousarray(vectors, dtype="<f4")


def blob(row: np.ndarray) -> memoryview:
    """The bytes of one row of `vector_rows`, without a copy."""
    return row.data.cast("B")


def decode_vector(blob: bytes) -> np.ndarray:
    """A read-only float32 view of one vector blob."""
    return np.frombuffer(blob, dtype="<f4")


def row_checksum(entry_id: str, vector_blob: bytes | memoryview, metadata_json: str) -> int:
    crc = zlib.crc32(entry_id.encode("utf-8"))
    crc = zlib.crc32(vector_blob, crc)
    # UTF-8 a piece at a time: a long metadata text is not copied whole.
    for start in range(0, len(metadata_json), _CHUNK):
        crc = zlib.crc32(metadata_json[start : start + _CHUNK].encode("utf-8"), crc)
    return crc


def row_checksum_bytes(entry_id: bytes, vector_blob: bytes, metadata_json: bytes) -> int:
    """`row_checksum` of an id and metadata already encoded as UTF-8."""
    return zlib.crc32(metadata_json, zlib.crc32(vector_blob, zlib.crc32(entry_id)))
