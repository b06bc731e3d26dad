"""Metadata filters: the expression tree, its validation and its reference semantics.

`matches` is the definition of what a filter means. Predicate indexes (nachbar.db.predicates)
are only a faster way to get the same answer, and the tests hold them to it.

Semantics (the same as documented in nachbar/v1/common.proto):
- EQ on a string-list field with a string operand matches when the list contains the operand;
  with a list operand it matches an equal list.
- ints and floats compare by numeric value; bool is its own type (True does not equal 1).
- an operand of another type than the field's value never matches EQ/IN/LT/LTE/GT/GTE.
- NE is exactly NOT EQ and NOT_IN exactly NOT IN, so both match entries without the field;
  every other op is false on a missing field.
- LT/LTE/GT/GTE order numbers numerically, strings and bytes lexicographically (by code point
  and by byte), and are false for bools and string lists.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeAlias

from nachbar.db.errors import InvalidArgumentError
from nachbar.db.types import MetadataValue

MAX_DEPTH = 64  # nesting of all_of/any_of/not; deeper trees are refused, not recursed into


class Op(StrEnum):
    EQ = "eq"
    NE = "ne"
    LT = "lt"
    LTE = "lte"
    GT = "gt"
    GTE = "gte"
    IN = "in"
    NOT_IN = "not_in"
    EXISTS = "exists"


ORDER_OPS = frozenset({Op.LT, Op.LTE, Op.GT, Op.GTE})
SINGLE_VALUE_OPS = frozenset({Op.EQ, Op.NE}) | ORDER_OPS
MULTI_VALUE_OPS = frozenset({Op.IN, Op.NOT_IN})
NEGATED_OPS = frozenset({Op.NE, Op.NOT_IN})  # NE is NOT EQ, NOT_IN is NOT IN


@dataclass(frozen=True)
class Condition:
    field: str
    op: Op
    value: MetadataValue | None = None  # operand of EQ, NE, LT, LTE, GT, GTE
    values: tuple[MetadataValue, ...] = ()  # operands of IN, NOT_IN


@dataclass(frozen=True)
class AllOf:
    filters: tuple[Filter, ...]


@dataclass(frozen=True)
class AnyOf:
    filters: tuple[Filter, ...]


@dataclass(frozen=True)
class Not:
    filter: Filter


Filter: TypeAlias = Condition | AllOf | AnyOf | Not


def validate(flt: Filter) -> None:
    """Raise InvalidArgumentError, naming the faulty part, if `flt` is malformed."""
    _validate(flt, "filter", 0)


def _validate(flt: object, path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise InvalidArgumentError(
            f"{path}: filters nest deeper than {MAX_DEPTH} levels; flatten the expression"
        )
    if isinstance(flt, Condition):
        _validate_condition(flt, path)
    elif isinstance(flt, AllOf | AnyOf):
        kind = "all_of" if isinstance(flt, AllOf) else "any_of"
        children = flt.filters
        if not isinstance(children, tuple | list) or not children:
            raise InvalidArgumentError(f"{path}.{kind} is empty; give at least one filter")
        for i, child in enumerate(children):
            _validate(child, f"{path}.{kind}[{i}]", depth + 1)
    elif isinstance(flt, Not):
        _validate(flt.filter, f"{path}.not", depth + 1)
    else:
        raise InvalidArgumentError(
            f"{path} is a {type(flt).__name__}; use Condition, AllOf, AnyOf or Not"
        )


def _validate_condition(cond: Condition, path: str) -> None:
    if not isinstance(cond.field, str) or not cond.field:
        raise InvalidArgumentError(f"{path}: condition has an empty field name; name a field")
    where = f"{path}: condition {cond.op} on {cond.field!r}"
    try:
        op = Op(cond.op)
    except ValueError:
        raise InvalidArgumentError(
            f"{where}: unknown operator; use one of {', '.join(o.value for o in Op)}"
        ) from None
    if op in SINGLE_VALUE_OPS:
        if cond.value is None:
            raise InvalidArgumentError(f"{where} needs a value")
        if cond.values:
            raise InvalidArgumentError(f"{where} takes one value, not a list of values")
        _validate_operand(cond.value, where)
        if op in ORDER_OPS and isinstance(cond.value, bool | list):
            kind = "a bool" if isinstance(cond.value, bool) else "a string list"
            raise InvalidArgumentError(
                f"{where} has {kind} operand, which has no order; "
                "compare numbers, strings or bytes, or use eq/in"
            )
    elif op in MULTI_VALUE_OPS:
        if not cond.values:
            raise InvalidArgumentError(f"{where} needs at least one value")
        if cond.value is not None:
            raise InvalidArgumentError(f"{where} takes a list of values, not a single value")
        for value in cond.values:
            _validate_operand(value, where)
    elif cond.value is not None or cond.values:
        raise InvalidArgumentError(f"{where} takes no value")


def _validate_operand(value: object, where: str) -> None:
    if isinstance(value, bool | int | str | bytes):
        return
    if isinstance(value, float):
        if math.isnan(value):
            raise InvalidArgumentError(f"{where} has a NaN operand, which equals nothing")
        return
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return
    raise InvalidArgumentError(
        f"{where} has an operand of type {type(value).__name__}; "
        "use str, int, float, bool, bytes or a list of str"
    )


def matches(flt: Filter, metadata: Mapping[str, MetadataValue]) -> bool:
    """Whether an entry with `metadata` satisfies `flt` (the reference semantics)."""
    if isinstance(flt, Condition):
        return condition_matches(flt, metadata)
    if isinstance(flt, AllOf):
        return all(matches(child, metadata) for child in flt.filters)
    if isinstance(flt, AnyOf):
        return any(matches(child, metadata) for child in flt.filters)
    return not matches(flt.filter, metadata)


def condition_matches(cond: Condition, metadata: Mapping[str, MetadataValue]) -> bool:
    if cond.op in NEGATED_OPS:
        return not positive_matches(cond, metadata)
    return positive_matches(cond, metadata)


def positive_matches(cond: Condition, metadata: Mapping[str, MetadataValue]) -> bool:
    """The condition with NE read as EQ and NOT_IN as IN: true only if the field is present."""
    if cond.field not in metadata:
        return False
    actual = metadata[cond.field]
    op = cond.op
    if op == Op.EXISTS:
        return True
    if op in (Op.EQ, Op.NE):
        assert cond.value is not None
        return equals(actual, cond.value)
    if op in (Op.IN, Op.NOT_IN):
        return any(equals(actual, operand) for operand in cond.values)
    assert cond.value is not None
    return _ordered(actual, op, cond.value)


def equals(actual: MetadataValue, operand: MetadataValue) -> bool:
    """EQ of a stored value and an operand, with list membership and strict bool typing."""
    if isinstance(operand, bool):
        return isinstance(actual, bool) and actual == operand
    if isinstance(operand, int | float):
        return _is_number(actual) and actual == operand
    if isinstance(operand, str):
        if isinstance(actual, list):
            return operand in actual
        return isinstance(actual, str) and actual == operand
    if isinstance(operand, bytes):
        return isinstance(actual, bytes) and actual == operand
    return isinstance(actual, list) and actual == operand


def _ordered(actual: MetadataValue, op: Op, operand: MetadataValue) -> bool:
    # Only same-kind pairs have an order: number/number, str/str, bytes/bytes.
    same_kind = (
        (_is_number(operand) and _is_number(actual))
        or (isinstance(operand, str) and isinstance(actual, str))
        or (isinstance(operand, bytes) and isinstance(actual, bytes))
    )
    return same_kind and _ORDER[op](actual, operand)


_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    Op.LT: operator.lt,
    Op.LTE: operator.le,
    Op.GT: operator.gt,
    Op.GTE: operator.ge,
}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def fields(flt: Filter) -> set[str]:
    """Every metadata field the filter reads."""
    if isinstance(flt, Condition):
        return {flt.field}
    if isinstance(flt, AllOf | AnyOf):
        out: set[str] = set()
        for child in flt.filters:
            out |= fields(child)
        return out
    return fields(flt.filter)
