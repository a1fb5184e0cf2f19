import doctest

import pytest

import posttrain.registry
from posttrain.registry import Registry


def test_doctests():
    assert doctest.testmod(posttrain.registry).failed == 0


def test_unknown_name_lists_valid_names_and_double_registration_fails():
    table: Registry[int] = Registry("widget")
    table.register("b")(2)
    table.register("a")(1)
    assert table.get("a") == 1 and "b" in table and table.names() == ["a", "b"]
    with pytest.raises(ValueError, match="unknown widget 'c'; valid: a, b"):
        table.get("c")
    with pytest.raises(ValueError, match="registered twice"):
        table.register("a")(3)
