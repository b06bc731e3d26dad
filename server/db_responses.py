"""Read responses that the client can receive.

GetKey, GetByPredicate and GetSimN responses are sized from the domain objects before anything
is built (db_convert has the encoded sizes). A response that would exceed the limit - the
server's --max-message-bytes, or the request's smaller max_response_bytes - is cut where the
protocol allows it (GetByPredicate ends the page early, GetKey with allow_partial leaves ids for
another request) and refused with RESOURCE_EXHAUSTED otherwise, with a message saying how large
it would be and what to ask for instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from nachbar.db import types, validation
from nachbar.db.validation import MAX_ID_CHARS
from nachbar.server import db_convert as conv
from nachbar.server.errors import ResponseTooLargeError
from nachbar.v1 import db_pb2

# Room kept for a next_page_token: the longest id is MAX_ID_CHARS characters of up to four
# UTF-8 bytes each, base64-encoded behind a one-character version prefix.
_TOKEN_ROOM = conv.ids_size(["x" * (2 + (4 * MAX_ID_CHARS * 4) // 3)])
_PLAN_ROOM = conv.ids_size(["exact"])  # "exact" or "hnsw"


@dataclass(frozen=True)
class ResponseLimit:
    bytes: int
    source: str  # which setting the limit comes from, for messages

    @classmethod
    def of(cls, server_max: int, requested: int) -> ResponseLimit:
        if 0 < requested < server_max:
            return cls(requested, "the request's max_response_bytes")
        return cls(server_max, "the server's --max-message-bytes")


def get_key(
    store: str,
    found: Sequence[types.Entry],
    missing: Sequence[str],
    limit: ResponseLimit,
    *,
    allow_partial: bool,
) -> db_pb2.GetKeyResponse:
    if stored_size_bound(found) + conv.ids_size(missing) <= limit.bytes:
        return db_pb2.GetKeyResponse(
            entries=[conv.entry_to_proto(e) for e in found], missing_ids=missing
        )
    sizes = [conv.entry_size(e) for e in found]
    total = conv.ids_size(missing) + sum(sizes)
    returned = len(found)
    if total > limit.bytes:
        # Entry by entry, each returned entry replaces its id in unreturned_ids.
        total = conv.ids_size(missing) + conv.ids_size(e.id for e in found)
        returned = 0
        for entry, size in zip(found, sizes, strict=True):
            total += size - conv.ids_size([entry.id])
            if total > limit.bytes:
                break
            returned += 1
        if not allow_partial or returned == 0:
            raise _too_large(
                f"GetKey on store {store!r}",
                found,
                sum(sizes),
                limit,
                fewer=(
                    f"ask for fewer ids (the first {returned} fit), or set allow_partial to "
                    "receive those that fit and the others' ids in unreturned_ids"
                    if returned
                    else f"entry {found[0].id!r} alone does not fit"
                ),
            )
    return db_pb2.GetKeyResponse(
        entries=[conv.entry_to_proto(e) for e in found[:returned]],
        missing_ids=missing,
        unreturned_ids=[e.id for e in found[returned:]],
    )


def page(store: str, result: types.Page, limit: ResponseLimit) -> db_pb2.GetByPredicateResponse:
    entries = result.entries
    token = result.next_page_token
    if stored_size_bound(entries) <= limit.bytes - _TOKEN_ROOM:
        return db_pb2.GetByPredicateResponse(
            entries=[conv.entry_to_proto(e) for e in entries], next_page_token=token
        )
    sizes = [conv.entry_size(e) for e in entries]
    fit = _fitting(sizes, limit.bytes - _TOKEN_ROOM)
    if fit < len(entries):
        if fit == 0:
            raise _too_large(
                f"GetByPredicate on store {store!r}",
                entries[:1],
                sizes[0],
                limit,
                fewer=f"entry {entries[0].id!r} alone does not fit",
            )
        entries = entries[:fit]
        token = validation.encode_page_token(entries[-1].id)
    return db_pb2.GetByPredicateResponse(
        entries=[conv.entry_to_proto(e) for e in entries], next_page_token=token
    )


def search(store: str, result: types.SearchResult, limit: ResponseLimit) -> db_pb2.GetSimNResponse:
    if stored_size_bound(result.matches) <= limit.bytes - _PLAN_ROOM:
        return conv.search_response(result)  # the common case, without sizing every field
    sizes = [conv.entry_size(m) for m in result.matches]
    total = sum(sizes)
    if total > limit.bytes - _PLAN_ROOM:
        fit = _fitting(sizes, limit.bytes - _PLAN_ROOM)
        raise _too_large(
            f"GetSimN on store {store!r}",
            result.matches,
            total,
            limit,
            fewer=f"ask for fewer matches (k={fit} fits)"
            if fit
            else f"match {result.matches[0].id!r} alone does not fit",
        )
    return conv.search_response(result)


def stored_size_bound(entries: Sequence[types.Entry | types.Match]) -> int:
    """An upper bound of the encoded size of `entries` from their stored sizes, which costs
    nothing per field. A metadata field never takes more than twice its bytes in the stored
    JSON plus 16 when encoded (for every value type: the JSON spells each payload at least as
    long, less ten bytes for an int, and frames it with at least ten bytes); id and vector are
    stored in full, and 64 bytes per entry cover the framing."""
    total = 0
    for entry in entries:
        if entry.stored_bytes <= 0:
            return _UNKNOWN
        fields = len(entry.metadata) + len(entry.omitted_keys)
        total += 2 * entry.stored_bytes + 16 * fields + 64
    return total


_UNKNOWN = 1 << 62


def _fitting(sizes: Sequence[int], budget: int) -> int:
    """How many of the leading items fit into `budget` bytes."""
    total = 0
    for count, size in enumerate(sizes):
        total += size
        if total > budget:
            return count
    return len(sizes)


def _too_large(
    what: str,
    entries: Sequence[types.Entry | types.Match],
    size: int,
    limit: ResponseLimit,
    *,
    fewer: str,
) -> ResponseTooLargeError:
    by_field: Counter[str] = Counter()
    vector_bytes = 0
    for entry in entries:
        for key, value in entry.metadata.items():
            by_field[key] += conv.field_size(key, value)
        if entry.vector is not None:
            vector_bytes += 4 * len(entry.vector)
    hints = [fewer]
    if by_field:
        largest = ", ".join(f"{key!r} {_human(n)}" for key, n in by_field.most_common(3))
        keys = [key for key, _ in by_field.most_common(2)]
        hints.append(
            f"leave out large metadata with exclude_metadata_keys={keys} (largest fields here: "
            f"{largest}), max_metadata_value_bytes, or include_metadata=false"
        )
    if vector_bytes:
        hints.append(f"set include_vectors=false (vectors take {_human(vector_bytes)} here)")
    count = len(entries)
    noun = "entries" if count != 1 else "entry"
    if isinstance(entries[0], types.Match):
        noun = "matches" if count != 1 else "match"
    return ResponseTooLargeError(
        f"{what}: the {count} {noun} would make a {_human(size)} response, over the "
        f"{_human(limit.bytes)} limit ({limit.source}); {'; or '.join(hints)}"
    )


def _human(size: int) -> str:
    if size >= 1 << 20:
        return f"{size / (1 << 20):.1f} MB"
    if size >= 1 << 10:
        return f"{size / (1 << 10):.1f} KB"
    return f"{size} bytes"
