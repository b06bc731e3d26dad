"""The reference semantics of filters (`filters.matches`), filter validation and limits, and
what compiling a filter does to its cost."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from nachbar.db.errors import InvalidArgumentError
from nachbar.db.filters import (
    AllOf,
    AnyOf,
    CompiledAnyOf,
    CompiledCondition,
    Condition,
    Filter,
    FilterLimits,
    Not,
    Op,
    compile_filter,
    matches,
    matches_compiled,
    validate,
)
from nachbar.db.predicates import (
    COLUMN_BUILD_SHARE,
    TRANSIENT_INDEX_TESTS_PER_SLOT,
    ColumnCache,
    FilterEvaluator,
)
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


def nested(depth: int) -> Filter:
    flt: Filter = c("a", Op.EXISTS)
    for level in range(depth):
        flt = AllOf((flt,)) if level % 2 else Not(flt)
    return flt


LIMITS = FilterLimits(max_conditions=10, max_depth=3, max_values=5)


def test_limits_admit_filters_at_the_limit() -> None:
    validate(AnyOf(tuple(c("n", Op.EQ, i) for i in range(10))), LIMITS)
    validate(nested(3), LIMITS)
    validate(c("n", Op.IN, values=(1, 2, 3, 4, 5)), LIMITS)


@pytest.mark.parametrize(
    ("flt", "message"),
    [
        (AnyOf(tuple(c("n", Op.EQ, i) for i in range(11))), "more than 10 conditions"),
        (AllOf((c("a", Op.EXISTS),) * 6 + (AnyOf((c("b", Op.EXISTS),) * 5),)), "10 conditions"),
        (nested(4), "deeper than the limit of 3 levels"),
        (c("n", Op.IN, values=(1, 2, 3, 4, 5, 6)), "6 values, over the limit of 5"),
        (c("n", Op.NOT_IN, values=tuple(range(6))), "over the limit of 5 per in / not_in"),
    ],
)
def test_limits_refuse_larger_filters_saying_what_to_do(flt: Filter, message: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        validate(flt, LIMITS)
    assert message in caught.value.message
    if "conditions" in message:
        assert "one `in` condition instead of `eq`" in caught.value.message


def test_default_limits_refuse_the_filters_that_cost_seconds() -> None:
    with pytest.raises(InvalidArgumentError, match="more than 128 conditions"):
        validate(AnyOf(tuple(c("n", Op.EQ, i) for i in range(40_000))))
    with pytest.raises(InvalidArgumentError, match="deeper than the limit of 32"):
        validate(nested(33))
    validate(nested(32))
    validate(c("n", Op.IN, values=tuple(range(65_536))))


def test_compiling_merges_equalities_of_one_field_into_one_set_lookup() -> None:
    equalities = [c("n", Op.EQ, i) for i in range(100)]
    ors = compile_filter(AnyOf((*equalities, c("m", Op.GT, 1))))
    assert isinstance(ors, CompiledAnyOf) and len(ors.children) == 2
    merged = ors.children[0]
    assert (
        isinstance(merged, CompiledCondition) and merged.positive.op == Op.IN and not merged.negated
    )
    assert len(merged.positive.values) == 100
    nes = compile_filter(AllOf((c("n", Op.NE, 1), c("n", Op.NOT_IN, values=(2, 3, 1)))))
    assert (
        isinstance(nes, CompiledCondition) and nes.negated and set(nes.positive.values) == {1, 2, 3}
    )
    # not(eq) is ne, and not(not(x)) is x.
    folded = compile_filter(Not(Not(Not(c("n", Op.EQ, 1)))))
    assert isinstance(folded, CompiledCondition) and folded.negated and folded.positive.op == Op.EQ
    # Equality tests that are not joined by the matching combinator stay apart.
    kept = compile_filter(AllOf((c("n", Op.EQ, 1), c("n", Op.EQ, 2))))
    assert not isinstance(kept, CompiledCondition)


VALUES: list[Any] = [
    "sea",
    "",
    1,
    1.0,
    2**53 + 1,
    float(2**53),
    -0.5,
    True,
    False,
    b"\x01",
    b"",
    ["sea", "boat"],
    [],
]


@pytest.mark.parametrize("op", list(Op))
def test_compiled_conditions_agree_with_the_reference(op: Op) -> None:
    operands = [
        v
        for v in VALUES
        if op not in (Op.LT, Op.LTE, Op.GT, Op.GTE) or not isinstance(v, bool | list)
    ]
    for operand in operands:
        if op == Op.EXISTS:
            cond = c("f", op)
        elif op in (Op.IN, Op.NOT_IN):
            cond = c("f", op, values=(operand, "other"))
        else:
            cond = c("f", op, operand)
        compiled = compile_filter(cond)
        for value in VALUES:
            meta: Metadata = {"f": value}
            assert matches_compiled(compiled, meta) == matches(cond, meta), (cond, value)
        assert matches_compiled(compiled, {}) == matches(cond, {})


class CountingMetadata(dict[str, Any]):
    """Metadata that counts how often a filter reads it one entry at a time."""

    reads = 0

    def get(self, key: str, default: Any = None) -> Any:
        CountingMetadata.reads += 1
        return super().get(key, default)


def reads_to_evaluate(flt: Filter, metas: Sequence[Metadata]) -> tuple[int, np.ndarray]:
    validate(flt)
    CountingMetadata.reads = 0
    evaluator = FilterEvaluator(metas, len(metas), {})
    mask = evaluator.evaluate(compile_filter(flt), np.ones(len(metas), dtype=bool))
    return CountingMetadata.reads, mask


def test_cost_per_entry_does_not_grow_with_the_number_of_operands() -> None:
    metas: list[Metadata] = [CountingMetadata(n=i, tag=f"t{i % 7}") for i in range(2000)]
    expected = np.array([i % 3 == 0 for i in range(2000)])

    # 128 eq tests joined by any_of read each entry once, like one `in`.
    reads, mask = reads_to_evaluate(AnyOf(tuple(c("n", Op.EQ, i) for i in range(0, 384, 3))), metas)
    assert reads == 2000
    assert (mask == (expected & (np.arange(2000) < 384))).all()

    # An `in` with 65,536 values reads each entry once too.
    reads, mask = reads_to_evaluate(c("n", Op.IN, values=tuple(range(0, 3 * 65_536, 3))), metas)
    assert reads == 2000 and (mask == expected).all()

    # 128 range tests of one field: after a few passes the field is indexed for the request.
    ranges = AnyOf(tuple(c("n", Op.GT, 10_000 + i) for i in range(128)))
    reads, mask = reads_to_evaluate(ranges, metas)
    assert not mask.any()
    assert reads <= TRANSIENT_INDEX_TESTS_PER_SLOT * 2000 < 128 * 2000


def column_metas(count: int) -> list[Metadata | None]:
    """Entries whose field "f" takes every kind of value (or is missing), some slots free."""
    metas: list[Metadata | None] = []
    for slot in range(count):
        if slot % 17 == 5:
            metas.append(None)  # a free slot
        elif slot % (len(VALUES) + 1) == len(VALUES):
            metas.append(CountingMetadata(other=1))  # "f" missing
        else:
            metas.append(CountingMetadata(f=VALUES[slot % (len(VALUES) + 1)]))
    return metas


def evaluate_with_columns(
    flt: Filter, metas: Sequence[Metadata | None], columns: ColumnCache
) -> tuple[int, np.ndarray]:
    validate(flt)
    CountingMetadata.reads = 0
    live = np.array([m is not None for m in metas])
    evaluator = FilterEvaluator(metas, len(metas), {}, columns)
    return CountingMetadata.reads, evaluator.evaluate(compile_filter(flt), live)


def reference_mask(flt: Filter, metas: Sequence[Metadata | None]) -> np.ndarray:
    return np.array([m is not None and matches(flt, dict(m)) for m in metas])


@pytest.mark.parametrize("op", list(Op))
def test_unindexed_fields_are_evaluated_as_cached_columns_with_the_reference_semantics(
    op: Op,
) -> None:
    metas = column_metas(600)
    columns = ColumnCache()
    ordered = op in (Op.LT, Op.LTE, Op.GT, Op.GTE)
    for operand in [v for v in VALUES if not ordered or not isinstance(v, bool | list)]:
        if op == Op.EXISTS:
            cond = c("f", op)
        elif op in (Op.IN, Op.NOT_IN):
            cond = c("f", op, values=(operand, "other"))
        else:
            cond = c("f", op, operand)
        reads, mask = evaluate_with_columns(cond, metas, columns)
        assert (mask == reference_mask(cond, metas)).all(), cond
        # A broad test built the column; it answered without reading entries one by one.
        assert columns.fields() == ["f"] and reads == 0, cond
    # A field no entry has: every op answers (ne / not_in match all, the rest none).
    absent = c("absent", op) if op == Op.EXISTS else c("absent", op, values=("sea",))
    if op not in (Op.EXISTS, Op.IN, Op.NOT_IN):
        absent = c("absent", op, "sea")
    _, mask = evaluate_with_columns(absent, metas, columns)
    assert (mask == reference_mask(absent, metas)).all()


def test_cached_columns_follow_writes_and_narrow_candidates_stay_entry_by_entry() -> None:
    metas = column_metas(400)
    columns = ColumnCache()
    flt = c("f", Op.GTE, 1)
    _, mask = evaluate_with_columns(flt, metas, columns)
    assert (mask == reference_mask(flt, metas)).all()
    # Writers touch the column: changed, freed and new values are re-checked.
    metas[6] = CountingMetadata(f=7)
    metas[7] = None
    metas[22] = CountingMetadata(f="sea")
    columns.touch([6, 7, 22])
    _, mask = evaluate_with_columns(flt, metas, columns)
    assert (mask == reference_mask(flt, metas)).all()
    assert mask[6] and not mask[7] and not mask[22]

    # A narrow candidate set on another field is tested entry by entry, no column built.
    narrow = AllOf((c("f", Op.EQ, 7), c("other", Op.EQ, 1)))
    _, mask = evaluate_with_columns(narrow, metas, columns)
    assert not mask.any() and columns.fields() == ["f"]
    assert COLUMN_BUILD_SHARE * len(metas) > 1


def test_the_column_cache_keeps_the_most_recently_used_fields() -> None:
    metas: list[Metadata | None] = [{f"k{j}": i for j in range(4)} for i in range(100)]
    columns = ColumnCache(limit=2)
    for field_name in ("k0", "k1", "k0", "k2"):
        _, mask = evaluate_with_columns(c(field_name, Op.LT, 50), metas, columns)
        assert int(mask.sum()) == 50
    assert columns.fields() == ["k0", "k2"]
