"""Running a recipe on several processes: the accelerator, DeepSpeed ZeRO, and cross-process statistics.

Launch with ``accelerate launch [--config_file recipes/accelerate/{ddp,zero2,zero3}.yaml] -m posttrain.run
RECIPE`` (or ``torchrun``). `make_accelerator` reads what the launcher set:

- **DDP** (no DeepSpeed in the config): Accelerate's own data-parallel path. On a machine without a GPU,
  Accelerate only sees the other processes when asked for its CPU mode (otherwise every process believes
  it is rank 0 of 1), so with ``WORLD_SIZE > 1`` and no GPU the accelerator is created with ``cpu=True``
  (gloo), the same as ``ACCELERATE_USE_CPU=true``.
- **ZeRO-2 / ZeRO-3** (``ACCELERATE_USE_DEEPSPEED=true`` and ``ACCELERATE_DEEPSPEED_ZERO_STAGE``, which
  ``accelerate launch --config_file`` sets from a DeepSpeed config): the project initialises the DeepSpeed
  engine itself (`ZeroAccelerator`), on GPUs and on CPUs alike. Accelerate's DeepSpeed integration does not
  run on a CPU (it drops DeepSpeed, or sees a single process), and one code path that the CPU tests
  exercise is worth more than a second one only a GPU cluster would. Accelerate still provides the process
  group, ranks, device and collectives.

The training loops call the accelerator as they would Accelerate's (``prepare``, ``backward``, ``no_sync``,
``unwrap_model``, ``reduce``); what differs under ZeRO goes through three helpers here: `clip_gradients`
(gradients live in DeepSpeed's partitions, not in ``param.grad``), `gathered_parameters` (ZeRO-3 parameters
are shards; generation and saving need them whole) and `sum_over_processes` / `mean_metrics_over_processes`.
"""

from __future__ import annotations

import math
import os
import socket
from contextlib import contextmanager
from typing import Any, Iterator

import torch

TRUE = ("1", "true", "yes")


def launched_world_size() -> int:
    """Processes the launcher started (``WORLD_SIZE``; 1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def zero_stage_from_environment() -> int | None:
    """The ZeRO stage ``accelerate launch`` asked for, or None when it asked for no DeepSpeed."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() not in TRUE:
        return None
    stage = int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"))
    if stage not in (1, 2, 3):
        raise ValueError(f"ACCELERATE_DEEPSPEED_ZERO_STAGE={stage}: posttrain supports ZeRO stages 1, 2 and 3")
    return stage


def make_accelerator(zero_stage: int | None | str = "auto") -> Any:
    """The accelerator for this launch: Accelerate's, wrapped in `ZeroAccelerator` for ZeRO stages.

    Args:
        zero_stage: ``"auto"`` reads the launcher's environment; None forces DDP (or one process); 1, 2 or
            3 forces that ZeRO stage (tests use this to run several strategies in one launch).
    """
    from accelerate import Accelerator

    stage = zero_stage_from_environment() if zero_stage == "auto" else zero_stage
    on_cpu = not torch.cuda.is_available()
    cpu = on_cpu and launched_world_size() > 1
    accelerator = Accelerator(cpu=True) if cpu else Accelerator()
    if launched_world_size() > 1 and accelerator.num_processes != launched_world_size():
        raise RuntimeError(
            f"the launcher started {launched_world_size()} processes but Accelerate sees "
            f"{accelerator.num_processes}; on a CPU machine set ACCELERATE_USE_CPU=true"
        )
    if stage is None:
        return accelerator
    return ZeroAccelerator(accelerator, stage)


def offload_devices_from_environment() -> dict[str, str]:
    """Optimizer/parameter offload devices from the accelerate DeepSpeed config (``none`` = keep on device)."""
    return {
        "optimizer": os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "none"),
        "param": os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "none"),
    }


def deepspeed_config(stage: int, offload: dict[str, str] | None = None) -> dict[str, Any]:
    """The DeepSpeed config of a ZeRO stage, for loops that do their own accumulation and precision.

    The loops normalise each micro-batch loss by the whole step's token count, so DeepSpeed accumulates
    nothing itself (``gradient_accumulation_steps: 1``; micro-batch boundaries are set per backward). Mixed
    precision is torch autocast on fp32 weights (``train.precision``), the same as without DeepSpeed, so
    DeepSpeed's own fp16/bf16 modes stay off. Clipping is set per step by `clip_gradients`.
    """
    offload = offload or {"optimizer": "none", "param": "none"}
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": False,
        "contiguous_gradients": True,
        "stage3_gather_16bit_weights_on_model_save": True,
    }
    if offload.get("optimizer", "none") != "none":
        zero["offload_optimizer"] = {"device": offload["optimizer"]}
    if stage == 3 and offload.get("param", "none") != "none":
        zero["offload_param"] = {"device": offload["param"]}
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 0.0,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "fp16": {"enabled": False},
        "bf16": {"enabled": False},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


class ZeroAccelerator:
    """Accelerate's accelerator with the model and optimizer handed to a DeepSpeed ZeRO engine.

    Everything not defined here (``device``, ``process_index``, ``is_main_process``, ``reduce``,
    ``wait_for_everyone``, ...) is the wrapped accelerator's. One engine trains at a time: the latest
    ``prepare``'s.

    Args:
        accelerator: an Accelerate ``Accelerator`` whose process group spans the launch.
        zero_stage: 1, 2 or 3.
        offload: optimizer/parameter offload devices (default: from the launcher's environment).
    """

    def __init__(self, accelerator: Any, zero_stage: int, offload: dict[str, str] | None = None):
        self._accelerator = accelerator
        self.zero_stage = zero_stage
        self.offload = offload if offload is not None else offload_devices_from_environment()
        self.engine: Any = None
        self._boundary = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._accelerator, name)

    def prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Any, "_EngineOptimizer"]:
        """Wraps ``model`` and ``optimizer`` (a torch optimizer over the model's parameters) in a ZeRO engine."""
        import deepspeed

        _ensure_process_group(self.device)
        if self.device.type == "cpu":
            _skip_shared_memory_op()
        self.engine, *_ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=deepspeed_config(self.zero_stage, self.offload),
            dist_init_required=False,
        )
        return self.engine, _EngineOptimizer(self.engine)

    @contextmanager
    def no_sync(self, model: Any) -> Iterator[None]:
        """The next ``backward`` accumulates without finishing a step (DDP's no_sync, ZeRO's boundary)."""
        self._boundary = False
        yield

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.set_gradient_accumulation_boundary(self._boundary)
        self.engine.backward(loss)
        self._boundary = True

    def clip_grad_norm_(self, parameters: Any, max_norm: float | None) -> torch.Tensor:
        """The global gradient norm before clipping; DeepSpeed clips to ``max_norm`` in the next step."""
        optimizer = self.engine.optimizer
        optimizer.clip_grad = float(max_norm) if max_norm is not None else 0.0
        if hasattr(optimizer, "scaled_global_norm"):  # ZeRO-1/2
            norm = optimizer.scaled_global_norm()
        else:  # ZeRO-3
            from deepspeed.runtime.utils import combine_grad_norm_groups

            norm = combine_grad_norm_groups(optimizer._get_norm_groups())
        return torch.as_tensor(norm).float()

    def unwrap_model(self, model: Any, **_: Any) -> Any:
        return getattr(model, "module", model)


class _EngineOptimizer:
    """What the loops use of an optimizer (``param_groups``, ``step``, ``zero_grad``) on a ZeRO engine."""

    def __init__(self, engine: Any):
        self.engine = engine

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.engine.optimizer.param_groups

    def step(self) -> None:
        self.engine.step()  # also clears the gradients

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.engine.optimizer.zero_grad(set_to_none=set_to_none)


def _ensure_process_group(device: torch.device) -> None:
    """DeepSpeed needs a process group even for one process; Accelerate makes none then."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    for name, value in (("LOCAL_RANK", "0"), ("RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(name, value)  # DeepSpeed reads them
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def _skip_shared_memory_op() -> None:
    """On a CPU DeepSpeed compiles a C++ shared-memory all-reduce on first use (minutes, and a compiler on
    the machine); gloo's all-reduce does the same job, so the op is marked unavailable."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        deepspeed.ops.__compatible_ops__[builder.NAME] = False


def is_zero3(accelerator: Any) -> bool:
    return isinstance(accelerator, ZeroAccelerator) and accelerator.zero_stage == 3


@contextmanager
def gathered_parameters(accelerator: Any, training_continues: bool = True) -> Iterator[None]:
    """Under ZeRO-3, every parameter of the engine's model whole on every process for the duration
    (generation with the KV-cache sampler, saving); otherwise nothing. Every process must enter.

    ZeRO-3's forward hooks would otherwise re-partition each layer after its forward (and gather it again
    for the next token), so they are taken off while the parameters are gathered, and put back after
    when ``training_continues``. Saving at the end of a stage passes False: the main process may have
    changed the model (a LoRA merge), and hooks registered on a model that differs between processes
    number modules differently there, which DeepSpeed rejects in the next stage.
    """
    if not is_zero3(accelerator) or accelerator.engine is None:
        yield
        return
    import deepspeed

    engine = accelerator.engine
    offload = engine.optimizer.parameter_offload
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        offload._remove_module_hooks()
        try:
            yield
        finally:
            if training_continues:
                offload._register_deepspeed_module(offload.module)


def clip_gradients(accelerator: Any, model: torch.nn.Module, max_norm: float | None) -> float:
    """Clips the model's gradients to ``max_norm`` (None: no clipping); returns the norm before clipping."""
    if isinstance(accelerator, ZeroAccelerator):
        return float(accelerator.clip_grad_norm_(None, max_norm))
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    if max_norm is None:
        return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))
    return float(accelerator.clip_grad_norm_(params, max_norm))


def sum_over_processes(accelerator: Any, values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over every process (itself with one process)."""
    if accelerator.num_processes == 1:
        return values
    return accelerator.reduce(values.to(accelerator.device), reduction="sum")


def mean_metrics_over_processes(
    accelerator: Any, metrics: dict[str, float], summed: tuple[str, ...] = (), maxed: tuple[str, ...] = ()
) -> dict[str, float]:
    """Per-process metrics made global: the mean over processes (each process holds the same number of
    rows), except names in ``summed`` (totals), names starting with a prefix in ``maxed`` (e.g. times,
    largest gaps), and ``X/std`` next to an ``X/mean``: the pooled population standard deviation
    (exact when each process's statistics cover as many rows). Every process must call it with the same
    keys.
    """
    if accelerator.num_processes == 1 or not metrics:
        return metrics
    names = sorted(metrics)
    values = torch.tensor([float(metrics[n]) for n in names], dtype=torch.float64, device=accelerator.device)
    gathered = accelerator.gather(values[None]).reshape(accelerator.num_processes, len(names))
    out = {}
    for column, name in enumerate(names):
        column_values = gathered[:, column]
        finite = column_values[torch.isfinite(column_values)]
        mean_name = name.removesuffix("/std") + "/mean"
        if name in summed:
            out[name] = float(column_values.sum())
        elif name.endswith("/std") and mean_name in metrics:
            means = gathered[:, names.index(mean_name)]
            both = torch.isfinite(column_values) & torch.isfinite(means)
            if both.any():
                second_moment = (column_values[both] ** 2 + means[both] ** 2).mean()
                out[name] = float((second_moment - means[both].mean() ** 2).clamp(min=0).sqrt())
            else:
                out[name] = math.nan
        elif maxed and name.startswith(maxed):
            out[name] = float(column_values.max())
        else:
            out[name] = float(finite.mean()) if finite.numel() else math.nan
    return out


def shutdown(*, synchronize: bool = False) -> None:
    """Destroys the process group, if any (gloo aborts at interpreter exit when it is left alive).

    ``synchronize`` first waits for every process (a finished run): a process that tore its gloo pairs
    down while another was still writing the run report aborted once on a CI machine ("terminate called
    without an active exception"). A failed run does not wait: the other processes may never arrive.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()


def rank_prefix() -> str:
    """``"[rank N] "`` when several processes run, else empty: error messages say which process failed."""
    return f"[rank {os.environ.get('RANK', '0')}] " if launched_world_size() > 1 else ""


__all__ = [
    "ZeroAccelerator", "clip_gradients", "deepspeed_config", "gathered_parameters", "is_zero3",
    "launched_world_size", "make_accelerator", "mean_metrics_over_processes", "rank_prefix",
    "shutdown", "sum_over_processes", "zero_stage_from_environment",
]
