"""`--filter` parsing: the JSON form and the readable expression form give the same filters."""

from __future__ import annotations

import re

import pytest

from nachbar.cli.filters import FilterSyntaxError, parse_filter
from nachbar.client.values import filter_to_dict


def as_dict(text: str) -> dict[str, object]:
    return filter_to_dict(parse_filter(text).proto)


def test_json_form_is_passed_to_filter_from_dict() -> None:
    assert as_dict('{"year": {"gte": 2020}, "kind": {"eq": "photo"}}') == {
        "all_of": [{"year": {"gte": 2020}}, {"kind": {"eq": "photo"}}]
    }


def test_comparisons_and_value_types() -> None:
    assert as_dict('kind = "photo"') == {"kind": {"eq": "photo"}}
    assert as_dict("kind == 'photo'") == {"kind": {"eq": "photo"}}
    assert as_dict("year != 2020") == {"year": {"ne": 2020}}
    assert as_dict("score < 0.5") == {"score": {"lt": 0.5}}
    assert as_dict("score <= -1e3") == {"score": {"lte": -1000.0}}
    assert as_dict("year > 1999") == {"year": {"gt": 1999}}
    assert as_dict("year >= 2020") == {"year": {"gte": 2020}}
    assert as_dict("draft = TRUE") == {"draft": {"eq": True}}
    assert as_dict("caption exists") == {"caption": {"exists": True}}


def test_in_and_not_in_lists() -> None:
    assert as_dict('lang in ["de", "fr",]') == {"lang": {"in": ["de", "fr"]}}
    assert as_dict("year not in [1, 2]") == {"year": {"not_in": [1, 2]}}


def test_precedence_not_over_and_over_or() -> None:
    assert as_dict("a = 1 or b = 2 and not c = 3") == {
        "any_of": [
            {"a": {"eq": 1}},
            {"all_of": [{"b": {"eq": 2}}, {"not": {"c": {"eq": 3}}}]},
        ]
    }
    assert as_dict("(a = 1 or b = 2) and c = 3") == {
        "all_of": [{"any_of": [{"a": {"eq": 1}}, {"b": {"eq": 2}}]}, {"c": {"eq": 3}}]
    }


def test_quoted_field_names_and_escapes() -> None:
    assert as_dict('`odd name` = "say \\"hi\\""') == {"odd name": {"eq": 'say "hi"'}}
    assert as_dict("meta.sub-key = 'x'") == {"meta.sub-key": {"eq": "x"}}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("year >=", "expected a value"),
        ("kind = photo", 'write "photo"'),
        ("a in []", "at least one value"),
        ("(a = 1", "expected ')'"),
        ("a = 1 b = 2", "expected 'and', 'or'"),
        ("a ~ 1", "unexpected character"),
        ("a not 1", "'in' after 'not'"),
        ("{bad json", "not valid JSON"),
        ('{"year": {"near": 1}}', "unknown filter operator"),
    ],
)
def test_errors_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(FilterSyntaxError, match=re.escape(message)):
        parse_filter(text)


def test_error_points_at_the_position() -> None:
    with pytest.raises(FilterSyntaxError) as caught:
        parse_filter("year >= 2020 and kind = photo")
    lines = str(caught.value).splitlines()
    assert lines[1].strip() == "year >= 2020 and kind = photo"
    assert lines[2].index("^") == lines[1].index("photo")
