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

Cost: `validate` refuses filters beyond `FilterLimits` before any entry is tested, and
`compile_filter` turns a valid filter, once per request, into tests whose cost per entry does
not grow with the number of operands: `in` and `not_in` look values up in sets, and `eq` tests
of one field joined by any_of (or `ne` tests joined by all_of) become one `in` (`not_in`).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from typing import Any, TypeAlias

from nachbar.db.errors import InvalidArgumentError
from nachbar.db.types import MetadataValue


@dataclass(frozen=True)
class FilterLimits:
    """How large a filter may be. Without a predicate index a filter costs (conditions x
    entries) tests, so the number of conditions is what bounds a request's cost."""

    max_conditions: int = 128
    # Levels of all_of/any_of/not. Protobuf decodes at most 100 nested messages and each
    # all_of/any_of level takes two, so more than 48 could not arrive over gRPC anyway.
    max_depth: int = 32
    max_values: int = 65_536  # operands of one in / not_in


DEFAULT_LIMITS = FilterLimits()


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


def too_deep(path: str, limits: FilterLimits) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"{path}: the filter nests deeper than the limit of {limits.max_depth} levels of "
        "all_of / any_of / not; flatten it (an all_of inside an all_of is one all_of, "
        "not(not(x)) is x)"
    )


def too_many_conditions(limits: FilterLimits) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"the filter has more than {limits.max_conditions} conditions, the limit per filter; "
        "test one field against many values with one `in` condition instead of `eq` "
        "conditions joined by any_of (`not_in` instead of `ne` joined by all_of), or split "
        "the query"
    )


def too_many_values(where: str, count: int, limits: FilterLimits) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"{where} has {count} values, over the limit of {limits.max_values} per in / not_in; "
        "split the values over several requests, or give those entries a shared metadata "
        "value and filter on it"
    )


def validate(flt: Filter, limits: FilterLimits = DEFAULT_LIMITS) -> None:
    """Raise InvalidArgumentError, naming the faulty part, if `flt` is malformed or beyond
    `limits`."""
    _Validator(limits).check(flt, "filter", 0)


class _Validator:
    def __init__(self, limits: FilterLimits) -> None:
        self.limits = limits
        self.conditions = 0

    def check(self, flt: object, path: str, depth: int) -> None:
        if depth > self.limits.max_depth:
            raise too_deep(path, self.limits)
        if isinstance(flt, Condition):
            self.conditions += 1
            if self.conditions > self.limits.max_conditions:
                raise too_many_conditions(self.limits)
            _validate_condition(flt, path, self.limits)
        elif isinstance(flt, AllOf | AnyOf):
            kind = "all_of" if isinstance(flt, AllOf) else "any_of"
            children = flt.filters
            if not isinstance(children, tuple | list) or not children:
                raise InvalidArgumentError(f"{path}.{kind} is empty; give at least one filter")
            for i, child in enumerate(children):
                self.check(child, f"{path}.{kind}[{i}]", depth + 1)
        elif isinstance(flt, Not):
            self.check(flt.filter, f"{path}.not", depth + 1)
        else:
            raise InvalidArgumentError(
                f"{path} is a {type(flt).__name__}; use Condition, AllOf, AnyOf or Not"
            )


def _validate_condition(cond: Condition, path: str, limits: FilterLimits) -> None:
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
        if len(cond.values) > limits.max_values:
            raise too_many_values(where, len(cond.values), limits)
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


# ---- compiled filters ----------------------------------------------------------------------
#
# `compile_filter` runs once per request; what it returns is evaluated per entry (or per predicate
# index). Equality goes through typed keys: a value and an operand are EQ exactly when they
# share a key, which is how predicate indexes and the set lookups below find them.

Key: TypeAlias = tuple[str, Any]


def value_keys(value: MetadataValue) -> list[Key]:
    """Keys under which a stored value is found by EQ."""
    if isinstance(value, bool):
        return [("b", value)]
    if isinstance(value, int | float):
        return [("n", value)]  # 1 and 1.0 are equal and hash alike, so they share a key
    if isinstance(value, str):
        return [("s", value)]
    if isinstance(value, bytes):
        return [("y", value)]
    return [("l", tuple(value))] + [("s", item) for item in set(value)]


def operand_key(value: MetadataValue) -> Key:
    """The key an EQ operand looks up."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", value)
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, bytes):
        return ("y", value)
    return ("l", tuple(value))


@dataclass(frozen=True, eq=False)
class CompiledCondition:
    """One condition, compiled. `positive` is the condition with NE read as EQ and NOT_IN as
    IN (what predicate indexes answer); the condition is NOT of it when `negated`."""

    positive: Condition
    negated: bool

    @property
    def field(self) -> str:
        return self.positive.field

    @cached_property
    def check(self) -> Callable[[MetadataValue], bool]:
        """The positive test of a field that is present. Built on first use: tests answered
        by a predicate index, or merged into an `in`, never need it."""
        return _positive_check(self.positive)

    def positive_matches(self, metadata: Mapping[str, MetadataValue]) -> bool:
        value = metadata.get(self.positive.field, _MISSING)
        return value is not _MISSING and self.check(value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class CompiledAllOf:
    children: tuple[CompiledFilter, ...]


@dataclass(frozen=True)
class CompiledAnyOf:
    children: tuple[CompiledFilter, ...]


@dataclass(frozen=True)
class CompiledNot:
    child: CompiledFilter


CompiledFilter: TypeAlias = CompiledCondition | CompiledAllOf | CompiledAnyOf | CompiledNot

_MISSING = object()
_POSITIVE_OP = {Op.NE: Op.EQ, Op.NOT_IN: Op.IN}
_EQUALITY_OPS = frozenset({Op.EQ, Op.IN})


def compile_filter(flt: Filter) -> CompiledFilter:
    """A valid filter (see `validate`) as tests that `matches_compiled` and the predicate
    evaluator run. Same answers as `matches`; nested all_of/all_of and any_of/any_of are
    flattened, not(condition) folds into the condition, and equality tests of one field are
    merged into one set lookup."""
    if isinstance(flt, Condition):
        op = Op(flt.op)
        positive_op = _POSITIVE_OP.get(op, op)
        positive = Condition(flt.field, positive_op, flt.value, flt.values)
        return CompiledCondition(positive, op in NEGATED_OPS)
    if isinstance(flt, Not):
        child = compile_filter(flt.filter)
        if isinstance(child, CompiledCondition):
            return CompiledCondition(child.positive, not child.negated)
        if isinstance(child, CompiledNot):
            return child.child
        return CompiledNot(child)
    is_all = isinstance(flt, AllOf)
    children: list[CompiledFilter] = []
    for part in flt.filters:
        compiled = compile_filter(part)
        same_kind = CompiledAllOf if is_all else CompiledAnyOf
        if isinstance(compiled, same_kind):
            children.extend(compiled.children)
        else:
            children.append(compiled)
    # any_of(eq a, eq b) is in [a, b]; all_of(ne a, ne b) is not in [a, b].
    merged = _merge_equalities(children, negated=is_all)
    if len(merged) == 1:
        return merged[0]
    return CompiledAllOf(tuple(merged)) if is_all else CompiledAnyOf(tuple(merged))


def _merge_equalities(children: list[CompiledFilter], *, negated: bool) -> list[CompiledFilter]:
    groups: dict[str, list[CompiledCondition]] = {}
    for child in children:
        if (
            isinstance(child, CompiledCondition)
            and child.negated == negated
            and child.positive.op in _EQUALITY_OPS
        ):
            groups.setdefault(child.field, []).append(child)
    merged = {id(test) for group in groups.values() if len(group) > 1 for test in group}
    # The merged test takes the place of its group's first member.
    firsts = {id(group[0]): group for group in groups.values() if len(group) > 1}
    out: list[CompiledFilter] = []
    for child in children:
        if id(child) not in merged:
            out.append(child)
        elif id(child) in firsts:
            values: dict[Key, MetadataValue] = {}
            for test in firsts[id(child)]:
                for value in _operands(test.positive):
                    values.setdefault(operand_key(value), value)
            positive = Condition(firsts[id(child)][0].field, Op.IN, values=tuple(values.values()))
            out.append(CompiledCondition(positive, negated))
    return out


def _operands(cond: Condition) -> tuple[MetadataValue, ...]:
    if cond.op == Op.EQ:
        assert cond.value is not None
        return (cond.value,)
    return cond.values


def matches_compiled(flt: CompiledFilter, metadata: Mapping[str, MetadataValue]) -> bool:
    """`matches` for a compiled filter."""
    if isinstance(flt, CompiledCondition):
        return flt.positive_matches(metadata) != flt.negated
    if isinstance(flt, CompiledAllOf):
        return all(matches_compiled(child, metadata) for child in flt.children)
    if isinstance(flt, CompiledAnyOf):
        return any(matches_compiled(child, metadata) for child in flt.children)
    return not matches_compiled(flt.child, metadata)


def _positive_check(cond: Condition) -> Callable[[MetadataValue], bool]:
    op = cond.op
    if op == Op.EXISTS:
        return _always
    if op in _EQUALITY_OPS:
        return _membership(_operands(cond))
    assert cond.value is not None
    return _order_check(op, cond.value)


def _always(value: MetadataValue) -> bool:
    return True


def _membership(operands: tuple[MetadataValue, ...]) -> Callable[[MetadataValue], bool]:
    """EQ against any of `operands` in one set lookup per value, whatever their number."""
    keys = frozenset(operand_key(v) for v in operands)
    by_tag: dict[str, set[Any]] = {"s": set(), "n": set(), "b": set(), "y": set(), "l": set()}
    for tag, item in keys:
        by_tag[tag].add(item)
    strings = frozenset(by_tag["s"])
    numbers = frozenset(by_tag["n"])
    bools = frozenset(by_tag["b"])
    blobs = frozenset(by_tag["y"])
    lists = frozenset(by_tag["l"])

    def check(value: MetadataValue) -> bool:
        # Exact types first (what stored metadata holds); anything else takes the general
        # rule. bool is tested apart: True == 1 in Python, but not in a filter.
        kind = type(value)
        if kind is str:
            return value in strings
        if kind is int or kind is float:
            return value in numbers
        if kind is bool:
            return value in bools
        if kind is bytes:
            return value in blobs
        if kind is list:
            return tuple(value) in lists or not strings.isdisjoint(value)  # type: ignore[arg-type]
        return any(key in keys for key in value_keys(value))

    return check


def _order_check(op: Op, operand: MetadataValue) -> Callable[[MetadataValue], bool]:
    compare = _ORDER[op]

    def check(value: MetadataValue) -> bool:
        return _ordered(value, op, operand)

    if _is_number(operand):

        def check_number(value: MetadataValue) -> bool:
            kind = type(value)
            if kind is int or kind is float:
                return compare(value, operand)
            return _ordered(value, op, operand)

        return check_number
    if type(operand) is str or type(operand) is bytes:
        operand_type = type(operand)

        def check_same_type(value: MetadataValue) -> bool:
            if type(value) is operand_type:
                return compare(value, operand)
            return _ordered(value, op, operand)

        return check_same_type
    return check
