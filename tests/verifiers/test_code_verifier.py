"""Code verifier: function and stdin/stdout tasks, task errors, an unavailable sandbox, built-in tasks."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from posttrain.data.code_tasks import load_code_tasks
from posttrain.verifiers.code_tests import CodeCase, CodeVerifier
from posttrain.verifiers.sandbox import SandboxLimits, SandboxUnavailable

pytestmark = pytest.mark.timeout(120)  # sandboxed runs: a broken wall-clock limit fails, never hangs CI

ADD = "def add(a, b):\n    return a + b\n"
SUM_LINE = "import sys\nfor line in sys.stdin:\n    print(sum(map(int, line.split())))\n"
CASES = [{"input": "1 2\n3 4\n", "output": "3\n7\n"}, {"input": "10 -1", "output": "9"}]


@pytest.fixture(scope="module")
def verifier() -> CodeVerifier:
    return CodeVerifier(limits=SandboxLimits(timeout_s=3.0, cpu_s=3))


@pytest.mark.parametrize(
    ("solution", "tests", "entry_point", "status", "reason_part"),
    [
        (ADD, "def check(candidate):\n    assert candidate(2, 3) == 5\n", "add", "ok", "passed"),
        (ADD, "assert add(1, 1) == 2\n", None, "ok", "passed"),  # module-level asserts
        (ADD, "def check(candidate):\n    assert candidate(2, 3) == 6\n", "add", "wrong", "tests.py:2"),
        (ADD, "def check(candidate):\n    assert candidate(1, 1) == 2\n", "plus", "wrong", "does not define 'plus'"),
        ("def add(a, b) return", "def check(c):\n    pass\n", "add", "wrong", "SyntaxError"),
        (ADD, "def check(candidate):\n    pass\n", None, "error", "no entry_point"),
        (SUM_LINE, CASES, None, "ok", "passed"),
        (SUM_LINE + "print('extra line')\n", CASES, None, "wrong", "case 0"),  # all lines, not a prefix
        ("print(3)\n", CASES, None, "wrong", "case 0"),  # a matching first line is not enough
        (
            "import sys\nprint(sum(map(int, sys.stdin.read().split()[:2])))\nraise SystemExit(1)\n",
            CASES,
            None,
            "wrong",
            "exit status 1",
        ),
        ("print('3   ')\nprint('7')\nprint()\n", CASES[:1], None, "ok", "passed"),  # trailing whitespace ignored
        (SUM_LINE, [{"input": "1"}], None, "error", "'input' and 'output'"),
    ],
)
def test_verify_table(verifier: CodeVerifier, solution, tests, entry_point, status: str, reason_part: str) -> None:
    result = verifier(solution, tests, entry_point)
    assert result.status == status, result.reason
    assert result.score == (1.0 if status == "ok" else 0.0)
    assert reason_part in result.reason


def test_missing_bwrap_is_an_infrastructure_error(caplog: pytest.LogCaptureFixture) -> None:
    verifier = CodeVerifier(bwrap="/nonexistent/bwrap")
    with pytest.raises(SandboxUnavailable, match="not found"):
        verifier.ensure_available()
    with caplog.at_level(logging.WARNING):
        result = verifier(ADD, "assert add(1, 2) == 3\n")
    assert (result.status, result.score) == ("error", 0.0)
    assert "sandbox unavailable" in result.reason and "sandbox unavailable" in caplog.text


def test_refused_namespaces_are_an_infrastructure_error(tmp_path: Path) -> None:
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: Creating new namespace failed: Operation not permitted' >&2\nexit 1\n")
    fake.chmod(0o755)
    verifier = CodeVerifier(bwrap=str(fake))
    with pytest.raises(SandboxUnavailable, match="namespace"):
        verifier.ensure_available()
    assert verifier(ADD, "assert add(1, 2) == 3\n").status == "error"


def test_builtin_code_tasks_pass_with_reference_and_fail_when_wrong(verifier: CodeVerifier) -> None:
    tasks = load_code_tasks()
    assert 30 <= len(tasks) <= 60
    assert {"prompt", "entry_point", "tests", "reference_solution"} <= set(tasks[0])
    results = verifier.verify_many([CodeCase(t["reference_solution"], t["tests"], t["entry_point"]) for t in tasks])
    assert [r.reason for r in results if not r.passed] == []
    wrong = [
        CodeCase(f"def {t['entry_point']}(*args):\n    return None\n", t["tests"], t["entry_point"]) for t in tasks[:8]
    ]
    assert all(r.status == "wrong" for r in verifier.verify_many(wrong))


def test_code_task_split_is_deterministic_and_disjoint() -> None:
    train, test = load_code_tasks("train", seed=3), load_code_tasks("test", seed=3)
    assert train == load_code_tasks("train", seed=3)
    assert {t["task_id"] for t in train}.isdisjoint({t["task_id"] for t in test})
    assert len(train) + len(test) == len(load_code_tasks(seed=3))
    assert load_code_tasks(seed=3) != load_code_tasks(seed=4)  # constants are drawn from the seed
