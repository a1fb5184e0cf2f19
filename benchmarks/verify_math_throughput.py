"""Math verifier throughput on easy numeric answers (GSM8K-style), in verifications per second.

Prints the rate with the in-process fast path (plain integers/decimals/fractions, the default) and with
every answer sent to the math-verify worker processes, so both paths are visible. Target: >= 200/s.

    python benchmarks/verify_math_throughput.py [--count 4000] [--workers 2]
"""

from __future__ import annotations

import argparse
import random
import time

from posttrain.verifiers.math_answer import MathVerifier


def make_cases(count: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Completions ending in an easy numeric answer (half right), and their gold answers."""
    rng = random.Random(seed)
    completions, golds = [], []
    for index in range(count):
        gold = rng.choice(
            [
                str(rng.randint(-50, 5000)),
                f"{rng.randint(1, 99)}/{rng.randint(2, 9)}",
                f"{rng.randint(0, 99)}.{rng.randint(1, 9)}",
            ]
        )
        answer = gold if index % 2 == 0 else str(rng.randint(-50, 5000))
        style = index % 3
        text = (
            f"Adding them up gives \\boxed{{{answer}}}." if style == 0
            else f"So 3 + 4 = 7 and then...\n#### {answer}" if style == 1
            else f"The answer is {answer}."
        )  # fmt: skip
        completions.append(text)
        golds.append(gold)
    return completions, golds


def rate(verifier: MathVerifier, completions: list[str], golds: list[str]) -> float:
    verifier.warm_up()  # start the workers outside the timing
    begin = time.perf_counter()
    results = verifier.verify_many(completions, golds)
    seconds = time.perf_counter() - begin
    expected_ok = sum(1 for index in range(len(completions)) if index % 2 == 0)
    passed = sum(result.passed for result in results)
    assert passed >= expected_ok, f"only {passed} of {expected_ok} right answers passed"
    return len(completions) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    completions, golds = make_cases(args.count)
    fast = rate(MathVerifier(workers=args.workers), completions, golds)
    print(f"math verify, fast path on (default): {fast:,.0f} verifications/s ({args.count} easy numeric answers)")
    count = min(args.count, 1000)
    slow = rate(MathVerifier(workers=args.workers, fast_path=False), completions[:count], golds[:count])
    print(f"math verify, all via math-verify workers ({args.workers}): {slow:,.0f} verifications/s ({count} answers)")


if __name__ == "__main__":
    main()
