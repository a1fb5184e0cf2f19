"""Code sandbox throughput: trivial programs run against their tests, each verification in its own sandbox(es).

Runs in parallel over a small thread pool and prints verifications per second, for function tasks (tests in
a trusted runner sandbox calling the solution in a second sandbox) and for stdin/stdout tasks with two cases
(one sandboxed run per case). Target: >= 20/s on a 2-core machine.

    python benchmarks/sandbox_throughput.py [--count 200] [--threads 4]

`measure` takes the verifier and case classes, so an older copy of `verifiers/` can be timed side by side.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from posttrain.verifiers.code_tests import CodeCase, CodeVerifier


def make_cases(case_class: Any, count: int, io: bool) -> list[Any]:
    """`count` correct solutions: `add_k(x)` function tasks, or stdin/stdout tasks with two cases."""
    if io:
        cases = [{"input": "1\n", "output": "2\n"}, {"input": "41\n", "output": "42\n"}]
        return [case_class(f"print(int(input()) + 1)  # {k}\n", cases) for k in range(count)]
    return [
        case_class(
            f"def add_{k}(x):\n    return x + {k}\n", f"def check(candidate):\n    assert candidate(1) == {1 + k}\n", f"add_{k}"
        )
        for k in range(count)
    ]


def measure(verifier_class: Any, case_class: Any, count: int, threads: int, io: bool) -> float:
    """Verifications per second (all must pass)."""
    cases = make_cases(case_class, count, io)
    verifier = verifier_class()
    verifier.ensure_available()  # the one-time probe and self-test stay outside the timing
    begin = time.perf_counter()
    results = verifier.verify_many(cases, max_workers=threads)
    seconds = time.perf_counter() - begin
    failed = [result.reason for result in results if not result.passed]
    assert not failed, failed[:3]
    return count / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    for io, what in ((False, "function tasks"), (True, "stdin/stdout tasks, 2 cases")):
        rate = measure(CodeVerifier, CodeCase, args.count, args.threads, io)
        print(f"sandbox: {rate:.1f} verifications/s, {what} ({args.count} runs, {args.threads} threads)")


if __name__ == "__main__":
    main()
