"""Runs a recipe under several strategies in one multi-process launch (launch start-up is the slow part).

    accelerate launch --config_file recipes/accelerate/zero3.yaml tests/distributed/worker.py OUT RECIPE MODE...

MODE is ``auto`` (what the launcher's config asks for), ``ddp``, ``zero2`` or ``zero3``; each runs the
recipe into ``OUT/<mode>/`` (ZeRO modes with the ``--zero-set KEY=VALUE`` overrides). Before a stage saves its checkpoint, the model's logits on fixed tokens are
computed by the training processes (under ZeRO-3: through the sharded model) and the main process writes
them to ``OUT/<mode>/<stage>.logits.pt``, so a test can compare them with the saved checkpoint loaded in a
plain process. ``--check-zero-arithmetic`` first checks one ZeRO-2 and one ZeRO-3 step against plain torch. With ``--kill-rank R --kill-step S`` process R kills itself (SIGKILL) at optimizer step S
of the first stage: the launch must fail, not hang.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import torch

PROBE_TOKENS = [[5, 17, 33, 2, 9, 40, 11, 3]]
MODES = {"ddp": None, "zero2": 2, "zero3": 3, "auto": "auto"}


def record_logits_before_save(folder_of_run: dict[str, Path]) -> None:
    """Every stage's ``save`` first writes its model's logits on `PROBE_TOKENS` to ``folder_of_run["out"]``."""
    from posttrain.stages.base import Stage

    original = Stage.save

    def save(self, folder):
        model = self.context.accelerator.unwrap_model(self.model)
        with torch.no_grad():  # every process: under ZeRO-3 the forward gathers each layer's shards
            logits = model(input_ids=torch.tensor(PROBE_TOKENS), use_cache=False).logits
        if self.context.accelerator.is_main_process:
            torch.save(logits, folder_of_run["out"] / f"{self.config.name}.logits.pt")
        return original(self, folder)

    Stage.save = save


def check_zero_arithmetic(out: Path) -> None:
    """One SGD step (lr 1, so the update is the gradient) of a small model under ZeRO-2 and ZeRO-3: this
    process's rows in 2 accumulated micro-batches, clipped to a norm well below the gradient's, against
    the same step on the whole batch in plain torch. Writes ``OUT/zero_arithmetic.json``."""
    import copy
    import json
    from contextlib import nullcontext

    from posttrain.distributed import clip_gradients, gathered_parameters, make_accelerator

    results = {}
    for stage in (2, 3):
        accelerator = make_accelerator(stage)
        world, rank = accelerator.num_processes, accelerator.process_index
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
        reference = copy.deepcopy(model)
        inputs = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
        targets = torch.randn(8, 3, generator=torch.Generator().manual_seed(2))
        (((reference(inputs) - targets) ** 2).sum() / 8).backward()
        reference_norm = float(torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.05))
        with torch.no_grad():
            for parameter in reference.parameters():
                parameter -= parameter.grad
        engine, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=1.0))
        local = list(range(8))[rank::world]
        for index, rows in enumerate([local[: len(local) // 2], local[len(local) // 2 :]]):
            with accelerator.no_sync(engine) if index == 0 else nullcontext():
                loss = ((engine(inputs[rows]) - targets[rows]) ** 2).sum() * world / 8
            accelerator.backward(loss)
        norm = clip_gradients(accelerator, engine, 0.05)
        optimizer.step()
        with gathered_parameters(accelerator):
            trained = [parameter.detach().clone() for parameter in engine.module.parameters()]
        difference = max(float((a - b).abs().max()) for a, b in zip(trained, reference.parameters()))
        results[f"zero{stage}"] = {"norm": norm, "reference_norm": reference_norm, "max_parameter_difference": difference}
    if accelerator.is_main_process:
        (out / "zero_arithmetic.json").write_text(json.dumps(results))


def kill_at(rank: int, step: int) -> None:
    import posttrain.training.loop as loop

    original = loop.lr_at

    def lr_at(current, spec, steps):
        if current == step and int(os.environ.get("RANK", "0")) == rank:
            print(f"worker: rank {rank} kills itself at step {step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return original(current, spec, steps)

    loop.lr_at = lr_at


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("recipe")
    parser.add_argument("modes", nargs="+", choices=sorted(MODES))
    parser.add_argument("--zero-set", action="append", default=[], metavar="KEY=VALUE", help="overrides for ZeRO modes")
    parser.add_argument("--check-zero-arithmetic", action="store_true")
    parser.add_argument("--kill-rank", type=int)
    parser.add_argument("--kill-step", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from posttrain.distributed import make_accelerator, shutdown
    from posttrain.pipeline import Pipeline
    from posttrain.recipe import load_recipe
    from posttrain.run import quiet_libraries

    quiet_libraries()
    if args.kill_rank is not None:
        kill_at(args.kill_rank, args.kill_step)
    current: dict[str, Path] = {}
    record_logits_before_save(current)
    try:
        if args.check_zero_arithmetic:
            args.out.mkdir(parents=True, exist_ok=True)
            check_zero_arithmetic(args.out)
        for mode in args.modes:
            out = current["out"] = args.out / mode
            out.mkdir(parents=True, exist_ok=True)
            accelerator = make_accelerator(MODES[mode])
            zero = getattr(accelerator, "zero_stage", None) is not None
            loaded = load_recipe(args.recipe, [f"output_dir={out}", *(args.zero_set if zero else [])])
            kind = type(accelerator).__name__, getattr(accelerator, "zero_stage", None), accelerator.num_processes
            print(f"worker: mode {mode} rank {accelerator.process_index}: {kind}", flush=True)
            Pipeline(loaded, accelerator=accelerator).run()
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
