"""Helpers for the RL tests: an RL stage of the micro model built from a config dict, without a pipeline."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from posttrain.config.common import ModelSpec
from posttrain.config.stages import stage_config_class
from posttrain.stages import StageContext, stage_class
from posttrain.training.metrics import MetricsWriter

# a reward that only needs the completion: 0 for an empty one, falling to -1 at 40 characters; the policy
# raises it by ending its answers sooner
SHORTER_IS_BETTER = {"source": "length_penalty", "args": {"target_length": 0, "max_length": 40}, "allow_truncated": True}


def rl_config(kind: str, **fields: Any):
    """A `ppo`/`grpo` config on built-in level-1 arithmetic prompts; ``fields`` override the defaults."""
    raw: dict[str, Any] = {
        "name": kind,
        "kind": kind,
        "data": {"source": "builtin:arithmetic", "count": 32, "levels": [1]},
        "reward": [SHORTER_IS_BETTER],
        "generation": {"max_new_tokens": 6},
        "train": {"steps": 1, "prompts_per_step": 4, "lr": 1.0e-2},
    }
    if kind == "grpo":
        raw["group_size"] = 4
    for key, value in fields.items():
        raw[key] = {**raw[key], **value} if isinstance(raw.get(key), dict) and isinstance(value, dict) else value
    return stage_config_class(kind).model_validate(raw)


@pytest.fixture
def make_stage(tmp_path: Path, accelerator) -> Callable[..., Any]:
    """``make_stage(config, input_checkpoint=None)`` -> the stage, its metrics writer at ``stage.metrics``."""

    def build(config, input_checkpoint: Path | None = None):
        writer = MetricsWriter(None, config.name, stream=io.StringIO())
        context = StageContext(
            config=config,
            model_spec=ModelSpec(name_or_path="builtin:micro"),
            input_checkpoint=input_checkpoint,
            stage_dir=tmp_path / "stages" / config.name,
            recipe_dir=tmp_path,
            seed=0,
            accelerator=accelerator,
            metrics=writer,
        )
        stage = stage_class(config.kind)(context)
        stage.metrics = writer
        return stage

    return build


def end_turns_early(model, tokenizer, bias: float = 4.0) -> None:
    """Biases the policy's (untied) LM head towards the end token, so that turns end and episodes go on
    (a random model rarely ends a turn within a few tokens). The default 4.0 gives the micro model's end
    token about a 1-in-9 chance per step (8.5% of 20-token turns never end); 30 ends every turn at its first token."""
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    weight = model.lm_head.weight.detach().clone()
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=True)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.zero_()
        head.bias[end] = bias
    model.config.tie_word_embeddings = False
    model.lm_head = head


def vary_lengths(engine) -> None:
    """Makes ``engine``'s rollouts end after 1, 2, ..., C tokens (row i keeps ``i % C + 1``), as if each
    had sampled its end token there (the rows that keep all C tokens count as truncated). The random micro model almost never samples an end token, so every
    completion would otherwise run to ``max_new_tokens``, and whatever depends on lengths (token vs
    sequence weighting) would go untested."""
    sample = engine.sampler.sample

    def shortened(*args, **kwargs):
        rollout = sample(*args, **kwargs)
        rows, width = rollout.completion_mask_BC.shape
        keep_B = torch.arange(rows, device=rollout.completion_mask_BC.device) % width + 1
        keep_BC = torch.arange(width, device=keep_B.device)[None, :] < keep_B[:, None]
        mask_BC = rollout.completion_mask_BC & keep_BC
        pad = engine.tokenizer.pad_token_id
        return replace(
            rollout, completion_mask_BC=mask_BC, truncated_B=rollout.truncated_B & (keep_B == width),
            completion_ids_BC=torch.where(mask_BC, rollout.completion_ids_BC, torch.full_like(rollout.completion_ids_BC, pad)),
            logprobs_BC=torch.where(mask_BC, rollout.logprobs_BC, torch.zeros_like(rollout.logprobs_BC)),
        )

    engine.sampler.sample = shortened


@pytest.fixture
def updates(monkeypatch) -> list:
    """The experience (rollouts, rewards, masks, advantages) each update of the RL engine receives."""
    from posttrain.rl.update import PolicyUpdate

    seen = []
    original = PolicyUpdate.__call__

    def recording(self, experience, *args, **kwargs):
        seen.append(experience)
        return original(self, experience, *args, **kwargs)

    monkeypatch.setattr(PolicyUpdate, "__call__", recording)
    return seen

