"""The ``posttrain`` command: run, validate, eval, report, export, verify.

Errors a user can fix (a bad recipe, a missing file, a failed gate) are printed as one or two plain lines;
``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Any, Callable


def handle_errors(action: Callable[[], int], debug: bool) -> int:
    """Runs ``action``; known user errors become a short message and exit code 2."""
    from posttrain.errors import PosttrainError

    known = (PosttrainError, FileNotFoundError, PermissionError)
    try:
        return action()
    except known as err:
        if debug:
            traceback.print_exc()
        from posttrain.distributed import rank_prefix

        print(f"{rank_prefix()}error: {err}", file=sys.stderr)
        return 2


def _validate(args: argparse.Namespace) -> int:
    from posttrain.data_file_checks import check_data_files
    from posttrain.errors import PosttrainError, RecipeError
    from posttrain.model_checks import check_lora_modules
    from posttrain.recipe import load_recipe

    failed = []
    for path in args.recipes:  # every file is checked, and every broken one reported
        try:
            loaded = load_recipe(path, args.overrides)
            problems = check_data_files(loaded) + check_lora_modules(loaded)
            if problems:
                raise RecipeError(f"{path}: {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))
        except (PosttrainError, FileNotFoundError, PermissionError) as err:
            if len(args.recipes) == 1:
                raise
            failed.append(path)
            print(f"error: {err}", file=sys.stderr)
            continue
        stages = ", ".join(f"{s.name} ({s.kind})" for s in loaded.recipe.stages)
        print(f"{path}: ok — {len(loaded.recipe.stages)} stages: {stages}")
    if failed:
        raise RecipeError(f"{len(failed)} of {len(args.recipes)} recipes failed: {', '.join(failed)}")
    return 0


def checkpoint_argument(name: str) -> str:
    """A model named on the command line: ``builtin:...``, a hub id (``org/name``), or a local checkpoint or
    stage folder, which must exist (rather than be looked up on the hub as a repository name)."""
    from pathlib import Path

    from posttrain.errors import CheckpointError
    from posttrain.models.export import resolve_checkpoint

    path = Path(name).expanduser()
    if name.startswith("builtin:"):
        return name
    if path.exists():
        return str(resolve_checkpoint(path))
    parts = path.parts
    hub_id = not path.is_absolute() and len(parts) <= 2 and not name.startswith((".", "~")) and not (
        len(parts) == 2 and Path(parts[0]).is_dir()
    )
    if not hub_id:
        raise CheckpointError(f"no checkpoint at {name}")
    return name


def _eval_config(args: argparse.Namespace) -> Any:
    """The evaluation the command line asks for: lm-eval tasks (``--lm-eval-tasks``) or a built-in kind on ``--data``."""
    from pydantic import ValidationError

    from posttrain.config.common import DataSpec
    from posttrain.config.evaluation import EvalConfig
    from posttrain.errors import RecipeError

    if args.lm_eval_tasks:
        if args.data:
            raise RecipeError("--lm-eval-tasks and --data: lm-eval tasks read their own data; give one of them")
        tasks = [t.strip() for t in args.lm_eval_tasks.split(",") if t.strip()]
        fields = dict(tasks=tasks, task_paths=args.task_path, num_fewshot=args.num_fewshot, limit=args.limit,
                      apply_chat_template=args.chat_template, batch_size=args.batch_size)
        try:
            return EvalConfig(name="lm_eval", kind="lm_eval", **fields)
        except ValidationError as err:  # an unknown task or the missing extra, as one line
            raise RecipeError("; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())) from None
    if not args.data:
        raise RecipeError("posttrain eval needs --data (for --kind) or --lm-eval-tasks")
    spec = DataSpec(source=args.data, split=args.split, count=args.count)
    return EvalConfig(name=args.kind, kind=args.kind, data=spec, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)


def _eval(args: argparse.Namespace) -> int:
    import json

    from posttrain.config.common import ModelSpec
    from posttrain.eval.evaluators import evaluator
    from posttrain.eval.preference import evaluation_rows
    from posttrain.models.checkpoint import load_model_and_tokenizer
    from posttrain.run import quiet_libraries
    from pathlib import Path

    config = _eval_config(args)  # before the model loads: a bad task name costs seconds, not a load
    quiet_libraries()
    model, tokenizer = load_model_and_tokenizer(ModelSpec(name_or_path=checkpoint_argument(args.checkpoint)))
    result = evaluator(config.kind)(model, tokenizer, evaluation_rows(config, Path.cwd(), args.seed), config)
    print(json.dumps(dict(result)))
    if getattr(result, "provenance", None):
        print(json.dumps({"provenance": result.provenance}))
    return 0


def _report(args: argparse.Namespace) -> int:
    from posttrain.report import write_report

    html_path, markdown_path = write_report(args.run_dir)
    print(f"wrote {html_path} and {markdown_path}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from posttrain.run import quiet_libraries

    quiet_libraries()
    from posttrain.models.export import export_checkpoint, prepare_for_generation, push_to_hub

    destination, how = export_checkpoint(args.checkpoint, args.destination, base=args.base, force=args.force)
    print(f"{how} {args.checkpoint} -> {destination}")
    for change in prepare_for_generation(destination):
        print(f"  {change}")
    if args.push:
        push_to_hub(destination, args.push, private=args.private)
        print(f"pushed {destination} to the hub repository {args.push}")
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

    evaluate = sub.add_parser("eval", help="evaluate a checkpoint on a dataset or on lm-eval tasks")
    evaluate.add_argument("checkpoint", help="checkpoint folder (HF format) or builtin:tiny")
    evaluate.add_argument("--data", help="data source, e.g. builtin:arithmetic or a .jsonl file")
    evaluate.add_argument("--kind", default="exact_match", choices=["exact_match", "perplexity"])
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--count", type=int, default=None)
    evaluate.add_argument("--max-new-tokens", type=int, default=16)
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--seed", type=int, default=0)
    harness = evaluate.add_argument_group("lm-evaluation-harness (needs the lm_eval extra)")
    harness.add_argument("--lm-eval-tasks", metavar="TASK,...", help="lm-eval tasks instead of --data, e.g. posttrain_arithmetic,gsm8k")
    harness.add_argument("--task-path", action="append", default=[], metavar="DIR", help="a folder of local lm-eval YAML tasks")
    harness.add_argument("--num-fewshot", type=int, default=None)
    harness.add_argument("--limit", type=float, default=None, help="examples per task (below 1: a share)")
    harness.add_argument("--chat-template", action=argparse.BooleanOptionalAction, default=None,
                         help="render prompts with the chat template (default: when the tokenizer has one)")

    report = sub.add_parser(
        "report", help="write report.html and report.md for a run directory",
        description="Write RUN_DIR/report.html (self-contained: plots embedded, no links) and RUN_DIR/report.md "
        "with the recipe, the evaluation table, training curves, timings and sample generations per stage.",
    )
    report.add_argument("run_dir", help="a run directory, e.g. runs/quickstart")

    export = sub.add_parser(
        "export", help="write a checkpoint as a plain HF-format folder (merging LoRA), optionally push it",
        description="Copy a checkpoint (a checkpoint folder or a stage folder) to DESTINATION as a plain HF-format "
        "model; a LoRA adapter saved with `lora.merge: false` is merged into its base model first.",
    )
    export.add_argument("checkpoint", help="e.g. runs/quickstart/stages/sft (or its checkpoint/ folder)")
    export.add_argument("destination", help="folder to write the model to")
    export.add_argument("--base", help="base model of a LoRA adapter (default: the checkpoint its stage started from)")
    export.add_argument("--force", action="store_true", help="replace a non-empty destination")
    export.add_argument("--push", metavar="REPO_ID", help="also upload to this hub repository (needs network and a token)")
    export.add_argument("--private", action="store_true", help="create the hub repository as private")

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
    if args.command == "report":
        return handle_errors(lambda: _report(args), args.debug)
    if args.command == "export":
        return handle_errors(lambda: _export(args), args.debug)
    return 2


if __name__ == "__main__":
    sys.exit(main())
