"""The README's two commands are the ones users and CI run."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_the_readme_test_command():
    blocks = _bash_blocks((ROOT / "README.md").read_text())
    test_command = next(b for b in blocks if "pytest" in b and "\n" not in b)
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_readme_quickstart_command_runs_the_quickstart_recipe():
    blocks = _bash_blocks((ROOT / "README.md").read_text())
    quickstart = blocks[0]
    assert "pip install torch==2.13.0" in quickstart
    assert quickstart.endswith("python -m posttrain.run recipes/quickstart.yaml")
    assert (ROOT / "recipes" / "quickstart.yaml").exists()
