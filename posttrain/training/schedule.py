"""What each optimizer step sees, as pure functions of (seed, step): its learning rate and its rows.

Shared by the token-level loop (`posttrain.training.loop`) and the RL engine (`posttrain.rl.engine`), so a
run is reproducible and a resumed run continues on the rows it would have seen.
"""

from __future__ import annotations

import math
import random
from typing import Any


def lr_at(step: int, spec: Any, steps: int) -> float:
    """Learning rate at optimizer step ``step`` (0-based): linear warm-up, then the configured decay.

    ``spec`` has ``lr``, ``warmup_steps`` and ``schedule`` (`TrainSpec`, `RLTrainSpec`); cosine and linear
    decay end at 10% of the peak.
    """
    if step < spec.warmup_steps:
        return spec.lr * (step + 1) / spec.warmup_steps
    if spec.schedule == "constant":
        return spec.lr
    progress = (step - spec.warmup_steps) / max(1, steps - spec.warmup_steps)
    floor = 0.1
    if spec.schedule == "linear":
        return spec.lr * (1 - (1 - floor) * progress)
    return spec.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def row_order(num_rows: int, seed: int, epoch: int) -> list[int]:
    """The order rows are visited in one epoch: a pure function of (seed, epoch)."""
    order = list(range(num_rows))
    random.Random(f"{seed}/{epoch}").shuffle(order)
    return order


def step_rows(num_rows: int, step: int, global_batch: int, seed: int) -> list[int]:
    """Row indices of optimizer step ``step``: consecutive slices of per-epoch shuffles."""
    start = step * global_batch
    out = []
    while len(out) < global_batch:
        epoch, offset = divmod(start + len(out), num_rows)
        order = row_order(num_rows, seed, epoch)
        out += order[offset : offset + global_batch - len(out)]
    return out
