"""The `posttrain` command: validate answers fast without torch, errors are short, help and verify work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from posttrain.cli import main

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "recipes" / "quickstart.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "posttrain.cli", *args], capture_output=True, text=True, timeout=timeout, env=ENV, cwd=REPO
    )


@pytest.fixture
def bad_recipe(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    text = QUICKSTART.read_text()
    assert "\nseed: 0\n" in text
    path.write_text(text.replace("\nseed: 0\n", "\nseed: zero\n"))
    return path


def test_validate_quickstart_exits_0_quickly() -> None:
    started = time.perf_counter()
    done = cli("validate", str(QUICKSTART))
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    assert "quickstart.yaml: ok" in done.stdout and "pretrain (pretrain)" in done.stdout and "sft (sft)" in done.stdout
    assert elapsed < 5, f"posttrain validate took {elapsed:.1f}s"


def test_validate_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from posttrain.cli import main\n"
        f"rc = main(['validate', {str(QUICKSTART)!r}])\n"
        "from posttrain.recipe import load_recipe\n"
        f"load_recipe({str(QUICKSTART)!r})\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "sys.exit(rc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=ENV)
    assert done.returncode == 0, done.stderr


def test_bad_recipe_exits_2_with_short_message(bad_recipe: Path) -> None:
    done = cli("validate", str(bad_recipe))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith(f"error: {bad_recipe}: 1 problem(s)")
    line = QUICKSTART.read_text().splitlines().index("seed: 0") + 1
    assert len(lines) == 2 and f"seed (line {line}): Input should be a valid integer" in lines[1]
    assert done.stdout == ""


def test_debug_shows_traceback(bad_recipe: Path) -> None:
    done = cli("--debug", "validate", str(bad_recipe))
    assert done.returncode == 2
    assert "Traceback" in done.stderr and "RecipeError" in done.stderr
    assert "error: " in done.stderr


def test_validate_with_set_override(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(QUICKSTART), "--set", "stages.sft.train.lr=0.5"]) == 0
    assert main(["validate", str(QUICKSTART), "--set", "stages.sft.train.lr=-1"]) == 2
    captured = capsys.readouterr()
    assert "stages[1] (sft).train.lr" in captured.err and "greater than 0" in captured.err


def test_missing_recipe_file_is_a_short_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["validate", str(tmp_path / "none.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"error: recipe file not found: {tmp_path / 'none.yaml'}"


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["validate", "--help"], ["eval", "--help"]])
def test_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: posttrain")
    if argv == ["--help"]:
        assert all(command in out for command in ("run", "validate", "eval", "verify"))
    if argv[0] == "run":
        assert "--set" in out and "--output-dir" in out and "recipe" in out


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "posttrain"
    assert script.exists()
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, env=ENV)
    assert done.returncode == 0 and "usage: posttrain" in done.stdout


def test_verify_math_is_wired() -> None:
    done = cli("verify", "math", "--pred", "0.5", "--gold", "1/2")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["score"] == 1
