"""Filters built with Python operators, and the value conversions of the shared codec.

Metadata values are `str | int | float | bool | bytes | list[str]`; the conversions come from
`nachbar.v1.codec`, which the servers and the CLI use too. Filters are built with `Field`, or
given as JSON-like dicts (see `filter_from_dict`), e.g.::

    (Field("kind") == "photo") & (Field("year") >= 2020) & ~Field("tags").contains("draft")
    {"all_of": [{"kind": {"eq": "photo"}}, {"year": {"gte": 2020}}]}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeAlias

from nachbar.v1 import common_pb2 as pb
from nachbar.v1.codec import FILTER_OP_NAMES as OP_NAMES
from nachbar.v1.codec import (
    Metadata,
    MetadataValue,
    condition,
    filter_from_dict,
    filter_to_dict,
    members,
    metadata_from_proto,
    metadata_to_proto,
    value_from_proto,
    value_to_proto,
)

__all__ = [
    "OP_NAMES",
    "Field",
    "Filter",
    "FilterLike",
    "Metadata",
    "MetadataValue",
    "filter_from_dict",
    "filter_to_dict",
    "filter_to_proto",
    "metadata_from_proto",
    "metadata_to_proto",
    "value_from_proto",
    "value_to_proto",
]


class Field:
    """Builds filter conditions on one metadata field with Python operators."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _cond(self, op: str, value: MetadataValue | None = None) -> Filter:
        return Filter(condition(self.name, op, value))

    def __eq__(self, value: object) -> Filter:  # type: ignore[override]
        return self._cond("eq", value)  # type: ignore[arg-type]

    def __ne__(self, value: object) -> Filter:  # type: ignore[override]
        return self._cond("ne", value)  # type: ignore[arg-type]

    def __lt__(self, value: MetadataValue) -> Filter:
        return self._cond("lt", value)

    def __le__(self, value: MetadataValue) -> Filter:
        return self._cond("lte", value)

    def __gt__(self, value: MetadataValue) -> Filter:
        return self._cond("gt", value)

    def __ge__(self, value: MetadataValue) -> Filter:
        return self._cond("gte", value)

    def contains(self, value: str) -> Filter:
        """For a list-of-strings field: the list holds `value` (same as ==)."""
        return self._cond("eq", value)

    def is_in(self, values: Iterable[MetadataValue]) -> Filter:
        return self._members("in", values)

    def not_in(self, values: Iterable[MetadataValue]) -> Filter:
        return self._members("not_in", values)

    def exists(self) -> Filter:
        return self._cond("exists")

    def _members(self, op: str, values: Iterable[MetadataValue]) -> Filter:
        return Filter(members(self.name, op, values))

    __hash__ = None  # type: ignore[assignment]


class Filter:
    """A filter expression; combine with `&`, `|` and `~`."""

    def __init__(self, proto: pb.Filter) -> None:
        self.proto = proto

    def __and__(self, other: Filter) -> Filter:
        return Filter(pb.Filter(all_of=pb.FilterList(filters=[self.proto, other.proto])))

    def __or__(self, other: Filter) -> Filter:
        return Filter(pb.Filter(any_of=pb.FilterList(filters=[self.proto, other.proto])))

    def __invert__(self) -> Filter:
        return Filter(pb.Filter(negate=self.proto))

    def __repr__(self) -> str:
        return f"Filter({filter_to_dict(self.proto)!r})"


FilterLike: TypeAlias = Filter | pb.Filter | Mapping[str, Any]


def filter_to_proto(value: FilterLike | None) -> pb.Filter | None:
    if value is None:
        return None
    if isinstance(value, Filter):
        return value.proto
    if isinstance(value, pb.Filter):
        return value
    return filter_from_dict(value)
