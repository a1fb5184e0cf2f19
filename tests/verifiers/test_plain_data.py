"""Plain data across the sandbox boundary: round trips, builtins only, and malformed input rejected."""

from __future__ import annotations

import math

import pytest

from posttrain.verifiers.plain_data import MAX_DEPTH, decode, encode


@pytest.mark.parametrize(
    "value",
    [None, True, False, 0, -7, 10**30, 1.5, "", "é\n\"", b"\x00\xff", [1, [2]], (1, (2, 3)), (), {"a": 1},
     {1: "x", (2, 3): [None], frozenset({1}): b"k"}, {1, 2}, frozenset(), 1 + 2j, [[[[[]]]]]],
)
def test_round_trip_keeps_value_and_type(value: object) -> None:
    back = decode(encode(value))
    assert back == value and type(back) is type(value)


def test_special_floats_round_trip() -> None:
    nan, inf, minus_inf = decode(encode([math.nan, math.inf, -math.inf]))
    assert math.isnan(nan) and inf == math.inf and minus_inf == -math.inf


def test_subclasses_of_builtins_come_back_as_the_builtin() -> None:
    class Liar(int):
        def __eq__(self, other: object) -> bool:
            return True

        __hash__ = int.__hash__

    class Words(str):
        def __eq__(self, other: object) -> bool:
            return True

        __hash__ = str.__hash__

    value = decode(encode({"n": Liar(4), "s": Words("a"), "l": [Liar(1)]}))
    assert [type(value["n"]), type(value["s"]), type(value["l"][0])] == [int, str, int]
    assert value["n"] != 5 and value["s"] != "b"


@pytest.mark.parametrize("value", [lambda: 1, object(), [1, object()], {"k": print}, range(3)])
def test_non_plain_values_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="not plain data"):
        encode(value)


@pytest.mark.parametrize(
    "text",
    ["[1, 2]", '{"l": 5}', '{"a": 1, "b": 2}', '{"x": "foo"}', '{"d": [[{"l": [1]}, 2]]}', '{"d": [[1]]}',
     '{"s": [{"l": []}]}', '{"b": "zz"}', '{"c": ["a", 1]}', "not json", "[" * 100_000,
     '{"l": [' * (MAX_DEPTH + 5) + "]}" * (MAX_DEPTH + 5)],
)
def test_malformed_text_raises_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        decode(text)


def test_too_deep_values_are_refused_when_encoding() -> None:
    value: list = []
    for _ in range(MAX_DEPTH + 5):
        value = [value]
    with pytest.raises(ValueError, match="deeper"):
        encode(value)
