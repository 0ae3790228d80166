"""Parsing untrusted JSON (sentri.jsontext): nesting past the bound is a ValueError, never a
RecursionError, measured without recursion, and decoded values are bounded the same way."""

from __future__ import annotations

import json

import pytest

from sentri import jsontext
from sentri.jsontext import MAX_DEPTH, TooDeepError

DEPTH = 100_000


def deep_array(depth: int) -> str:
    return "[" * depth + "]" * depth


def deep_object(depth: int) -> str:
    return '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)


SHAPES = {"arrays": deep_array, "objects": deep_object}


def nested_lists(depth: int) -> list:  # type: ignore[type-arg]
    value: list = []  # type: ignore[type-arg]
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("as_bytes", [False, True], ids=["text", "bytes"])
def test_json_nested_100000_levels_deep_is_a_value_error_naming_the_limit(shape, as_bytes):
    text = SHAPES[shape](DEPTH)
    with pytest.raises(TooDeepError, match=r"\AJSON nested deeper than 64 levels\Z") as raised:
        jsontext.loads(text.encode() if as_bytes else text)
    assert isinstance(raised.value, ValueError)


@pytest.mark.parametrize("shape", SHAPES)
def test_the_limit_is_64_levels_with_the_outermost_counted(shape):
    assert MAX_DEPTH == 64
    assert jsontext.loads(SHAPES[shape](64)) == json.loads(SHAPES[shape](64))
    with pytest.raises(TooDeepError):
        jsontext.loads(SHAPES[shape](65))


@pytest.mark.parametrize("shape", SHAPES)
def test_a_depth_the_plain_parser_cannot_reach_is_refused_by_the_bound_too(shape):
    # 5,000 levels: past json.loads' own recursion bound on most Pythons; 500: parsed by it,
    # but how deep the code after the parser can go depends on the Python and the stack.
    with pytest.raises(TooDeepError):
        jsontext.loads(SHAPES[shape](5_000))
    with pytest.raises(TooDeepError):
        jsontext.loads(SHAPES[shape](500))


def test_a_bound_beyond_what_the_parser_can_reach_still_gives_too_deep_not_recursion_error():
    with pytest.raises(TooDeepError, match=r"\AJSON nested deeper than json.loads can read\Z"):
        jsontext.loads(deep_array(DEPTH), max_depth=1_000_000)


def test_brackets_inside_strings_do_not_count_as_nesting():
    text = json.dumps({"message": "[" * 1000 + '\\"{' * 500, "list": [["]]]]"]]})
    assert jsontext.text_depth(text) == 3
    assert jsontext.loads(text)["list"] == [["]]]]"]]
    assert jsontext.loads(b'"' + b"[{" * 100 + b'"') == "[{" * 100


def test_bytes_are_read_as_json_loads_reads_them_and_bad_ones_stay_value_errors():
    assert jsontext.loads('{"a":[1]}'.encode("utf-16")) == {"a": [1]}
    with pytest.raises(ValueError):
        jsontext.loads(b"\xff\xfe\xfa")
    with pytest.raises(ValueError):
        jsontext.loads(b"{not json")
    with pytest.raises(TypeError):
        jsontext.loads(None)  # type: ignore[arg-type]


def test_a_deep_value_from_python_is_seen_without_recursion_and_stops_counting_at_the_limit():
    assert not jsontext.too_deep(nested_lists(64))
    assert jsontext.too_deep(nested_lists(65))
    assert jsontext.too_deep(nested_lists(DEPTH))
    assert not jsontext.too_deep({"a": {"b": ("c", [1, {}])}}, max_depth=5)
    assert jsontext.too_deep({"a": {"b": ("c", [1, {}])}}, max_depth=4)
    assert not jsontext.too_deep("text", max_depth=0)
