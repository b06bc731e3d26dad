"""Python values <-> the protobuf messages the services share: metadata values, filters, and the
names of enum values (metrics, search modes, truncation policies).

The one codec of these messages: nachbar-db and nachbar-ai, the Python client and the CLI all
use it, so a value means the same thing wherever it is converted. Metadata values are
`str | int | float | bool | bytes | list[str]`; filters have a JSON-like dict form::

    {"all_of": [{"kind": {"eq": "photo"}}, {"year": {"gte": 2020}}]}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from typing import Any, TypeAlias

from nachbar.v1 import ai_pb2
from nachbar.v1 import common_pb2 as pb

MetadataValue: TypeAlias = str | int | float | bool | bytes | list[str]
Metadata: TypeAlias = dict[str, MetadataValue]

FILTER_OPS = {
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
FILTER_OP_NAMES = {v: k for k, v in FILTER_OPS.items()}
# Operators that take a list of operands (Condition.values) instead of one (Condition.value).
MEMBERSHIP_OPS = frozenset({"in", "not_in"})

METRICS = {"cosine": pb.METRIC_COSINE, "l2": pb.METRIC_L2, "ip": pb.METRIC_INNER_PRODUCT}
METRIC_NAMES = {v: k for k, v in METRICS.items()}
SEARCH_MODES = {
    "auto": pb.SEARCH_MODE_AUTO,
    "exact": pb.SEARCH_MODE_EXACT,
    "hnsw": pb.SEARCH_MODE_HNSW,
}
SEARCH_MODE_NAMES = {v: k for k, v in SEARCH_MODES.items()}
TRUNCATIONS = {
    "error": ai_pb2.TRUNCATION_POLICY_ERROR,
    "truncate": ai_pb2.TRUNCATION_POLICY_TRUNCATE,
}
TRUNCATION_NAMES = {v: k for k, v in TRUNCATIONS.items()}


# -- metadata -------------------------------------------------------------------------------------


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


def fill_metadata(
    target: MutableMapping[str, pb.MetadataValue], metadata: Mapping[str, MetadataValue]
) -> None:
    """Write metadata into a message's map field in place. Every match of every search passes
    here: setting the scalar fields in place is about 3x faster than building a MetadataValue
    per value and copying it into the map, and gives the same message."""
    for key, value in metadata.items():
        # Exact type checks: bool is a subclass of int, and subclasses take the general path.
        if type(value) is str:
            target[key].string_value = value
        elif type(value) is int:
            target[key].int_value = value
        elif type(value) is float:
            target[key].float_value = value
        elif type(value) is bool:
            target[key].bool_value = value
        else:
            target[key].CopyFrom(value_to_proto(value))


# -- filters --------------------------------------------------------------------------------------


def condition(field: str, op: str, value: MetadataValue | None = None) -> pb.Filter:
    """One test on one field; `op` is a name of FILTER_OPS (see `members` for in / not_in)."""
    cond = pb.Condition(field=field, op=FILTER_OPS[op])
    if value is not None:
        cond.value.CopyFrom(value_to_proto(value))
    return pb.Filter(condition=cond)


def members(field: str, op: str, values: Iterable[MetadataValue]) -> pb.Filter:
    """`in` or `not_in` a list of values."""
    cond = pb.Condition(field=field, op=FILTER_OPS[op])
    cond.values.extend(value_to_proto(v) for v in values)
    return pb.Filter(condition=cond)


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
                if op not in FILTER_OPS:
                    raise ValueError(
                        f"unknown filter operator {op!r}; use one of {sorted(FILTER_OPS)}"
                    )
                if op in MEMBERSHIP_OPS:
                    if not isinstance(operand, list):
                        raise ValueError(f"{op!r} on {key!r} takes a list")
                    parts.append(members(key, op, operand))
                elif op == "exists":
                    parts.append(condition(key, op))
                else:
                    parts.append(condition(key, op, operand))
    return parts[0] if len(parts) == 1 else pb.Filter(all_of=pb.FilterList(filters=parts))


def filter_to_dict(proto: pb.Filter) -> dict[str, Any]:
    kind = proto.WhichOneof("kind")
    if kind in ("all_of", "any_of"):
        return {kind: [filter_to_dict(f) for f in getattr(proto, kind).filters]}
    if kind == "negate":
        return {"not": filter_to_dict(proto.negate)}
    if kind == "condition":
        cond = proto.condition
        op = FILTER_OP_NAMES.get(cond.op, "unspecified")
        operand: Any
        if op in MEMBERSHIP_OPS:
            operand = [value_from_proto(v) for v in cond.values]
        elif op == "exists":
            operand = True
        else:
            operand = value_from_proto(cond.value) if cond.HasField("value") else None
        return {cond.field: {op: operand}}
    return {}
