"""The docstring examples of every reward module run and hold."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import posttrain.rewards

MODULES = [f"posttrain.rewards.{info.name}" for info in pkgutil.iter_modules(posttrain.rewards.__path__)]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
