"""Python values <-> protobuf messages for metadata, filters and index options.

Metadata values are `str | int | float | bool | bytes | list[str]`. Filters are built with
`Field`, or given as JSON-like dicts (see `filter_from_dict`), e.g.::

    (Field("kind") == "photo") & (Field("year") >= 2020) & ~Field("tags").contains("draft")
    {"all_of": [{"kind": {"eq": "photo"}}, {"year": {"gte": 2020}}]}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeAlias

from nachbar.v1 import common_pb2 as pb

MetadataValue: TypeAlias = str | int | float | bool | bytes | list[str]
Metadata: TypeAlias = dict[str, MetadataValue]

_OPS = {
    "eq": pb.Condition.OP_EQ,
    "ne": pb.Condition.OP_NE,
    "lt": pb.Condition.OP_LT,
    "lte": pb.Condition.OP_LTE,
    "gt": pb.Condition.OP_GT,
    "gte": pb.Condition.OP_GTE,
    "in": pb.Condition.OP_IN,
    "not_in": pb.Condition.OP_NOT_IN,
    "exists": pb.Condition.OP_EXISTS,
}
OP_NAMES = {v: k for k, v in _OPS.items()}


def value_to_proto(value: MetadataValue) -> pb.MetadataValue:
    # bool before int: bool is a subclass of int.
    if isinstance(value, bool):
        return pb.MetadataValue(bool_value=value)
    if isinstance(value, int):
        return pb.MetadataValue(int_value=value)
    if isinstance(value, float):
        return pb.MetadataValue(float_value=value)
    if isinstance(value, str):
        return pb.MetadataValue(string_value=value)
    if isinstance(value, bytes | bytearray):
        return pb.MetadataValue(bytes_value=bytes(value))
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return pb.MetadataValue(string_list_value=pb.StringList(values=list(value)))
    raise TypeError(
        f"unsupported metadata value {value!r} of type {type(value).__name__}: use str, int, "
        "float, bool, bytes or a list of str"
    )


def value_from_proto(value: pb.MetadataValue) -> MetadataValue:
    kind = value.WhichOneof("kind")
    if kind is None:
        raise ValueError("metadata value has no kind set")
    if kind == "string_list_value":
        return list(value.string_list_value.values)
    result: MetadataValue = getattr(value, kind)
    return result


def metadata_to_proto(metadata: Mapping[str, MetadataValue] | None) -> dict[str, pb.MetadataValue]:
    return {k: value_to_proto(v) for k, v in (metadata or {}).items()}


def metadata_from_proto(metadata: Mapping[str, pb.MetadataValue]) -> Metadata:
    return {k: value_from_proto(v) for k, v in metadata.items()}


class Field:
    """Builds filter conditions on one metadata field with Python operators."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _cond(self, op: str, value: MetadataValue | None = None) -> Filter:
        cond = pb.Condition(field=self.name, op=_OPS[op])
        if value is not None:
            cond.value.CopyFrom(value_to_proto(value))
        return Filter(pb.Filter(condition=cond))

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
        cond = pb.Condition(field=self.name, op=_OPS[op])
        cond.values.extend(value_to_proto(v) for v in values)
        return Filter(pb.Filter(condition=cond))

    __hash__ = None  # type: ignore[assignment]


class Filter:
    """A filter expression; combine with `&`, `|` and `~`.

    A chain of `&` (or of `|`) builds one flat all_of (any_of), not a nest of pairs: servers
    limit how deep filters nest, and `a | b | c | ...` would otherwise nest once per operand."""

    def __init__(self, proto: pb.Filter) -> None:
        self._proto: pb.Filter | None = proto
        self._joined_by = ""  # "all_of" or "any_of" when built by & or |
        self._parts: tuple[pb.Filter, ...] = ()

    @classmethod
    def _join(cls, kind: str, left: Filter, right: Filter) -> Filter:
        joined = cls.__new__(cls)
        joined._proto = None  # built on first use, so a long chain is not copied per operand
        joined._joined_by = kind
        joined._parts = left._operands(kind) + right._operands(kind)
        return joined

    def _operands(self, kind: str) -> tuple[pb.Filter, ...]:
        return self._parts if self._joined_by == kind else (self.proto,)

    @property
    def proto(self) -> pb.Filter:
        if self._proto is None:
            parts = pb.FilterList(filters=self._parts)
            if self._joined_by == "all_of":
                self._proto = pb.Filter(all_of=parts)
            else:
                self._proto = pb.Filter(any_of=parts)
        return self._proto

    def __and__(self, other: Filter) -> Filter:
        return Filter._join("all_of", self, other)

    def __or__(self, other: Filter) -> Filter:
        return Filter._join("any_of", self, other)

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


def filter_from_dict(spec: Mapping[str, Any]) -> pb.Filter:
    """A filter from a JSON-like dict.

    Forms: ``{"all_of": [...]}``, ``{"any_of": [...]}``, ``{"not": {...}}``, and
    ``{"field": {"op": operand}}`` with op one of eq, ne, lt, lte, gt, gte, in, not_in,
    exists (operand ignored for exists). A dict with several fields is their AND.
    """
    if not isinstance(spec, Mapping) or not spec:
        raise ValueError(f"a filter must be a non-empty object, got {spec!r}")
    parts: list[pb.Filter] = []
    for key, body in spec.items():
        if key in ("all_of", "any_of"):
            if not isinstance(body, Sequence) or isinstance(body, str) or not body:
                raise ValueError(f"{key!r} takes a non-empty list of filters")
            lst = pb.FilterList(filters=[filter_from_dict(b) for b in body])
            parts.append(pb.Filter(all_of=lst) if key == "all_of" else pb.Filter(any_of=lst))
        elif key == "not":
            parts.append(pb.Filter(negate=filter_from_dict(body)))
        else:
            if not isinstance(body, Mapping) or not body:
                raise ValueError(
                    f'field {key!r} needs an object of operators, e.g. {{"eq": "red"}}'
                )
            for op, operand in body.items():
                if op not in _OPS:
                    raise ValueError(f"unknown filter operator {op!r}; use one of {sorted(_OPS)}")
                field = Field(key)
                if op in ("in", "not_in"):
                    if not isinstance(operand, list):
                        raise ValueError(f"{op!r} on {key!r} takes a list")
                    parts.append(field._members(op, operand).proto)
                elif op == "exists":
                    parts.append(field.exists().proto)
                else:
                    parts.append(field._cond(op, operand).proto)
    return parts[0] if len(parts) == 1 else pb.Filter(all_of=pb.FilterList(filters=parts))


def filter_to_dict(proto: pb.Filter) -> dict[str, Any]:
    kind = proto.WhichOneof("kind")
    if kind in ("all_of", "any_of"):
        return {kind: [filter_to_dict(f) for f in getattr(proto, kind).filters]}
    if kind == "negate":
        return {"not": filter_to_dict(proto.negate)}
    if kind == "condition":
        cond = proto.condition
        op = OP_NAMES.get(cond.op, "unspecified")
        operand: Any
        if op in ("in", "not_in"):
            operand = [value_from_proto(v) for v in cond.values]
        elif op == "exists":
            operand = True
        else:
            operand = value_from_proto(cond.value) if cond.HasField("value") else None
        return {cond.field: {op: operand}}
    return {}
