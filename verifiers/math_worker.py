"""Worker process for the math verifier: parses and compares answers with `math-verify`.

Run by `posttrain.verifiers.worker_pool.WorkerPool` as ``python -m posttrain.verifiers.math_worker``; never
imported by the host (importing `math_verify` takes about a second, so only workers pay it).

Inside the worker, math-verify's own `signal.alarm` timeouts work (this is the process's main thread) and
stop most slow comparisons early without losing the worker; the host's wall-clock kill is the backstop for
C code that holds the GIL and ignores the alarm.

Request: ``{"pred": str, "gold": str, "alarm_s": int}`` — `pred` and `gold` are already-extracted final
answers. Result: ``{"status": "ok"|"wrong"|"error", "reason": str}``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from posttrain.verifiers.worker_pool import serve, worker_setup


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def main(argv: list[str]) -> None:
    worker_setup(argv)
    import logging

    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    # math-verify logs a warning per timeout; the host reports outcomes itself.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    extraction = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]

    def parse_answer(answer: str, alarm_s: int) -> list[Any]:
        # The host has already cut out the final answer; boxing it makes math-verify parse exactly that text.
        return parse("\\boxed{" + answer + "}", extraction_config=extraction, parsing_timeout=alarm_s)

    @lru_cache(maxsize=4096)
    def parse_gold(gold: str, alarm_s: int) -> tuple[Any, ...]:
        # GRPO scores a group of completions against one gold answer: parse it once.
        return tuple(parse_answer(gold, alarm_s))

    def handle(request: dict[str, Any], report: Callable[[str], None]) -> dict[str, str]:
        pred, gold, alarm_s = request["pred"], request["gold"], int(request.get("alarm_s", 1))
        gold_parsed = parse_gold(gold, alarm_s)
        if not any(not isinstance(item, str) for item in gold_parsed):
            return {"status": "error", "reason": f"gold answer unparseable: {_short(gold)!r}"}
        report("gold_parsed")
        pred_parsed = parse_answer(pred, alarm_s)
        if not pred_parsed:
            return {"status": "wrong", "reason": f"answer unparseable: {_short(pred)!r}"}
        report("pred_parsed")
        if verify(list(gold_parsed), pred_parsed, timeout_seconds=alarm_s):
            return {"status": "ok", "reason": "equivalent"}
        return {"status": "wrong", "reason": f"not equivalent: {_short(pred)!r} vs gold {_short(gold)!r}"}

    # Warm math-verify's lazily built parsers before reporting ready, so the first real request is not the
    # one that pays ~0.1 s for it (and risks a timeout).
    parse_gold.__wrapped__("x = \\frac{1}{2}", 1)
    verify(parse_answer("0.5", 1), parse_answer("x=1/2", 1), timeout_seconds=1)
    serve(handle)


if __name__ == "__main__":
    main(sys.argv[1:])
