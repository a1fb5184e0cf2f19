"""The `posttrain` command: validate answers fast without torch, errors are short, help and verify work."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from posttrain.cli import main

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "recipes" / "quickstart.yaml"
ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}


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


def test_validate_reports_every_broken_file(bad_recipe: Path, tmp_path: Path, capsys) -> None:
    missing = tmp_path / "none.yaml"
    assert main(["validate", str(bad_recipe), str(QUICKSTART), str(missing)]) == 2
    captured = capsys.readouterr()
    assert f"{QUICKSTART}: ok" in captured.out
    err = captured.err
    assert f"error: {bad_recipe}: 1 problem(s)" in err and f"recipe file not found: {missing}" in err
    assert err.strip().splitlines()[-1] == f"error: 2 of 3 recipes failed: {bad_recipe}, {missing}"


def test_trl_names_get_a_hint(tmp_path: Path, write_recipe, micro_recipe, capsys) -> None:
    text = micro_recipe.format(output_dir=tmp_path / "run")
    for trl, ours in [("lr: 1.0e-3", "learning_rate: 1.0e-3"), ("batch_size:", "per_device_train_batch_size:")]:
        text = text.replace(trl, ours, 1)
    recipe = write_recipe(tmp_path, text)
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "learning_rate" in err and "did you mean `lr`?" in err
    assert "per_device_train_batch_size" in err and "`batch_size` (SFT/DPO/RM) or `micro_batch_size` (RL)" in err


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


HELP_MENTIONS = {
    "run": ["--set", "--output-dir", "--dry-run", "recipe"],
    "validate": ["recipes", "--set"],
    "eval": ["checkpoint", "--data", "--kind"],
    "report": ["run_dir", "report.html", "report.md"],
    "export": ["checkpoint", "destination", "--base", "--push", "--force"],
    "verify": ["math", "code"],
}


@pytest.mark.parametrize("argv", [["--help"]] + [[command, "--help"] for command in HELP_MENTIONS])
def test_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(argv)  # `verify` returns its status; argparse's --help exits
    except SystemExit as info:
        code = info.code
    assert code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal width
    expected_usage = "usage: posttrain" if argv == ["--help"] else f"usage: posttrain {argv[0]}"
    assert out.startswith(expected_usage)
    if argv == ["--help"]:
        assert "{run,validate,eval,report,export,verify}" in out
    else:
        assert all(word in out for word in HELP_MENTIONS[argv[0]]), out


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "posttrain"
    assert script.exists()
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, env=ENV)
    assert done.returncode == 0 and "usage: posttrain" in done.stdout


def test_verify_math_is_wired() -> None:
    done = cli("verify", "math", "--pred", "0.5", "--gold", "1/2")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["score"] == 1


def test_run_with_a_missing_recipe_is_a_short_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["run", str(tmp_path / "none.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"error: recipe file not found: {tmp_path / 'none.yaml'}"


def test_run_with_a_misspelt_key_names_it_and_its_line(capsys, tmp_path: Path, write_recipe, micro_recipe) -> None:
    text = micro_recipe.format(output_dir=tmp_path / "run").replace("lr: 1.0e-3", "learning_rate: 1.0e-3", 1)
    recipe = write_recipe(tmp_path, text)
    line = next(i for i, l in enumerate(text.splitlines(), start=1) if "learning_rate" in l)
    assert main(["run", str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: {recipe}: 1 problem(s):",
        f"  - stages[0] (pretrain).train.learning_rate (line {line}): unknown key (a TRL name); did you mean `lr`?",
    ]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", [["eval", "{missing}", "--data", "builtin:arithmetic"], ["export", "{missing}", "{out}"]])
def test_missing_checkpoint_is_a_short_error(command: list[str], capsys, tmp_path: Path) -> None:
    missing = tmp_path / "runs" / "x" / "stages" / "sft"
    argv = [part.format(missing=missing, out=tmp_path / "out") for part in command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: no checkpoint at {missing}") and "\n" not in err


def test_run_prints_plain_log_lines_when_output_is_not_a_terminal(cli_micro_run) -> None:
    out = cli_micro_run.done.stdout
    assert "\x1b[" not in out and "\r" not in out and "━" not in out
    for stage in ("pretrain", "sft"):
        steps = re.findall(rf"^\[{stage}\] step (\d)/3 .*loss=[0-9.]+ .*tokens_per_s=", out, re.M)
        assert steps == ["1", "2", "3"]


def test_run_logs_to_tensorboard_and_metrics_jsonl(cli_micro_run) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for stage in ("pretrain", "sft"):
        rows = [json.loads(line) for line in (cli_micro_run.run_dir / "stages" / stage / "metrics.jsonl").read_text().splitlines()]
        events = EventAccumulator(str(cli_micro_run.run_dir / "tensorboard" / stage))
        events.Reload()
        assert [e.step for e in events.Scalars("loss")] == [row["step"] for row in rows] == [1, 2, 3]
        assert [e.value for e in events.Scalars("loss")] == pytest.approx([row["loss"] for row in rows])
        assert {"grad_norm", "lr", "tokens_per_s"} <= set(events.Tags()["scalars"])


def dry_run(recipe: Path, *extra: str) -> str:
    done = cli("run", str(recipe), "--dry-run", *extra)
    assert done.returncode == 0, done.stderr
    return done.stdout


def plan_rows(out: str) -> dict[str, list[str]]:
    """Stage name -> [kind, from, action, steps, tokens] from the dry-run table."""
    rows = {}
    for line in out.splitlines():
        match = re.match(r"^(pretrain|sft)\s+(\S+)\s+(\S+)\s+(\S+ \(.*?\))\s+(\S+)\s+(\S+)$", line)
        if match:
            rows[match.group(1)] = list(match.groups()[1:])
    return rows


def test_dry_run_shows_reuse_and_estimates_without_training(cli_micro_run) -> None:
    recipe, run_dir = cli_micro_run.recipe, cli_micro_run.run_dir
    before = sorted(p.name for p in run_dir.rglob("*"))
    out = dry_run(recipe)
    assert f"Run directory: {run_dir}" in out and "Would train: nothing (every stage is reused)" in out
    # 3 steps x batch 4 x seq_len 32
    assert plan_rows(out) == {
        "pretrain": ["pretrain", "base", "reuse (unchanged)", "3", "384"],
        "sft": ["sft", "pretrain", "reuse (unchanged)", "3", "384"],
    }
    rows = plan_rows(dry_run(recipe, "--set", "stages.pretrain.train.steps=5", "--set", "stages.sft.train.batch_size=8"))
    assert rows["pretrain"][2:] == ["run (config, data or seed changed)", "5", "640"]
    assert rows["sft"][2:] == ["run (pretrain re-runs)", "3", "768"]
    epochs = ["--set", "stages.sft.train.steps=null", "--set", "stages.sft.train.epochs=2"]
    assert plan_rows(dry_run(recipe, *epochs))["sft"][2:] == ["run (config, data or seed changed)", "~16", "~2,048"]
    assert sorted(p.name for p in run_dir.rglob("*")) == before


def test_dry_run_of_a_new_run_creates_nothing_and_imports_no_torch(tmp_path: Path, write_recipe, micro_recipe) -> None:
    recipe = write_recipe(tmp_path, micro_recipe.format(output_dir=tmp_path / "run"))
    code = (
        "import sys\n"
        "from posttrain.cli import main\n"
        f"rc = main(['run', {str(recipe)!r}, '--dry-run'])\n"
        "assert 'torch' not in sys.modules\n"
        "sys.exit(rc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=ENV)
    assert done.returncode == 0, done.stderr
    assert plan_rows(done.stdout)["pretrain"][2] == "run (not run yet)"
    assert plan_rows(done.stdout)["sft"][2] == "run (pretrain re-runs)"
    assert not (tmp_path / "run").exists()
