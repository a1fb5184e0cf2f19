"""What the `constitutional` and `ai_judge` stages share: role models, sampling settings, writing outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import torch

from posttrain.config.rl import GenerationSpec
from posttrain.config.rlaif import RoleSettings
from posttrain.data.stage_outputs import stage_output_path
from posttrain.errors import RecipeError
from posttrain.files import write_lines_atomic
from posttrain.data.sources import resolve_data_path
from posttrain.rl.sampler import SamplingSettings
from posttrain.data.constitution import Constitution, load_constitution
from posttrain.rlaif.language_model import RoleModel, load_role_model


def sampling_settings(spec: GenerationSpec) -> SamplingSettings:
    return SamplingSettings(spec.max_new_tokens, spec.temperature, spec.top_p, spec.top_k)


def role_backends(context: Any, **specs: GenerationSpec) -> dict[str, str]:
    """Each generation role's resolved ``backend`` (`posttrain.rl.rollout_backend.resolve_backend`), by the
    role's recipe key; called before any model loads, so a backend that cannot run fails first."""
    from posttrain.rl.rollout_backend import checkpoint_architectures, resolve_backend

    architectures = checkpoint_architectures(context.input_checkpoint or context.model_spec.name_or_path)
    for key, spec in specs.items():
        if spec.vllm.mode == "server":  # a server holds one model, pushed from a trained policy
            raise RecipeError(
                f"stage {context.config.name!r}: {key}.vllm.mode is server, which only grpo/ppo rollouts use; "
                "a generation role uses vLLM in the training process (mode: colocate) or backend: native"
            )
    return {
        key: resolve_backend(spec.backend, f"stage {context.config.name!r}: {key}.backend", architectures)
        for key, spec in specs.items()
    }


def stage_constitution(name: str, recipe_dir: Path) -> Constitution:
    """The stage's constitution file, resolved like a data file (recipe folder first, then working dir)."""
    return load_constitution(resolve_data_path(name, recipe_dir) or Path(name))


def role_models(context: Any, policy: Any, tokenizer: Any, reference: str, settings: RoleSettings) -> tuple[RoleModel, RoleModel]:
    """``(policy role, other role)``: the stage's model, and the critic/judge it names (maybe the same)."""
    device = str(context.accelerator.device)
    own = RoleModel(policy, tokenizer, settings.batch_size, settings.max_prompt_tokens)
    model, role_tokenizer = load_role_model(reference, policy, tokenizer, context.stage_dir.parent, context.model_spec, device)
    if model is policy:
        return own, own
    return own, RoleModel(model, role_tokenizer, settings.batch_size, settings.max_prompt_tokens)


def stage_inputs(stage: Any, constitution: str, role: str) -> tuple[Constitution, Any, RoleModel, RoleModel]:
    """What an RLAIF generation stage starts from: its constitution, its prompts (`load_prompts`), the policy
    and the model in ``role`` (critic or judge: the policy itself, a stage's checkpoint, or a path)."""
    from posttrain.rl.prompts import load_prompts

    ctx, config = stage.context, stage.config
    prompts = load_prompts(config.data, ctx.recipe_dir, ctx.seed)
    policy, other = role_models(ctx, stage.model, stage.tokenizer, role, config.roles)
    return stage_constitution(constitution, ctx.recipe_dir), prompts, policy, other


def generator_for(context: Any, salt: int = 0) -> torch.Generator:
    return torch.Generator(device=str(context.accelerator.device)).manual_seed(context.seed * 1000 + salt)


def write_output(stage_dir: Path, output: str, rows: Iterable[dict[str, Any]], accelerator: Any) -> Path:
    """Writes one output of a stage as JSONL (to a temporary file, renamed when complete), on the main process
    only; every process generated the same rows (same seed), and the pipeline's barrier after the stage
    makes the file visible to all before the next stage reads it."""
    path = stage_output_path(stage_dir.parent, stage_dir.name, output)
    if not accelerator.is_main_process:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    write_lines_atomic(path, (json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path
