"""How many intra-op threads torch uses in each training process.

torch's default is one thread per physical core in every process. Two cases make that slow on a CPU:
several processes on one machine (`accelerate launch` with N processes each take every core, N times
oversubscribed), and a machine already busy with other work. Measured on a 2-core AMD EPYC under load: SFT
on a 12.6M-parameter Llama ran at 30-130 tokens/s with the default threads and 700-1,100 with
`OMP_NUM_THREADS=1` (../shared/MEASURED.md). So, in order:

1. the recipe's `threads:` if set;
2. `OMP_NUM_THREADS` if set (torch already follows it);
3. one thread per process when several processes share the machine (`LOCAL_WORLD_SIZE` > 1);
4. otherwise torch's default.

A busy machine (1-minute load average at least its CPU count) only gets a warning that names the setting:
the thread count changes float32 reductions, so choosing it from the load would make the same command
with the same seed train a different model depending on what else runs (measured: the quickstart's SFT
held-out accuracy moved by tens of points between one and two threads, posttrain/data/world.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

logger = logging.getLogger(__name__)


def choose_threads(setting: int | None, env: Mapping[str, str], cpus: int, load: float | None) -> tuple[int | None, str]:
    """``(threads, why)``: the intra-op thread count to set (None: leave torch's) and the reason.

    >>> choose_threads(None, {"LOCAL_WORLD_SIZE": "2"}, cpus=2, load=0.1)
    (1, '2 processes on this machine: one thread each')
    """
    if setting is not None:
        return setting, "the recipe's `threads`"
    if env.get("OMP_NUM_THREADS"):
        return None, f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}"
    local = int(env.get("LOCAL_WORLD_SIZE") or 1)
    if local > 1:
        return 1, f"{local} processes on this machine: one thread each"
    if load is not None and load >= cpus:
        return None, f"torch's default; the machine is busy (load {load:.1f} on {cpus} CPUs): `threads: 1` may be faster"
    return None, "torch's default"


def configure_threads(setting: int | None) -> int:
    """Sets torch's intra-op threads for this process (see the module docstring); returns the count in use."""
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    threads, why = choose_threads(setting, os.environ, cpus, load)
    if threads is not None:
        torch.set_num_threads(threads)
    busy = load is not None and load >= cpus and torch.get_num_threads() > 1
    (logger.warning if busy else logger.info)("torch intra-op threads: %d (%s)", torch.get_num_threads(), why)
    return torch.get_num_threads()
