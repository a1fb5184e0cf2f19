"""Code verifier: run model-written Python against tests in the bubblewrap sandbox.

Two kinds of task:
- function tasks: `tests` is Python source — asserts, usually a `check(candidate)` function — and
  `entry_point` names the function under test (HumanEval / MBPP style);
- stdin/stdout tasks: `tests` is a list of ``{"input": str, "output": str}`` cases; every output line must
  match (trailing whitespace and trailing blank lines ignored), not just a prefix.

A run passes only if the harness prints a per-run random token after all tests ran, so exiting early with
status 0 does not pass (see `sandbox_harness.py`). The sandbox and its limits are in `sandbox.py`.

Results: ``ok`` 1.0 (all tests passed), ``wrong`` 0.0 (a test failed, timeout, crash, output flood),
``error`` 0.0 (the sandbox could not run — an infrastructure problem, logged once, never a verdict).

>>> verify_code("def add(a, b):\\n    return a + b", "def check(f):\\n    assert f(2, 3) == 5", "add").status
'ok'
"""

from __future__ import annotations

import logging
import marshal
import re
import secrets
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posttrain.verifiers.result import VerificationResult, error, ok, wrong
from posttrain.verifiers.sandbox import Sandbox, SandboxLimits, SandboxUnavailable

logger = logging.getLogger(__name__)

HARNESS_PATH = "/sandbox/harness.py"
_HARNESS_SOURCE = str(Path(__file__).with_name("sandbox_harness.py"))
_MARKER = "posttrain-harness-failure: "

IOCase = Mapping[str, str]
Tests = str | Sequence[IOCase]
"""Python test source (function task) or a list of {"input", "output"} cases (stdin/stdout task)."""


@dataclass(frozen=True)
class CodeCase:
    """One code verification job (the batch API takes a list of these).

    Attributes:
        solution: The program (Python source).
        tests: Test source for a function task, or a list of {"input", "output"} cases.
        entry_point: The function the tests call (`check(<entry_point>)`); None for stdin/stdout tasks.
    """

    solution: str
    tests: Tests
    entry_point: str | None = None


def _payload(case: CodeCase, token: str) -> dict[str, Any]:
    if isinstance(case.tests, str):
        return {
            "token": token,
            "mode": "function",
            "solution": case.solution,
            "tests": case.tests,
            "entry_point": case.entry_point or "",
        }
    cases = [{"input": str(item["input"]), "output": str(item["output"])} for item in case.tests]
    return {"token": token, "mode": "io", "solution": case.solution, "cases": cases}


def _task_problem(case: CodeCase) -> str:
    """A problem with the task itself (not the solution), or ""."""
    if isinstance(case.tests, str):
        if re.search(r"^def check\s*\(", case.tests, re.MULTILINE) and not case.entry_point:
            return "tests define check(candidate) but no entry_point was given"
        return ""
    if not case.tests:
        return "no stdin/stdout cases given"
    for index, item in enumerate(case.tests):
        if not isinstance(item, Mapping) or "input" not in item or "output" not in item:
            return f"stdin/stdout case {index} must be a mapping with 'input' and 'output'"
    return ""


class CodeVerifier:
    """Runs solutions against tests in the sandbox; thread-safe.

    Args:
        limits: Resource limits per run (wall clock, CPU, memory, processes, file size, output).
        bwrap: The bubblewrap executable (name or path).
    """

    def __init__(self, *, limits: SandboxLimits | None = None, bwrap: str = "bwrap") -> None:
        self.sandbox = Sandbox(limits=limits or SandboxLimits(), bwrap=bwrap, ro_files={HARNESS_PATH: _HARNESS_SOURCE})
        self._warned = threading.Event()
        self._self_test_lock = threading.Lock()
        self._self_test_problem: str | None = None

    @property
    def limits(self) -> SandboxLimits:
        """The resource limits of each run."""
        return self.sandbox.limits

    def ensure_available(self) -> None:
        """Raise `SandboxUnavailable` unless the sandbox and the harness in it work (checked once)."""
        self.sandbox.ensure_available()
        with self._self_test_lock:
            if self._self_test_problem is None:
                result = self._run(CodeCase("def f():\n    return 1\n", "assert f() == 1\n", "f"))
                self._self_test_problem = "" if result.passed else f"harness self-test failed: {result.reason}"
        if self._self_test_problem:
            raise SandboxUnavailable(self._self_test_problem)

    def __call__(self, solution: str, tests: Tests, entry_point: str | None = None) -> VerificationResult:
        """Verify one solution. See `CodeCase` for the arguments."""
        return self.verify(CodeCase(solution, tests, entry_point))

    def verify(self, case: CodeCase) -> VerificationResult:
        """Verify one `CodeCase`."""
        problem = _task_problem(case)
        if problem:
            return error(f"bad task: {problem}")
        try:
            self.ensure_available()
        except SandboxUnavailable as exc:
            if not self._warned.is_set():
                self._warned.set()
                logger.warning("code sandbox unavailable, code verifications report status 'error': %s", exc)
            return error(f"sandbox unavailable: {exc}")
        return self._run(case)

    def _run(self, case: CodeCase) -> VerificationResult:
        token = secrets.token_hex(16)
        stdin = marshal.dumps(_payload(case, token))
        run = self.sandbox.run([self.sandbox.python(), "-I", "-S", HARNESS_PATH], stdin)
        if token in run.stdout.splitlines():
            return ok("all tests passed")
        if run.timed_out:
            return wrong(f"timed out after {self.limits.timeout_s:g} s")
        if run.output_overflow:
            return wrong(f"printed more than {self.limits.max_output_bytes} bytes")
        failures = [line for line in run.stderr.splitlines() if line.startswith(_MARKER)]
        if failures:
            return wrong(failures[-1][len(_MARKER) :])
        tail = run.stderr.strip().splitlines()[-1:] or ["no output"]
        return wrong(f"exited with status {run.returncode} before the tests finished ({tail[0][:200]})")

    def verify_many(self, cases: Sequence[CodeCase], max_workers: int = 4) -> list[VerificationResult]:
        """Verify cases in parallel (each in its own sandbox); results in input order."""
        if len(cases) <= 1:
            return [self.verify(case) for case in cases]
        with ThreadPoolExecutor(max_workers=max_workers) as executor:
            return list(executor.map(self.verify, cases))


_DEFAULT: dict[SandboxLimits, CodeVerifier] = {}


def verify_code(
    solution: str, tests: Tests, entry_point: str | None = None, *, limits: SandboxLimits | None = None
) -> VerificationResult:
    """Verify one solution with a shared `CodeVerifier` (see `CodeCase` for the arguments)."""
    limits = limits or SandboxLimits()
    verifier = _DEFAULT.get(limits)
    if verifier is None:
        verifier = _DEFAULT.setdefault(limits, CodeVerifier(limits=limits))
    return verifier(solution, tests, entry_point)
