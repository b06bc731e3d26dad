"""nachbar metadata and filters in Milvus terms: typed JSON and guarded boolean expressions.

A Milvus JSON field compares values the way its JSON library does: 1 equals true on some
versions, an int against a float literal is false on others, a comparison on a missing key is
false on Milvus 2.3 and NULL on milvus-lite (so `not` of it differs). A naive translation of
nachbar's filters was measured wrong on 241 of 600 random filters on milvus-lite. So nothing is
left to Milvus's type rules:

Stored form. Each metadata field becomes an object holding its value under a key for its type,
so a field holds exactly one of them and every comparison meets only its own type:

    {"year": {"i": 2021}, "score": {"f": 0.5}, "title": {"s": "Harbour"}, "public": {"b": true},
     "thumb": {"y": "89504e47"}, "tags": {"l": ["sea", "boat"], "L": "[\"sea\",\"boat\"]"}}

- "i" int64 and "f" float stay apart: Milvus compares each exactly against a literal of its own
  kind, and the translation turns an operand of the other kind into the exact equivalent bound
  (2 < 2.5 is 2 <= 2; a float against 2**53 + 1 is compared with its neighbouring doubles).
- "y" bytes are lowercase hex: equal bytes give equal strings and hex order is byte order.
- "l" lists serve `json_contains`; "L" (canonical JSON text) serves whole-list equality.
- Field names that are not plain identifiers are stored as "~" + hex of their UTF-8 bytes, so no
  field name ever needs escaping inside an expression.

Typed columns. A field named in the store's predicate indexes when it was created also has
scalar columns of its own (`columns_of`), written with every entry beside the JSON: a type tag
(INT8: 0 missing, then COLUMN_TAGS), the value as INT64 (ints, and bools as 0/1), DOUBLE
(floats) or VARCHAR (strings, bytes as hex, whole lists as canonical JSON). Milvus compares
scalar columns far faster than JSON paths, and a tag test replaces every `exists`: the same
guarded terms, read from the columns. Lists' items stay in the JSON ("l", for
`json_contains`). Milvus 2.3 cannot add fields to a collection, so a field indexed later is
filtered through the JSON, with the same answers.

Expressions. Each condition's positive form (NE read as EQ, NOT_IN as IN) is built only from
`(exists P) and (P op literal)` terms: two-valued on every Milvus, so `not` is exact. Constant
parts (an operand no stored value can equal) are folded away, never sent: Milvus 2.3 refuses
`true`/`false` as predicates. Every sub-expression is parenthesized (2.3 parses
`exists a and b` as `exists (a and b)`). String literals escape only what both milvus-lite and
Milvus accept (\\ \" \n \r \t); everything else is sent as UTF-8.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from nachbar.db.filters import AllOf, AnyOf, Condition, Filter, Op
from nachbar.db.types import Metadata, MetadataValue

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
META_FIELD = "meta"
ID_FIELD = "id"
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEX_KEY_PREFIX = "~"

# Type tags of the typed columns (0: the entry has no such field), and the column that holds
# each stored type's value.
COLUMN_TAGS = {"b": 1, "i": 2, "f": 3, "s": 4, "y": 5, "L": 6}
_COLUMN_OF_TAG = {"b": "i", "i": "i", "f": "f", "s": "s", "y": "s", "L": "s"}
COLUMN_SUFFIXES = ("t", "i", "f", "s")

# Field name -> the prefix of its typed columns ("p0" names p0_t, p0_i, p0_f, p0_s).
Columns: TypeAlias = Mapping[str, str]
NO_COLUMNS: Columns = {}

# An expression, or a constant that was folded: True matches every entry, False none.
Expr: TypeAlias = str | bool


# ---- stored form ---------------------------------------------------------------------------


def field_key(name: str) -> str:
    """The JSON key a metadata field is stored under."""
    if _PLAIN_KEY.fullmatch(name):
        return name
    return _HEX_KEY_PREFIX + name.encode("utf-8").hex()


def _field_name(key: str) -> str:
    if key.startswith(_HEX_KEY_PREFIX):
        return bytes.fromhex(key[len(_HEX_KEY_PREFIX) :]).decode("utf-8")
    return key


def canonical_list(items: list[str]) -> str:
    return json.dumps(items, ensure_ascii=False, separators=(",", ":"))


def encode_metadata(metadata: Mapping[str, MetadataValue]) -> dict[str, dict[str, Any]]:
    """The stored form of checked metadata (see the module docstring)."""
    out: dict[str, dict[str, Any]] = {}
    for name, value in metadata.items():
        typed: dict[str, Any]
        if isinstance(value, bool):
            typed = {"b": value}
        elif isinstance(value, int):
            typed = {"i": value}
        elif isinstance(value, float):
            typed = {"f": value}
        elif isinstance(value, str):
            typed = {"s": value}
        elif isinstance(value, bytes):
            typed = {"y": value.hex()}
        else:
            typed = {"l": list(value), "L": canonical_list(list(value))}
        out[field_key(name)] = typed
    return out


def encoded_size(stored: Mapping[str, Any]) -> int:
    """Bytes of the stored form as JSON text: what Milvus's JSON size limit counts."""
    return len(json.dumps(stored, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def column_prefix(slot: int) -> str:
    return f"p{slot}"


def columns_of(fields: Sequence[str]) -> dict[str, str]:
    """The typed columns of `fields`, in slot order."""
    return {name: column_prefix(slot) for slot, name in enumerate(fields)}


def encode_columns(metadata: Mapping[str, MetadataValue], columns: Columns) -> dict[str, Any]:
    """The typed column values of one entry (see the module docstring)."""
    out: dict[str, Any] = {}
    for name, prefix in columns.items():
        tag, number, real, text = 0, 0, 0.0, ""
        value = metadata.get(name)
        if value is None:
            pass
        elif isinstance(value, bool):
            tag, number = COLUMN_TAGS["b"], int(value)
        elif isinstance(value, int):
            tag, number = COLUMN_TAGS["i"], value
        elif isinstance(value, float):
            tag, real = COLUMN_TAGS["f"], value
        elif isinstance(value, str):
            tag, text = COLUMN_TAGS["s"], value
        elif isinstance(value, bytes):
            tag, text = COLUMN_TAGS["y"], value.hex()
        else:
            tag, text = COLUMN_TAGS["L"], canonical_list(list(value))
        out[f"{prefix}_t"] = tag
        out[f"{prefix}_i"] = number
        out[f"{prefix}_f"] = real
        out[f"{prefix}_s"] = text
    return out


def _string_list(items: Any) -> list[str]:
    return [str(item) for item in items]


# Type tag -> its decoder, in the order a value's tags are tried ("L" always comes with "l").
_DECODERS: dict[str, Any] = {
    "b": bool,
    "i": int,
    "f": float,
    "s": str,
    "y": bytes.fromhex,
    "l": _string_list,
}


def decode_metadata(stored: Mapping[str, Any]) -> Metadata:
    """Inverse of `encode_metadata`; ValueError for anything it did not write."""
    out: Metadata = {}
    for key, typed in stored.items():
        if not isinstance(typed, dict | Mapping):
            raise ValueError(f"metadata key {key!r} does not hold a typed value")
        name = _field_name(key) if key.startswith(_HEX_KEY_PREFIX) else key
        for tag, decode in _DECODERS.items():
            if tag in typed:
                out[name] = decode(typed[tag])
                break
        else:
            raise ValueError(f"metadata key {key!r} has no known type tag")
    return out


# ---- literals --------------------------------------------------------------------------------


def string_literal(text: str) -> str:
    """A double-quoted literal that milvus-lite and Milvus read back as `text`."""
    escaped = (
        text.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def _float_literal(value: float) -> str:
    # repr is the shortest text that reads back as the same double; "2.0" and "1e-09" both
    # parse as floating constants.
    text = repr(value)
    return text if "." in text or "e" in text else text + ".0"


def _path(field: str, tag: str) -> str:
    return f"{META_FIELD}[{string_literal(field_key(field))}][{string_literal(tag)}]"


@dataclass(frozen=True)
class _Access:
    """Where a field's value of one stored type is read: `guard` holds exactly where the field
    has a value of that type, `value` is that value."""

    guard: str
    value: str
    column: bool


def _access(field: str, tag: str, columns: Columns) -> _Access:
    prefix = columns.get(field)
    if prefix is None:
        path = _path(field, tag)
        return _Access(f"(exists {path})", path, column=False)
    return _Access(
        f"({prefix}_t == {COLUMN_TAGS[tag]})", f"{prefix}_{_COLUMN_OF_TAG[tag]}", column=True
    )


# ---- boolean algebra with folded constants ---------------------------------------------------


def all_of(parts: list[Expr]) -> Expr:
    kept: list[str] = []
    for part in parts:
        if part is False:
            return False
        if part is not True:
            kept.append(part)
    if not kept:
        return True
    return kept[0] if len(kept) == 1 else "(" + " and ".join(kept) + ")"


def any_of(parts: list[Expr]) -> Expr:
    kept: list[str] = []
    for part in parts:
        if part is True:
            return True
        if part is not False:
            kept.append(part)
    if not kept:
        return False
    return kept[0] if len(kept) == 1 else "(" + " or ".join(kept) + ")"


def negate(expr: Expr) -> Expr:
    if isinstance(expr, bool):
        return not expr
    return f"(not {expr})"


def _exists(path: str) -> str:
    return f"(exists {path})"


def _guarded(access: _Access, comparison: str) -> str:
    """True only where the field holds a value of the type and the comparison holds: never
    NULL."""
    return f"({access.guard} and ({access.value} {comparison}))"


# ---- filters -------------------------------------------------------------------------------

_SYMBOL = {Op.LT: "<", Op.LTE: "<=", Op.GT: ">", Op.GTE: ">=", Op.EQ: "=="}


def translate(flt: Filter, columns: Columns = NO_COLUMNS) -> Expr:
    """A Milvus boolean expression over the stored form with exactly `filters.matches`'s
    meaning, or a constant; fields in `columns` are read from their typed columns. The filter
    must have passed `filters.validate`."""
    if isinstance(flt, Condition):
        positive = _positive(flt, columns)
        return negate(positive) if flt.op in (Op.NE, Op.NOT_IN) else positive
    if isinstance(flt, AllOf):
        return all_of([translate(child, columns) for child in flt.filters])
    if isinstance(flt, AnyOf):
        return any_of([translate(child, columns) for child in flt.filters])
    return negate(translate(flt.filter, columns))


def _positive(cond: Condition, columns: Columns) -> Expr:
    field = cond.field
    if cond.op == Op.EXISTS:
        prefix = columns.get(field)
        if prefix is not None:
            return f"({prefix}_t != 0)"
        return f"(exists {META_FIELD}[{string_literal(field_key(field))}])"
    if cond.op in (Op.EQ, Op.NE):
        assert cond.value is not None
        return _equals(field, cond.value, columns)
    if cond.op in (Op.IN, Op.NOT_IN):
        return any_of([_equals(field, value, columns) for value in cond.values])
    assert cond.value is not None
    return _ordered(field, Op(cond.op), cond.value, columns)


def _equals(field: str, operand: MetadataValue, columns: Columns) -> Expr:
    if isinstance(operand, bool):
        access = _access(field, "b", columns)
        if access.column:
            return _guarded(access, "== " + ("1" if operand else "0"))
        return _guarded(access, "== " + ("true" if operand else "false"))
    if isinstance(operand, int | float):
        return any_of(
            [
                _int_compare(field, Op.EQ, operand, columns),
                _float_compare(field, Op.EQ, operand, columns),
            ]
        )
    if isinstance(operand, str):
        literal = string_literal(operand)
        lists = _path(field, "l")
        return any_of(
            [
                _guarded(_access(field, "s", columns), "== " + literal),
                f"({_exists(lists)} and json_contains({lists}, {literal}))",
            ]
        )
    if isinstance(operand, bytes):
        return _guarded(_access(field, "y", columns), "== " + string_literal(operand.hex()))
    return _guarded(
        _access(field, "L", columns), "== " + string_literal(canonical_list(list(operand)))
    )


def _ordered(field: str, op: Op, operand: MetadataValue, columns: Columns) -> Expr:
    if isinstance(operand, bool | list):
        return False  # validation refuses these; no stored value has an order with them
    if isinstance(operand, int | float):
        return any_of(
            [_int_compare(field, op, operand, columns), _float_compare(field, op, operand, columns)]
        )
    if isinstance(operand, str):
        access = _access(field, "s", columns)
        return _guarded(access, f"{_SYMBOL[op]} {string_literal(operand)}")
    access = _access(field, "y", columns)
    return _guarded(access, f"{_SYMBOL[op]} {string_literal(operand.hex())}")


def _int_compare(field: str, op: Op, operand: int | float, columns: Columns) -> Expr:
    """`stored int <op> operand`, exact for any operand, as int64 comparisons with literals in
    [INT64_MIN + 1, INT64_MAX] (the parser reads -9223372036854775808 as minus an overflow)."""
    path = _access(field, "i", columns)
    if isinstance(operand, float) and math.isinf(operand):
        below_all = operand < 0
        if op == Op.EQ:
            return False
        return path.guard if (op in (Op.GT, Op.GTE)) == below_all else False
    if op == Op.EQ:
        if isinstance(operand, float):
            if not operand.is_integer():
                return False
            operand = int(operand)
        if not INT64_MIN <= operand <= INT64_MAX:
            return False
        if operand == INT64_MIN:
            return _guarded(path, f"< {INT64_MIN + 1}")
        return _guarded(path, f"== {operand}")
    # An integer i satisfies i < x  iff i <= ceil(x) - 1, i <= x iff i <= floor(x), and so on.
    if op in (Op.LT, Op.LTE):
        high = (math.ceil(operand) - 1) if op == Op.LT else math.floor(operand)
        if high < INT64_MIN:
            return False
        if high >= INT64_MAX:
            return path.guard
        return _guarded(path, f"< {high + 1}")
    low = (math.floor(operand) + 1) if op == Op.GT else math.ceil(operand)
    if low > INT64_MAX:
        return False
    if low <= INT64_MIN:
        return path.guard
    return _guarded(path, f">= {low}")


def _float_compare(field: str, op: Op, operand: int | float, columns: Columns) -> Expr:
    """`stored float <op> operand`, exact: an int operand that no double equals is replaced by
    its neighbouring doubles."""
    path = _access(field, "f", columns)
    if isinstance(operand, float):
        if math.isinf(operand):
            below_all = operand < 0
            if op == Op.EQ:
                return False
            return path.guard if (op in (Op.GT, Op.GTE)) == below_all else False
        return _guarded(path, f"{_SYMBOL[op]} {_float_literal(operand)}")
    try:
        nearest = float(operand)
    except OverflowError:
        nearest = math.inf if operand > 0 else -math.inf
    if nearest == operand:
        return _guarded(path, f"{_SYMBOL[op]} {_float_literal(nearest)}")
    if op == Op.EQ:
        return False
    # No double equals the operand: f < x iff f <= the largest double below x, etc.
    below = nearest if nearest < operand else math.nextafter(nearest, -math.inf)
    above = nearest if nearest > operand else math.nextafter(nearest, math.inf)
    if op in (Op.LT, Op.LTE):
        return False if math.isinf(below) and below < 0 else _bounded(path, "<=", below)
    return False if math.isinf(above) and above > 0 else _bounded(path, ">=", above)


def _bounded(path: _Access, symbol: str, bound: float) -> Expr:
    if math.isinf(bound):  # every finite double is on the bound's side
        return path.guard
    return _guarded(path, f"{symbol} {_float_literal(bound)}")


# ---- ids -----------------------------------------------------------------------------------


def ids_in(ids: list[str]) -> str:
    return f"({ID_FIELD} in [{', '.join(string_literal(i) for i in ids)}])"


def id_after(last_id: str) -> str:
    return f"({ID_FIELD} > {string_literal(last_id)})"


# Matches every entry (ids are never empty); for calls that need some expression.
EVERYTHING = f'({ID_FIELD} != "")'


def to_query(expr: Expr) -> str | None:
    """The expression to send for a folded result; None when nothing can match."""
    if expr is False:
        return None
    return EVERYTHING if expr is True else expr
