"""`posttrain verify math|code ...`: run a verifier from the command line, one JSON object per verification.

    posttrain verify math --pred TEXT --gold TEXT
    posttrain verify code --allow-code-execution --solution FILE --tests FILE --entry-point NAME
    posttrain verify math --jsonl FILE          # lines: {"pred": ..., "gold": ...}
    posttrain verify code --allow-code-execution --jsonl FILE   # lines: {"solution", "tests", "entry_point"}

Each verification prints ``{"score": ..., "status": "ok"|"wrong"|"error", "reason": ...}`` (batch mode: one
line per input line, in order, verified in parallel; an input line's "id" is echoed back). For code, a tests
file ending in .json holds a list of {"input", "output"} cases (a stdin/stdout task); otherwise it is Python
source with asserts, typically `def check(candidate): ...`. `verify code` runs the given program (in the
bubblewrap sandbox) only with `--allow-code-execution`, the same explicit opt-in as the `code` reward's
`allow_code_execution: true`.

Exit status: 0 if every verification passed, 1 if any did not (wrong or error), 2 on bad usage.
The lead wires `main` into the `posttrain` console script; `python -m posttrain.verifiers.cli` also works.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from posttrain.verifiers.code_tests import CodeCase, CodeVerifier
from posttrain.verifiers.math_answer import DEFAULT_EXTRACTORS, EXTRACTORS, MathVerifier
from posttrain.verifiers.result import VerificationResult, error
from posttrain.verifiers.sandbox import SandboxLimits


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posttrain verify", description="Check answers with a verifier.")
    kinds = parser.add_subparsers(dest="kind", required=True)

    math = kinds.add_parser("math", help="compare a math answer with the gold answer")
    math.add_argument("--pred", help="the model's answer or full completion")
    math.add_argument("--gold", help="the gold answer")
    math.add_argument("--jsonl", type=Path, help='batch: file of {"pred", "gold"} lines ("-" for stdin)')
    math.add_argument(
        "--extractor",
        action="append",
        choices=EXTRACTORS,
        help=f"final-answer extractor, repeatable, in order (default: {' '.join(DEFAULT_EXTRACTORS)})",
    )
    math.add_argument("--timeout", type=float, default=2.0, help="seconds per verification (default 2)")
    math.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")

    code = kinds.add_parser("code", help="run a solution against tests in the sandbox")
    code.add_argument(
        "--allow-code-execution",
        action="store_true",
        help="required: run the solution (model-written code) in the bubblewrap sandbox",
    )
    code.add_argument("--solution", type=Path, help="Python file with the solution")
    code.add_argument("--tests", type=Path, help="Python test file (asserts / check), or .json stdin/stdout cases")
    code.add_argument("--entry-point", help="name of the function the tests' check(candidate) receives")
    code.add_argument("--jsonl", type=Path, help='batch: file of {"solution", "tests", "entry_point"} lines')
    code.add_argument("--timeout", type=float, default=5.0, help="seconds per run (default 5)")
    code.add_argument("--memory-mb", type=int, default=512, help="address-space limit per process (default 512)")
    code.add_argument("--workers", type=int, default=4, help="sandboxes in parallel (default 4)")
    return parser


def _read_lines(path: Path) -> list[str]:
    text = sys.stdin.read() if str(path) == "-" else path.read_text()
    return [line for line in text.splitlines() if line.strip()]


def _parse_batch(lines: Sequence[str], keys: Sequence[str]) -> list[dict[str, Any] | VerificationResult]:
    """Each line as a dict, or an error result saying what is wrong with it."""
    parsed: list[dict[str, Any] | VerificationResult] = []
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            parsed.append(error(f"line {number}: invalid JSON ({exc.msg})"))
            continue
        missing = [key for key in keys if not isinstance(row, dict) or key not in row]
        parsed.append(error(f"line {number}: missing {', '.join(missing)}") if missing else row)
    return parsed


def _emit(results: Sequence[VerificationResult], rows: Sequence[Any], out: TextIO) -> int:
    for result, row in zip(results, rows):
        record: dict[str, Any] = result.to_dict()
        if isinstance(row, dict) and "id" in row:
            record = {"id": row["id"], **record}
        out.write(json.dumps(record) + "\n")
    out.flush()
    return 0 if all(result.passed for result in results) else 1


def _run_batch(rows: list[dict[str, Any] | VerificationResult], verify_many: Any, out: TextIO) -> int:
    todo = [row for row in rows if isinstance(row, dict)]
    done = iter(verify_many(todo))
    results = [row if isinstance(row, VerificationResult) else next(done) for row in rows]
    return _emit(results, rows, out)


def _math(args: argparse.Namespace, parser: argparse.ArgumentParser, out: TextIO) -> int:
    verifier = MathVerifier(
        extractors=args.extractor or DEFAULT_EXTRACTORS, timeout_s=args.timeout, workers=args.workers
    )
    if args.jsonl is not None:
        rows = _parse_batch(_read_lines(args.jsonl), ("pred", "gold"))
        return _run_batch(
            rows,
            lambda todo: verifier.verify_many([str(r["pred"]) for r in todo], [str(r["gold"]) for r in todo]),
            out,
        )
    if args.pred is None or args.gold is None:
        parser.error("verify math needs --pred and --gold, or --jsonl")
    return _emit([verifier(args.pred, args.gold)], [None], out)


def _load_tests(path: Path) -> Any:
    text = path.read_text()
    return json.loads(text) if path.suffix == ".json" else text


def _code_limits(args: argparse.Namespace) -> SandboxLimits:
    return SandboxLimits(timeout_s=args.timeout, cpu_s=max(1, int(args.timeout + 0.999)), memory_mb=args.memory_mb)


def _code(args: argparse.Namespace, parser: argparse.ArgumentParser, out: TextIO) -> int:
    if not args.allow_code_execution:
        parser.error(
            "verify code executes the given program; pass --allow-code-execution to allow it (it runs in a "
            "bubblewrap sandbox with no network), as the code reward needs `allow_code_execution: true`"
        )
    verifier = CodeVerifier(limits=_code_limits(args))
    if args.jsonl is not None:
        rows = _parse_batch(_read_lines(args.jsonl), ("solution", "tests"))
        cases = lambda todo: [CodeCase(r["solution"], r["tests"], r.get("entry_point")) for r in todo]  # noqa: E731
        return _run_batch(rows, lambda todo: verifier.verify_many(cases(todo), max_workers=args.workers), out)
    if args.solution is None or args.tests is None:
        parser.error("verify code needs --solution and --tests (and --entry-point for check()), or --jsonl")
    result = verifier(args.solution.read_text(), _load_tests(args.tests), args.entry_point)
    return _emit([result], [None], out)


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    """Run `posttrain verify` with `argv` (the arguments after `verify`); return the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    stream = out or sys.stdout
    try:
        return _math(args, parser, stream) if args.kind == "math" else _code(args, parser, stream)
    except SystemExit as exit_:  # parser.error inside a command
        return int(exit_.code or 0)
    except (OSError, ValueError) as exc:  # unreadable files, bad arguments
        print(f"posttrain verify: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
