"""`posttrain verify` command line, run as `python -m posttrain.verifiers.cli` in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)  # sandboxed runs: a broken wall-clock limit fails, never hangs CI


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "posttrain.verifiers.cli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
    )


def records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_math_single() -> None:
    done = run_cli("math", "--pred", "so the answer is \\boxed{\\frac{1}{2}}", "--gold", "0.5")
    assert done.returncode == 0, done.stderr
    assert records(done.stdout) == [{"score": 1.0, "status": "ok", "reason": "equal (exact numeric)"}]
    wrong = run_cli("math", "--pred", "\\boxed{3}", "--gold", "4")
    assert wrong.returncode == 1 and records(wrong.stdout)[0]["status"] == "wrong"


def test_math_reads_the_last_number_of_prose_like_the_evaluator() -> None:
    # issue 19: the math verifier found "no final answer" here while `exact_match` took the last number
    done = run_cli("math", "--pred", "So 3 + 4 = 7 and then 7 * 2 = 14.", "--gold", "14")
    assert done.returncode == 0, done.stderr
    assert records(done.stdout)[0]["score"] == 1.0


def test_math_batch(tmp_path: Path) -> None:
    lines = [
        {"id": "a", "pred": "1,000", "gold": "1000"},
        {"pred": "\\boxed{x=3}", "gold": "3"},
        {"pred": "\\boxed{2}", "gold": "3"},
        {"pred": "7"},
    ]
    path = tmp_path / "cases.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\nnot json\n")
    done = run_cli("math", "--jsonl", str(path))
    results = records(done.stdout)
    assert done.returncode == 1
    assert [r["status"] for r in results] == ["ok", "ok", "wrong", "error", "error"]
    assert results[0]["id"] == "a" and set(results[1]) == {"score", "status", "reason"}


def test_code_single(tmp_path: Path) -> None:
    (tmp_path / "solution.py").write_text("def double(x):\n    return 2 * x\n")
    (tmp_path / "tests.py").write_text("def check(candidate):\n    assert candidate(4) == 8\n")
    args = ["code", "--allow-code-execution", "--solution", str(tmp_path / "solution.py"), "--tests", str(tmp_path / "tests.py")]
    done = run_cli(*args, "--entry-point", "double")
    assert done.returncode == 0, done.stderr
    assert records(done.stdout) == [{"score": 1.0, "status": "ok", "reason": "all tests passed"}]
    (tmp_path / "cases.json").write_text(json.dumps([{"input": "2\n", "output": "4\n"}]))
    (tmp_path / "io.py").write_text("print(2 * int(input()))\n")
    io = run_cli(
        "code", "--allow-code-execution", "--solution", str(tmp_path / "io.py"), "--tests", str(tmp_path / "cases.json")
    )
    assert records(io.stdout)[0]["status"] == "ok"


def test_code_batch_from_stdin() -> None:
    rows = [
        {"solution": "def f():\n    return 1\n", "tests": "def check(c):\n    assert c() == 1\n", "entry_point": "f"},
        {"solution": "import sys\nsys.exit(0)\n", "tests": "def check(c):\n    assert c() == 1\n", "entry_point": "f"},
        {"solution": "print(input()[::-1])", "tests": [{"input": "abc", "output": "cba"}]},
    ]
    done = run_cli("code", "--allow-code-execution", "--jsonl", "-", stdin="\n".join(json.dumps(row) for row in rows) + "\n")
    assert [r["status"] for r in records(done.stdout)] == ["ok", "wrong", "ok"]


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert run_cli("math", "--pred", "1").returncode == 2
    assert run_cli("sql").returncode == 2
    assert (
        run_cli(
            "code", "--allow-code-execution", "--solution", str(tmp_path / "missing.py"), "--tests", str(tmp_path / "t.py")
        ).returncode
        == 2
    )


def test_verify_code_needs_the_explicit_opt_in(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    (tmp_path / "solution.py").write_text(f"open({str(marker)!r}, 'w').write('x')\ndef f():\n    return 1\n")
    (tmp_path / "tests.py").write_text("def check(c):\n    assert c() == 1\n")
    args = ["code", "--solution", str(tmp_path / "solution.py"), "--tests", str(tmp_path / "tests.py"), "--entry-point", "f"]
    done = run_cli(*args)
    assert done.returncode == 2 and "--allow-code-execution" in done.stderr
    assert done.stdout == "" and not marker.exists()
    batch = run_cli("code", "--jsonl", "-", stdin='{"solution": "x", "tests": "assert True"}\n')
    assert batch.returncode == 2 and "--allow-code-execution" in batch.stderr


def test_main_is_callable_in_process(capsys) -> None:
    from posttrain.verifiers.cli import main

    assert main(["math", "--pred", "12", "--gold", "12.0"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "ok"
