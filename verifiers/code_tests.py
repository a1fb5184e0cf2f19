"""Code verifier: run model-written Python against tests in the bubblewrap sandbox.

Two kinds of task:
- function tasks: `tests` is Python source — asserts, usually a `check(candidate)` function — and
  `entry_point` names the function under test (HumanEval / MBPP style);
- stdin/stdout tasks: `tests` is a list of ``{"input": str, "output": str}`` cases; every output line must
  match (trailing whitespace and trailing blank lines ignored), not just a prefix.

The verdict is computed where the solution cannot reach it:
- function tasks: a trusted test runner (`sandbox_harness.py`) runs the tests in one sandbox and calls the
  solution, which runs in a second sandbox under another uid (`sandbox_candidate.py`), over pipes;
  arguments and return values cross as plain data (`plain_data.py`). So a solution cannot read a pass
  token, patch the runner or hand the tests an object whose `__eq__` always says yes. Limits of this
  design: the tests may pass only plain data (a lambda argument makes the task an `error`), an argument
  mutated in place by the solution is not seen by the tests, and only the solution's callables are visible.
- stdin/stdout tasks: each case is a separate sandboxed run of the program; its output is compared here.
The sandbox and its per-run limits are in `sandbox.py` and `isolation.py`.

Results: ``ok`` 1.0 (all tests passed), ``wrong`` 0.0 (a test failed, timeout, crash, output flood),
``error`` 0.0 (the sandbox could not run or the task is broken — an infrastructure problem, logged once,
never a verdict).

>>> verify_code("def add(a, b):\\n    return a + b", "def check(f):\\n    assert f(2, 3) == 5", "add").status
'ok'
"""

from __future__ import annotations

import logging
import json
import os
import dataclasses
import re
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posttrain.verifiers.result import VerificationResult, error, ok, wrong
from posttrain.verifiers.sandbox import Sandbox, SandboxLimits, SandboxRun, SandboxUnavailable

logger = logging.getLogger(__name__)

HARNESS_PATH = "/sandbox/harness.py"
CANDIDATE_PATH = "/sandbox/candidate.py"
SOLUTION_PATH = "/sandbox/solution.py"
_HERE = Path(__file__).parent
_SANDBOX_FILES = {
    HARNESS_PATH: str(_HERE / "sandbox_harness.py"),
    CANDIDATE_PATH: str(_HERE / "sandbox_candidate.py"),
    "/sandbox/plain_data.py": str(_HERE / "plain_data.py"),
}

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
        self.sandbox = Sandbox(limits=limits or SandboxLimits(), bwrap=bwrap, ro_files=dict(_SANDBOX_FILES))
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
        try:
            return self._run(case)
        except (OSError, TimeoutError) as exc:  # no free slot, a cgroup that cannot be made...
            return error(f"sandbox failed: {type(exc).__name__}: {exc}")

    def _run(self, case: CodeCase) -> VerificationResult:
        if isinstance(case.tests, str):
            return self._run_function(case.solution, case.tests, case.entry_point or "")
        return self._run_io(case.solution, case.tests)

    def _run_function(self, solution: str, tests: str, entry_point: str) -> VerificationResult:
        """Tests in a trusted runner sandbox, the solution in its own sandbox, plain data between them."""
        request_r, request_w = os.pipe()
        reply_r, reply_w = os.pipe()
        stop_r, stop_w = os.pipe()
        candidate_fds, runner_fds = _FdGroup(request_r, reply_w), _FdGroup(request_w, reply_r)
        candidate: list[SandboxRun] = []

        def run_candidate() -> None:
            try:
                candidate.append(
                    self.sandbox.run(
                        [self.sandbox.python(), "-I", "-S", CANDIDATE_PATH, str(request_r), str(reply_w)],
                        files={SOLUTION_PATH: solution.encode("utf-8", "surrogatepass")},
                        pass_fds=candidate_fds.fds,
                        cancel_fd=stop_r,
                        on_start=candidate_fds.close,
                    )
                )
            finally:
                candidate_fds.close()  # if it never started, the runner must still see the pipe close

        thread = threading.Thread(target=run_candidate, name="code-verifier-candidate", daemon=True)
        thread.start()
        try:
            runner = self.sandbox.run(
                [self.sandbox.python(), "-I", "-S", HARNESS_PATH, str(request_w), str(reply_r), entry_point],
                files={"/sandbox/tests.py": tests.encode("utf-8", "surrogatepass")},
                pass_fds=runner_fds.fds,
                on_start=runner_fds.close,
            )
        finally:
            runner_fds.close()
            os.write(stop_w, b"x")
            thread.join()
            _FdGroup(stop_r, stop_w).close()
        return self._function_verdict(runner, candidate[0] if candidate else None)

    def _function_verdict(self, runner: SandboxRun, candidate: SandboxRun | None) -> VerificationResult:
        if candidate is None or not runner.started or not candidate.started:
            failed = runner if not runner.started else candidate
            detail = failed.stderr.strip()[-300:] if failed is not None else "the candidate's sandbox did not run"
            return error(f"sandbox failed to start: {detail}")
        if runner.timed_out:
            return wrong(f"timed out after {self.limits.timeout_s:g} s")
        if candidate.output_overflow or runner.output_overflow:
            return wrong(f"printed more than {self.limits.max_output_bytes} bytes")
        try:
            verdict = json.loads(runner.stdout.strip().splitlines()[-1])
            status, reason = verdict["status"], str(verdict["reason"])
        except (IndexError, ValueError, KeyError, TypeError):
            return error(f"test runner ended without a verdict: {runner.stderr.strip()[-300:] or runner.returncode}")
        return ok(reason) if status == "ok" else wrong(reason) if status == "wrong" else error(reason)

    def _run_io(self, solution: str, cases: Sequence[IOCase]) -> VerificationResult:
        """Each case a fresh sandboxed run of the program; outputs compared here, outside the sandbox."""
        deadline = time.monotonic() + self.limits.timeout_s
        files = {SOLUTION_PATH: solution.encode("utf-8", "surrogatepass")}
        for index, item in enumerate(cases):
            limits = dataclasses.replace(self.limits, timeout_s=max(deadline - time.monotonic(), 0.001))
            run = self.sandbox.run(
                [self.sandbox.python(), "-I", "-S", SOLUTION_PATH], str(item["input"]).encode(), limits, files=files
            )
            if not run.started:
                return error(f"sandbox failed to start: {run.stderr.strip()[-300:]}")
            if run.timed_out:
                return wrong(f"timed out after {self.limits.timeout_s:g} s")
            if run.output_overflow:
                return wrong(f"printed more than {self.limits.max_output_bytes} bytes")
            if run.returncode != 0:
                tail = run.stderr.strip().splitlines()[-1:] or [""]
                return wrong(f"case {index}: exit status {run.returncode} {tail[0][:300]}")
            got, expected = _lines(run.stdout), _lines(str(item["output"]))
            if got != expected:
                return wrong(f"case {index}: output {len(got)} line(s) differs from expected {len(expected)} line(s)")
        return ok("all tests passed")

    def verify_many(self, cases: Sequence[CodeCase], max_workers: int = 4) -> list[VerificationResult]:
        """Verify cases in parallel (each in its own sandbox); results in input order."""
        if len(cases) <= 1:
            return [self.verify(case) for case in cases]
        with ThreadPoolExecutor(max_workers=max_workers) as executor:
            return list(executor.map(self.verify, cases))


def _lines(text: str) -> list[str]:
    """Output lines compared: trailing whitespace and trailing blank lines ignored."""
    return [line.rstrip() for line in text.rstrip().splitlines()]


class _FdGroup:
    """Our copies of the pipe ends handed to one sandbox; closed exactly once (a number may be reused after)."""

    def __init__(self, *fds: int) -> None:
        self.fds, self._lock, self._open = fds, threading.Lock(), True

    def close(self) -> None:
        with self._lock:
            if self._open:
                self._open = False
                for fd in self.fds:
                    os.close(fd)


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
