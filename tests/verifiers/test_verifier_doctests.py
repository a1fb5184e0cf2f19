"""The docstring examples of every verifier module (and the built-in code tasks) run and hold."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import posttrain.verifiers

MODULES = [f"posttrain.verifiers.{info.name}" for info in pkgutil.iter_modules(posttrain.verifiers.__path__)]


@pytest.mark.parametrize("name", [*MODULES, "posttrain.data.code_tasks"])
def test_doctests(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_verifiers_import_no_torch() -> None:
    import subprocess
    import sys

    code = "import sys, " + ", ".join(MODULES) + "; print('torch' in sys.modules, 'transformers' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["False", "False"], done.stderr
