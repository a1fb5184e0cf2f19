"""The ``posttrain`` command: run, validate, eval, verify.

Errors a user can fix (a bad recipe, a missing file, a failed gate) are printed as one or two plain lines;
``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Callable


def handle_errors(action: Callable[[], int], debug: bool) -> int:
    """Runs ``action``; known user errors become a short message and exit code 2."""
    from posttrain.errors import PosttrainError

    known = (PosttrainError, FileNotFoundError, PermissionError)
    try:
        return action()
    except known as err:
        if debug:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return 2


def _validate(args: argparse.Namespace) -> int:
    from posttrain.recipe import load_recipe

    for path in args.recipes:
        loaded = load_recipe(path, args.overrides)
        stages = ", ".join(f"{s.name} ({s.kind})" for s in loaded.recipe.stages)
        print(f"{path}: ok — {len(loaded.recipe.stages)} stages: {stages}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import json

    from posttrain.config.common import DataSpec, ModelSpec
    from posttrain.config.evaluation import EvalConfig
    from posttrain.data.loading import load_dataset
    from posttrain.eval.evaluators import evaluator
    from posttrain.models.checkpoint import load_model_and_tokenizer
    from pathlib import Path

    model, tokenizer = load_model_and_tokenizer(ModelSpec(name_or_path=args.checkpoint))
    spec = DataSpec(source=args.data, split=args.split, count=args.count)
    config = EvalConfig(name=args.kind, kind=args.kind, data=spec, max_new_tokens=args.max_new_tokens)
    rows = load_dataset(spec, Path.cwd(), args.seed).rows
    print(json.dumps(evaluator(args.kind)(model, tokenizer, rows, config)))
    return 0


def _verify(argv: list[str]) -> int:
    from posttrain.verifiers.cli import main as verify_main

    return verify_main(argv)


def build_parser() -> argparse.ArgumentParser:
    from posttrain.run import add_run_arguments

    parser = argparse.ArgumentParser(prog="posttrain", description="LLM post-training driven by one recipe file.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    run_parser = sub.add_parser("run", help="run a recipe (reusing unchanged stages)")
    add_run_arguments(run_parser)

    validate = sub.add_parser("validate", help="check recipes without running them")
    validate.add_argument("recipes", nargs="+", help="recipe YAML files")
    validate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    evaluate = sub.add_parser("eval", help="evaluate a checkpoint on a dataset")
    evaluate.add_argument("checkpoint", help="checkpoint folder (HF format) or builtin:tiny")
    evaluate.add_argument("--data", required=True, help="data source, e.g. builtin:arithmetic or a .jsonl file")
    evaluate.add_argument("--kind", default="exact_match", choices=["exact_match", "perplexity"])
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--count", type=int, default=None)
    evaluate.add_argument("--max-new-tokens", type=int, default=16)
    evaluate.add_argument("--seed", type=int, default=0)

    sub.add_parser("verify", help="check answers: posttrain verify math|code ... (see posttrain verify --help)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]  # accepted anywhere on the line
    if argv and argv[0] == "verify":
        return handle_errors(lambda: _verify(argv[1:]), debug)
    args = build_parser().parse_args(argv)
    args.debug = debug
    if args.command == "run":
        from posttrain.run import run

        return handle_errors(lambda: run(args), args.debug)
    if args.command == "validate":
        return handle_errors(lambda: _validate(args), args.debug)
    if args.command == "eval":
        return handle_errors(lambda: _eval(args), args.debug)
    return 2


if __name__ == "__main__":
    sys.exit(main())
