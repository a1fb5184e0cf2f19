"""Entry point: ``python -m posttrain.run RECIPE [--set key=value ...]``.

Also what ``accelerate launch -m posttrain.run RECIPE`` and ``posttrain run RECIPE`` execute.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from posttrain.pipeline import Pipeline


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="path to a recipe YAML file")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set stages.sft.train.lr=1e-4 (repeatable)",
    )
    parser.add_argument("--output-dir", help="run directory (default: the recipe's output_dir or runs/NAME)")
    parser.add_argument(
        "--dry-run", action="store_true",
        help="print the resolved stages, which would be reused, and steps and tokens per stage; train nothing",
    )
    parser.add_argument(
        "--resume", action="store_true",
        help="continue the first unfinished stage from its newest saved training state (`train.save_every`); "
        "refused when the stage's config or data changed since",
    )
    parser.add_argument(
        "--restart-changed", action="store_true",
        help="with --resume: start a stage whose saved training state was made with other settings afresh",
    )


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
    """Validates the recipe, runs the pipeline, prints the evaluation table and writes the run report.

    The report is written even when a stage or a gate fails, so the finished stages can be looked at.
    """
    from posttrain.recipe import load_recipe

    began = time.time()
    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    loaded = load_recipe(args.recipe, overrides)
    if getattr(args, "dry_run", False):
        from posttrain.plan import format_plan, plan_run

        print(format_plan(loaded, plan_run(loaded)))
        return 0
    from posttrain.training.trackers import check_trackers

    check_trackers(loaded.recipe.logging)
    quiet_libraries()
    from posttrain.training.threads import configure_threads

    configure_threads(loaded.recipe.threads)
    from posttrain.distributed import shutdown
    from posttrain.pipeline import Pipeline
    from posttrain.report.table import format_table

    pipeline = Pipeline(
        loaded, resume=getattr(args, "resume", False), restart_changed=getattr(args, "restart_changed", False)
    )
    finished = False
    try:
        try:
            table = pipeline.run()
        except BaseException:
            write_run_report(pipeline)  # a failed stage or gate: report what finished
            raise
        if pipeline.accelerator.is_main_process:
            if table:
                print("\nEvaluation per stage:\n" + format_table(table))
            print(f"\n{pipeline.stage_times()}; whole run {time.time() - began:.0f}s")
            print(f"Run directory: {pipeline.run_dir}")
        write_run_report(pipeline)
        finished = True
    finally:
        # several processes: gloo aborts at exit when its process group is left alive; a finished run
        # also waits until the main process has written its report, so all tear down together
        shutdown(synchronize=finished)
    return 0


def write_run_report(pipeline: "Pipeline") -> None:
    """Writes the run report when the recipe asks for one (on the main process only)."""
    if not (pipeline.recipe.logging.report and pipeline.accelerator.is_main_process):
        return
    if not (pipeline.run_dir / "recipe.yaml").is_file():
        return  # failed before anything was written
    from posttrain.report import write_report

    html_path, markdown_path = write_report(pipeline.run_dir)
    print(f"Report: {html_path} ({markdown_path.name} beside it)")


def main(argv: list[str] | None = None) -> int:
    from posttrain.cli import handle_errors

    parser = argparse.ArgumentParser(prog="python -m posttrain.run", description="Run a posttrain recipe.")
    add_run_arguments(parser)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_args(argv)
    return handle_errors(lambda: run(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
