"""The reference semantics of filters (`filters.matches`) and filter validation."""

from __future__ import annotations

import pytest

from nachbar.db.errors import InvalidArgumentError
from nachbar.db.filters import AllOf, AnyOf, Condition, Filter, Not, Op, matches, validate
from nachbar.db.types import Metadata

META: Metadata = {
    "title": "harbour",
    "year": 2021,
    "score": 0.5,
    "public": True,
    "thumb": b"\x01\x02",
    "tags": ["sea", "boat"],
}


def c(field: str, op: Op, value: object = None, values: tuple[object, ...] = ()) -> Condition:
    return Condition(field, op, value, values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (c("title", Op.EQ, "harbour"), True),
        (c("title", Op.EQ, "Harbour"), False),
        (c("year", Op.EQ, 2021.0), True),  # numbers compare by value
        (c("score", Op.EQ, 0.5), True),
        (c("public", Op.EQ, True), True),
        (c("public", Op.EQ, 1), False),  # bool is its own type
        (c("year", Op.EQ, True), False),
        (c("thumb", Op.EQ, b"\x01\x02"), True),
        (c("thumb", Op.EQ, "\x01\x02"), False),  # str is not bytes
        (c("tags", Op.EQ, "sea"), True),  # a string list contains the operand
        (c("tags", Op.EQ, "sky"), False),
        (c("tags", Op.EQ, ["sea", "boat"]), True),  # a list operand compares whole lists
        (c("tags", Op.EQ, ["boat", "sea"]), False),
        (c("year", Op.EQ, "2021"), False),  # other type: never equal
        (c("missing", Op.EQ, 1), False),
        (c("year", Op.NE, 2020), True),
        (c("year", Op.NE, 2021), False),
        (c("missing", Op.NE, 1), True),  # NE is NOT EQ: true when the field is absent
        (c("year", Op.NE, "2021"), True),
        (c("year", Op.IN, values=(1, 2021)), True),
        (c("tags", Op.IN, values=("sky", "boat")), True),
        (c("public", Op.IN, values=(1, 0)), False),
        (c("missing", Op.IN, values=(1,)), False),
        (c("missing", Op.NOT_IN, values=(1,)), True),
        (c("year", Op.NOT_IN, values=(2021,)), False),
        (c("year", Op.LT, 2022), True),
        (c("year", Op.LT, 2021), False),
        (c("year", Op.LTE, 2021), True),
        (c("year", Op.GT, 2020.5), True),
        (c("year", Op.GTE, 2021.0), True),
        (c("score", Op.LT, 1), True),
        (c("title", Op.GT, "apple"), True),  # strings order lexicographically
        (c("title", Op.LT, "apple"), False),
        (c("title", Op.LT, 5), False),  # no order across types
        (c("year", Op.LT, "z"), False),
        (c("thumb", Op.GT, b"\x01"), True),
        (c("public", Op.GT, 0), False),  # bools have no order
        (c("tags", Op.GT, "a"), False),  # neither do string lists
        (c("missing", Op.LT, 5), False),
        (c("title", Op.EXISTS), True),
        (c("missing", Op.EXISTS), False),
    ],
)
def test_condition_semantics(flt: Condition, expected: bool) -> None:
    validate(flt)
    assert matches(flt, META) is expected


def test_combinators() -> None:
    yes = c("year", Op.EQ, 2021)
    no = c("year", Op.EQ, 1999)
    assert matches(AllOf((yes, yes)), META)
    assert not matches(AllOf((yes, no)), META)
    assert matches(AnyOf((no, yes)), META)
    assert not matches(AnyOf((no, no)), META)
    assert matches(Not(no), META)
    assert not matches(Not(AnyOf((no, yes))), META)
    # Not(EQ) on a missing field is true, like NE.
    assert matches(Not(c("missing", Op.EQ, 1)), META)


@pytest.mark.parametrize(
    ("flt", "message"),
    [
        (c("", Op.EQ, 1), "empty field name"),
        (c("year", Op.EQ), "needs a value"),
        (c("year", Op.LT), "needs a value"),
        (c("year", Op.EQ, 1, (1,)), "takes one value"),
        (c("year", Op.IN), "at least one value"),
        (c("year", Op.NOT_IN), "at least one value"),
        (c("year", Op.IN, 1, (1,)), "not a single value"),
        (c("year", Op.EXISTS, 1), "takes no value"),
        (c("tags", Op.LT, ["a"]), "string list operand"),
        (c("public", Op.GTE, True), "bool operand"),
        (c("score", Op.EQ, float("nan")), "NaN"),
        (c("score", Op.IN, values=(1.0, float("nan"))), "NaN"),
        (c("year", Op.EQ, {"a": 1}), "type dict"),
        (c("year", Op.EQ, [1, 2]), "type list"),
        (c("year", "between", 1), "unknown operator"),  # type: ignore[arg-type]
        (AllOf(()), "all_of is empty"),
        (AnyOf(()), "any_of is empty"),
        (Not(AllOf((c("", Op.EQ, 1),))), "filter.not.all_of[0]"),
        ("year == 1", "is a str"),
    ],
)
def test_validate_rejects_malformed_filters(flt: Filter, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match="filter") as caught:
        validate(flt)
    assert message in caught.value.message


def test_validate_rejects_absurd_nesting() -> None:
    flt: Filter = c("a", Op.EXISTS)
    for _ in range(100):
        flt = Not(flt)
    with pytest.raises(InvalidArgumentError, match="deeper than"):
        validate(flt)
