"""Entry point: ``python -m posttrain.run RECIPE [--set key=value ...]``.

Also what ``accelerate launch -m posttrain.run RECIPE`` and ``posttrain run RECIPE`` execute.
"""

from __future__ import annotations

import argparse
import sys


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="path to a recipe YAML file")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set stages.sft.train.lr=1e-4 (repeatable)",
    )
    parser.add_argument("--output-dir", help="run directory (default: the recipe's output_dir or runs/NAME)")


def quiet_libraries() -> None:
    """Silences per-file progress bars and start-up chatter of the libraries underneath."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # else DeepSpeed warns on import that it fell back
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def run(args: argparse.Namespace) -> int:
    """Validates the recipe, runs the pipeline and prints the evaluation table."""
    from posttrain.recipe import load_recipe

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    loaded = load_recipe(args.recipe, overrides)
    quiet_libraries()
    from posttrain.pipeline import Pipeline, format_table

    pipeline = Pipeline(loaded)
    table = pipeline.run()
    if pipeline.accelerator.is_main_process:
        if table:
            print("\nEvaluation per stage:\n" + format_table(table))
        print(f"\nRun directory: {pipeline.run_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from posttrain.cli import handle_errors

    parser = argparse.ArgumentParser(prog="python -m posttrain.run", description="Run a posttrain recipe.")
    add_run_arguments(parser)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_args(argv)
    return handle_errors(lambda: run(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
