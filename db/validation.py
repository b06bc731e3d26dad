"""Checks on every request argument, so that each client gets the same clear errors.

hnswlib reports misuse as bare RuntimeErrors (or crashes), so nothing reaches it unchecked.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nachbar.db import codec
from nachbar.db.errors import InvalidArgumentError
from nachbar.db.types import (
    Entry,
    EntryBatch,
    ExactConfig,
    HnswConfig,
    Metadata,
    MetadataSelection,
    Metric,
    SearchMode,
    StoreSpec,
)

STORE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
MAX_DIMENSION = 65536
MAX_K = 10_000
MAX_EF = 10_000
MAX_PAGE_LIMIT = 10_000
MAX_ID_CHARS = 1024
MAX_M = 256
MAX_EF_CONSTRUCTION = 10_000
MAX_EXCLUDED_KEYS = 1024
_TOKEN_PREFIX = "1"  # version of the page token format


def store_name(name: object) -> str:
    if not isinstance(name, str) or not STORE_NAME.fullmatch(name):
        raise InvalidArgumentError(
            f"store name {name!r} is invalid; use 1 to 128 characters from A-Z, a-z, 0-9, "
            "'_', '.' and '-'"
        )
    return name


def store_spec(spec: StoreSpec) -> StoreSpec:
    """The spec with its fields checked and normalized (sorted, de-duplicated index fields)."""
    name = store_name(spec.name)
    dim = spec.dimension
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= MAX_DIMENSION:
        raise InvalidArgumentError(
            f"store {name!r}: dimension {dim!r} is out of range; use 1 to {MAX_DIMENSION}"
        )
    try:
        metric = Metric(spec.metric)
    except ValueError:
        raise InvalidArgumentError(
            f"store {name!r}: unknown metric {spec.metric!r}; use cosine, l2 or ip"
        ) from None
    index = spec.index
    if isinstance(index, HnswConfig):
        _in_range(name, "m", index.m, 2, MAX_M)
        _in_range(name, "ef_construction", index.ef_construction, 1, MAX_EF_CONSTRUCTION)
        _in_range(name, "ef_search", index.ef_search, 1, MAX_EF)
    elif not isinstance(index, ExactConfig):
        raise InvalidArgumentError(
            f"store {name!r}: index must be HnswConfig or ExactConfig, not {type(index).__name__}"
        )
    fields = field_names(spec.predicate_indexes, f"store {name!r}", allow_empty=True)
    meta = spec.store_metadata
    if not isinstance(meta, Mapping) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in meta.items()
    ):
        raise InvalidArgumentError(
            f"store {name!r}: store_metadata must map non-empty strings to strings"
        )
    keyword_fields = None
    if spec.keyword_fields is not None:
        keyword_fields = tuple(field_names(spec.keyword_fields, f"store {name!r} keyword index"))
    return StoreSpec(
        name=name,
        dimension=dim,
        metric=metric,
        index=index,
        predicate_indexes=tuple(sorted(set(fields))),
        store_metadata=dict(meta),
        keyword_fields=keyword_fields,
    )


def _in_range(store: str, what: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgumentError(
            f"store {store!r}: HNSW {what} {value!r} is out of range; use {low} to {high}"
        )


def field_names(fields: Sequence[str], where: str, *, allow_empty: bool = False) -> list[str]:
    if isinstance(fields, str) or not isinstance(fields, Sequence):
        raise InvalidArgumentError(f"{where}: give the field names as a list of strings")
    if not fields and not allow_empty:
        raise InvalidArgumentError(f"{where}: give at least one field name")
    out: list[str] = []
    for field_name in fields:
        if not isinstance(field_name, str) or not field_name:
            raise InvalidArgumentError(f"{where}: field names must be non-empty strings")
        if len(field_name) > codec.MAX_FIELD_NAME_CHARS:
            raise InvalidArgumentError(
                f"{where}: field name {field_name[:40]!r}... is longer than "
                f"{codec.MAX_FIELD_NAME_CHARS} characters"
            )
        if field_name not in out:
            out.append(field_name)
    return out


def entry_id(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArgumentError(f"{where}: entry ids must be non-empty strings, got {value!r}")
    if len(value) > MAX_ID_CHARS:
        raise InvalidArgumentError(
            f"{where}: entry id {value[:40]!r}... is longer than {MAX_ID_CHARS} characters"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError(f"{where}: entry id {value!r} is not valid Unicode") from None
    return value


def entry_ids(values: Sequence[str], store: str) -> list[str]:
    """Ids of a read or delete request, de-duplicated in request order."""
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise InvalidArgumentError(f"store {store!r}: give the ids as a list of strings")
    seen: dict[str, None] = {}
    for value in values:
        seen[entry_id(value, f"store {store!r}")] = None
    return list(seen)


def vector(values: Any, *, store: str, dimension: int, metric: Metric, what: str) -> np.ndarray:
    """A 1-D float32 array of the store's dimension with finite values (non-zero for cosine)."""
    if values is None:
        raise InvalidArgumentError(
            f"store {store!r}: {what} has no vector; give {dimension} floats"
        )
    try:
        # Values beyond float32 become inf here and are reported just below.
        with np.errstate(over="ignore"):
            array = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError):
        raise InvalidArgumentError(
            f"store {store!r}: {what} is not a list of numbers; give {dimension} floats"
        ) from None
    if array.ndim != 1 or array.shape[0] != dimension:
        got = array.shape[0] if array.ndim == 1 else f"shape {array.shape}"
        raise InvalidArgumentError(
            f"store {store!r} has dimension {dimension}, but {what} has {got} values; "
            "give vectors of the store's dimension"
        )
    if not np.isfinite(array).all():
        raise InvalidArgumentError(
            f"store {store!r}: {what} contains NaN or infinity (or a value too large for "
            "float32); give finite numbers"
        )
    if metric == Metric.COSINE and not np.any(array):
        raise InvalidArgumentError(
            f"store {store!r}: {what} is all zeros, which has no direction under the cosine "
            "metric; give a non-zero vector"
        )
    return np.ascontiguousarray(array)


def upsert_batch(
    spec: StoreSpec, entries: Sequence[Entry] | EntryBatch
) -> tuple[list[str], np.ndarray, list[Metadata]]:
    """Ids, a (n, dimension) float32 matrix and private metadata copies of a valid batch. An
    EntryBatch's float32 matrix is checked as a whole and used as it is, not copied."""
    name = spec.name
    if isinstance(entries, EntryBatch):
        ids, metadata = list(entries.ids), list(entries.metadata)
        matrix = entries.vectors
        if (
            len(metadata) != len(ids)
            or not isinstance(matrix, np.ndarray)
            or len(matrix) != len(ids)
        ):
            raise InvalidArgumentError(
                f"store {name!r}: the batch has {len(ids)} ids, {len(metadata)} metadata and "
                f"{len(matrix)} vectors; give one of each per entry"
            )
    elif isinstance(entries, Entry) or not isinstance(entries, Sequence):
        raise InvalidArgumentError(f"store {name!r}: give the entries to upsert as a list")
    else:
        for position, entry in enumerate(entries):
            if not isinstance(entry, Entry):
                raise InvalidArgumentError(
                    f"store {name!r}: entry {position} is a {type(entry).__name__}, not an Entry"
                )
        ids = [entry.id for entry in entries]
        metadata = [entry.metadata for entry in entries]
        matrix = None
    if not ids:
        raise InvalidArgumentError(
            f"store {name!r}: the upsert batch is empty; give at least one entry"
        )
    seen: set[str] = set()
    for position, value in enumerate(ids):
        entry_id(value, f"store {name!r}: entry {position}")
        if value in seen:
            raise InvalidArgumentError(
                f"store {name!r}: id {value!r} appears twice in one upsert batch; send each id once"
            )
        seen.add(value)
    if matrix is None:
        assert not isinstance(entries, EntryBatch)
        matrix = np.empty((len(ids), spec.dimension), dtype=np.float32)
        for position, entry in enumerate(entries):
            matrix[position] = _entry_vector(spec, entry.id, entry.vector)
    else:
        matrix = _checked_matrix(spec, ids, matrix)
    metas = [
        codec.check_metadata(meta, f"store {name!r}: entry {value!r}")
        for value, meta in zip(ids, metadata, strict=True)
    ]
    return ids, matrix, metas


def _entry_vector(spec: StoreSpec, entry_id: str, values: Any) -> np.ndarray:
    return vector(
        values,
        store=spec.name,
        dimension=spec.dimension,
        metric=spec.metric,
        what=f"entry {entry_id!r}",
    )


def _checked_matrix(spec: StoreSpec, ids: Sequence[str], matrix: np.ndarray) -> np.ndarray:
    """The batch's matrix if it is valid; otherwise the first bad row's error (the same error
    an Entry with that vector gets)."""
    if matrix.dtype != np.float32 or matrix.ndim != 2 or not matrix.flags.c_contiguous:
        raise InvalidArgumentError(
            f"store {spec.name!r}: the batch's vectors must be a C-contiguous (n, dimension) "
            "float32 matrix"
        )
    if matrix.shape[1] != spec.dimension:
        _entry_vector(spec, ids[0], matrix[0])
    bad = ~np.isfinite(matrix).all(axis=1)
    if spec.metric == Metric.COSINE:
        bad |= ~matrix.any(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        _entry_vector(spec, ids[first], matrix[first])
    return matrix


def search_args(store: str, k: object, ef: object, mode: object) -> tuple[int, int, SearchMode]:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidArgumentError(f"store {store!r}: k is {k!r}; ask for at least 1 result")
    if k > MAX_K:
        raise InvalidArgumentError(
            f"store {store!r}: k {k} is more than {MAX_K}; ask for fewer results or page "
            "through entries with GetByPredicate"
        )
    if isinstance(ef, bool) or not isinstance(ef, int) or ef < 0:
        raise InvalidArgumentError(f"store {store!r}: ef is {ef!r}; use 0 (store default) or more")
    if ef > MAX_EF:
        raise InvalidArgumentError(
            f"store {store!r}: ef {ef} is more than {MAX_EF}; use a smaller ef or mode exact"
        )
    try:
        search_mode = SearchMode(str(mode))
    except ValueError:
        raise InvalidArgumentError(
            f"store {store!r}: unknown search mode {mode!r}; use auto, exact or hnsw"
        ) from None
    return k, ef, search_mode


def metadata_selection(store: str, selection: MetadataSelection) -> MetadataSelection:
    keys = selection.exclude_keys
    if isinstance(keys, str) or not all(isinstance(k, str) for k in keys):
        raise InvalidArgumentError(
            f"store {store!r}: exclude_metadata_keys must be a list of field names"
        )
    if len(keys) > MAX_EXCLUDED_KEYS:
        raise InvalidArgumentError(
            f"store {store!r}: {len(keys)} exclude_metadata_keys are more than "
            f"{MAX_EXCLUDED_KEYS}; leave out large values with max_metadata_value_bytes, or "
            "all metadata with include_metadata=false"
        )
    limit = selection.max_value_bytes
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise InvalidArgumentError(
            f"store {store!r}: max_metadata_value_bytes is {limit!r}; use 0 (no limit) or more"
        )
    return MetadataSelection(bool(selection.include), frozenset(keys), limit)


def page_limit(store: str, limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_LIMIT:
        raise InvalidArgumentError(
            f"store {store!r}: page limit {limit!r} is out of range; use 1 to {MAX_PAGE_LIMIT}"
        )
    return limit


def encode_page_token(last_id: str) -> str:
    raw = base64.urlsafe_b64encode(last_id.encode("utf-8")).decode("ascii").rstrip("=")
    return _TOKEN_PREFIX + raw


def decode_page_token(store: str, token: object) -> str | None:
    """The last id of the previous page, or None for the first page."""
    if token == "" or token is None:
        return None
    bad = InvalidArgumentError(
        f"store {store!r}: page_token {token!r} was not returned by GetByPredicate; pass the "
        "next_page_token of the previous page, or an empty token for the first page"
    )
    if not isinstance(token, str) or not token.startswith(_TOKEN_PREFIX):
        raise bad
    body = token[len(_TOKEN_PREFIX) :]
    try:
        padded = body + "=" * (-len(body) % 4)
        last_id = base64.b64decode(padded, altchars=b"-_", validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise bad from None
    if not last_id:
        raise bad
    return last_id
