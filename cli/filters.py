"""`--filter` values: the JSON form of `filter_from_dict`, or a short readable expression.

Expression syntax (keywords are case-insensitive)::

    year >= 2020 and kind = "photo"
    not (lang in ["de", "fr"] or draft = true)
    tags = "cat"                      # a list-of-strings field holds "cat"
    caption exists and `odd name` != 'x'

Comparisons: `=` (or `==`), `!=`, `<`, `<=`, `>`, `>=`, `in [...]`, `not in [...]`, `exists`.
Values: "double" or 'single' quoted strings, integers, floats, true, false. `not` binds
tighter than `and`, which binds tighter than `or`; parentheses group.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from nachbar.client.values import Field, Filter, MetadataValue, filter_from_dict

_COMPARISONS = ("==", "!=", "<=", ">=", "=", "<", ">")
_KEYWORDS = {"and", "or", "not", "in", "exists", "true", "false"}
_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<number>-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
  | (?P<quoted_field>`[^`]+`)
  | (?P<word>[A-Za-z_][\w.\-]*)
  | (?P<op>==|!=|<=|>=|=|<|>)
  | (?P<punct>[()\[\],])
    """,
    re.VERBOSE,
)


class FilterSyntaxError(ValueError):
    """The --filter value is neither valid filter JSON nor a valid expression."""

    def __init__(self, message: str, text: str = "", position: int | None = None) -> None:
        if position is not None:
            message = f"{message}\n  {text}\n  {' ' * position}^"
        super().__init__(message)


@dataclass(frozen=True)
class _Token:
    kind: str  # string, number, field, keyword, op, punct, end
    text: str
    position: int
    value: Any = None


def parse_filter(text: str) -> Filter:
    """A filter from JSON (``{"year": {"gte": 2020}}``) or an expression (``year >= 2020``)."""
    stripped = text.strip()
    if not stripped:
        raise FilterSyntaxError("the filter is empty; give JSON or an expression like year >= 2020")
    if stripped.startswith("{"):
        try:
            spec = json.loads(stripped)
        except json.JSONDecodeError as error:
            raise FilterSyntaxError(
                f"the filter looks like JSON but is not valid JSON: {error.msg}",
                stripped,
                error.pos,
            ) from None
        try:
            return Filter(filter_from_dict(spec))
        except (ValueError, TypeError) as error:
            raise FilterSyntaxError(f"invalid filter JSON: {error}") from None
    return _Parser(stripped).parse()


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise FilterSyntaxError(f"unexpected character {text[position]!r}", text, position)
        kind = match.lastgroup or ""
        raw = match.group()
        if kind == "string":
            tokens.append(_Token("string", raw, position, _unquote(raw)))
        elif kind == "number":
            number: int | float = float(raw) if re.search(r"[.eE]", raw) else int(raw)
            tokens.append(_Token("number", raw, position, number))
        elif kind == "quoted_field":
            tokens.append(_Token("field", raw, position, raw[1:-1]))
        elif kind == "word":
            lowered = raw.lower()
            if lowered in _KEYWORDS:
                tokens.append(_Token("keyword", raw, position, lowered))
            else:
                tokens.append(_Token("field", raw, position, raw))
        elif kind in ("op", "punct"):
            tokens.append(_Token(kind, raw, position, raw))
        position = match.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


def _unquote(raw: str) -> str:
    body = raw[1:-1]
    return re.sub(r"\\(.)", r"\1", body)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.index = 0

    @property
    def current(self) -> _Token:
        return self.tokens[self.index]

    def _fail(self, expected: str) -> FilterSyntaxError:
        token = self.current
        found = "the end of the filter" if token.kind == "end" else repr(token.text)
        return FilterSyntaxError(f"expected {expected}, found {found}", self.text, token.position)

    def _advance(self) -> _Token:
        token = self.current
        self.index += 1
        return token

    def _accept_keyword(self, word: str) -> bool:
        if self.current.kind == "keyword" and self.current.value == word:
            self.index += 1
            return True
        return False

    def _expect_punct(self, char: str) -> None:
        if self.current.kind != "punct" or self.current.text != char:
            raise self._fail(repr(char))
        self.index += 1

    def parse(self) -> Filter:
        result = self._or()
        if self.current.kind != "end":
            raise self._fail("'and', 'or' or the end of the filter")
        return result

    def _or(self) -> Filter:
        result = self._and()
        while self._accept_keyword("or"):
            result = result | self._and()
        return result

    def _and(self) -> Filter:
        result = self._unary()
        while self._accept_keyword("and"):
            result = result & self._unary()
        return result

    def _unary(self) -> Filter:
        if self._accept_keyword("not"):
            return ~self._unary()
        if self.current.kind == "punct" and self.current.text == "(":
            self.index += 1
            inner = self._or()
            self._expect_punct(")")
            return inner
        return self._condition()

    def _condition(self) -> Filter:
        if self.current.kind != "field":
            raise self._fail("a field name, 'not' or '('")
        field = Field(self._advance().value)
        token = self.current
        if token.kind == "op":
            self.index += 1
            value = self._literal()
            op = token.text
            if op in ("=", "=="):
                return field == value
            if op == "!=":
                return field != value
            if op == "<":
                return field < value
            if op == "<=":
                return field <= value
            if op == ">":
                return field > value
            return field >= value
        if self._accept_keyword("in"):
            return field.is_in(self._list())
        if self._accept_keyword("not"):
            if not self._accept_keyword("in"):
                raise self._fail("'in' after 'not'")
            return field.not_in(self._list())
        if self._accept_keyword("exists"):
            return field.exists()
        raise self._fail(f"a comparison ({', '.join(_COMPARISONS)}), 'in', 'not in' or 'exists'")

    def _list(self) -> list[MetadataValue]:
        self._expect_punct("[")
        values: list[MetadataValue] = []
        while not (self.current.kind == "punct" and self.current.text == "]"):
            values.append(self._literal())
            if self.current.kind == "punct" and self.current.text == ",":
                self.index += 1
            elif not (self.current.kind == "punct" and self.current.text == "]"):
                raise self._fail("',' or ']'")
        self.index += 1
        if not values:
            raise FilterSyntaxError(
                "a list after 'in' needs at least one value",
                self.text,
                self.tokens[self.index - 1].position,
            )
        return values

    def _literal(self) -> MetadataValue:
        token = self.current
        if token.kind in ("string", "number"):
            self.index += 1
            value: MetadataValue = token.value
            return value
        if token.kind == "keyword" and token.value in ("true", "false"):
            self.index += 1
            return bool(token.value == "true")
        if token.kind == "field":
            raise FilterSyntaxError(
                f'strings need quotes: write "{token.text}" instead of {token.text}',
                self.text,
                token.position,
            )
        raise self._fail('a value (a "string", a number, true or false)')
