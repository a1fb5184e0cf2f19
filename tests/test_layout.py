"""How the house is laid out: no module imports another module's private (underscore) names."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("posttrain", "rewards", "verifiers")


def test_no_module_imports_another_modules_private_names() -> None:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGES):
                    private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                    if private:
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.module} {private}")
    assert found == []
