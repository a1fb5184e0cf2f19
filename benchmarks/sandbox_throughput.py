"""Code sandbox throughput: trivial programs run against their tests, each in its own bubblewrap sandbox.

Runs in parallel over a small thread pool and prints sandboxed test runs per second. Target: >= 20/s on a
2-core machine.

    python benchmarks/sandbox_throughput.py [--count 200] [--threads 4]
"""

from __future__ import annotations

import argparse
import time

from posttrain.verifiers.code_tests import CodeCase, CodeVerifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    cases = [
        CodeCase(
            f"def add_{k}(x):\n    return x + {k}\n",
            f"def check(candidate):\n    assert candidate(1) == {1 + k}\n",
            f"add_{k}",
        )
        for k in range(args.count)
    ]
    verifier = CodeVerifier()
    verifier.ensure_available()  # the one-time probe and self-test stay outside the timing
    begin = time.perf_counter()
    results = verifier.verify_many(cases, max_workers=args.threads)
    seconds = time.perf_counter() - begin
    failed = [result.reason for result in results if not result.passed]
    assert not failed, failed[:3]
    print(f"sandbox: {args.count / seconds:.1f} sandboxed test runs/s ({args.count} runs, {args.threads} threads)")


if __name__ == "__main__":
    main()
