"""The examples in the curation modules' docstrings are right (each is a hand-computed case)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["text", "dedup", "decontamination", "quality", "mixture", "curate"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(f"posttrain.curation.{name}")
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
