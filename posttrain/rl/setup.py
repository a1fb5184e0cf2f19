"""What every RL stage kind does before training: load the policy, and build the engine from the stage's
config. The stage kinds (`posttrain.stages.grpo`, `posttrain.stages.ppo`) call these with their objective;
nothing here imports `posttrain.stages`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from posttrain.errors import CheckpointError
from posttrain.models.checkpoint import apply_lora, load_model_and_tokenizer
from posttrain.models.reward_head import is_reward_model_checkpoint
from posttrain.rl.engine import RLEngine
from posttrain.rl.episodes import EpisodeRunner
from posttrain.rl.heldout import HeldoutEvaluation
from posttrain.rl.objective import Objective
from posttrain.rl.prompts import encode_prompts, load_prompts
from posttrain.rl.reward import RewardScorer
from posttrain.rl.rollout_backend import checkpoint_architectures, resolve_backend


def load_policy(context: Any) -> tuple[Any, Any]:
    """The policy (with LoRA adapters if the stage asks) and its tokenizer, from the stage's input checkpoint.

    ``context`` is the stage's `posttrain.stages.StageContext`.

    Raises:
        CheckpointError: if the input is a reward model; RL trains a language model.
    """
    config = context.config
    rollout_backend(context)  # a backend that cannot run fails here, before the model loads
    if is_reward_model_checkpoint(context.input_checkpoint):
        raise CheckpointError(
            f"stage {config.name!r} starts from a reward model ({context.input_checkpoint}); RL trains a "
            "language model: set `from:` to a language-model stage and name the reward model in `reward:` "
            "(`source: reward_model`, `args: {path: stage:NAME}`)"
        )
    model, tokenizer = load_model_and_tokenizer(
        context.model_spec, context.input_checkpoint, device=str(context.accelerator.device)
    )
    if config.lora is not None:
        model = apply_lora(model, config.lora)
    return model, tokenizer


def rollout_backend(context: Any) -> str:
    """The stage's resolved ``generation.backend`` (`posttrain.rl.rollout_backend.resolve_backend`), decided
    once per stage (its warning and its server check are not repeated when the engine is built)."""
    if context.rollout_backend is None:
        context.rollout_backend = _resolve(context)
    return context.rollout_backend


def _resolve(context: Any) -> str:
    where = f"stage {context.config.name!r}: generation.backend"
    architectures = checkpoint_architectures(context.input_checkpoint or context.model_spec.name_or_path)
    generation = context.config.generation
    server = None
    if generation.vllm.mode == "server":  # the server must answer before the model loads
        server = (generation.vllm.server_url, generation.max_prompt_tokens + generation.max_new_tokens)
    return resolve_backend(generation.backend, where, architectures, server=server)


def build_engine(context: Any, policy: Any, tokenizer: Any, objective: Objective) -> RLEngine:
    """The engine with the stage's prompts, reward, ``objective`` and held-out evaluation.

    The engine's ``skipped_data_rows`` counts prompt rows the loader could not read.
    """
    config = context.config
    device = str(context.accelerator.device)
    stages_dir = context.stage_dir.parent
    prompts = load_prompts(config.data, context.recipe_dir, context.seed)
    reward = RewardScorer(config.reward, stages_dir, device, context.recipe_dir)
    engine = RLEngine(
        config=config, policy=policy, tokenizer=tokenizer, objective=objective, reward=reward, prompts=prompts.rows,
        accelerator=context.accelerator, metrics=context.metrics, seed=context.seed, stage_dir=context.stage_dir,
        checkpoints=context.checkpoints, rollout_backend=rollout_backend(context),
    )
    engine.skipped_data_rows = prompts.skipped
    if config.environment is not None:
        engine.episodes = EpisodeRunner(
            config.environment, tokenizer, engine.sampler, config.generation.max_prompt_tokens, context.recipe_dir
        )
    if config.heldout is not None:
        spec = config.heldout
        rows = load_prompts(spec.data, context.recipe_dir, context.seed).rows
        kept, ids, _ = encode_prompts(tokenizer, rows, config.generation.max_prompt_tokens)
        gold = RewardScorer(spec.reward, stages_dir, device, context.recipe_dir) if spec.reward is not None else reward
        budget = spec.max_new_tokens or config.generation.max_new_tokens
        engine.heldout = HeldoutEvaluation(
            kept, ids, gold, engine.sampler, budget,
            spec.batch_size, spec.every, train_reward=reward if gold is not reward else None,
            samples=spec.samples, sampling=replace(engine.settings, max_new_tokens=budget),
            seed=(context.seed * 1_000_003) ^ 0x2545F491,  # a stream the training rollouts do not use
            episodes=engine.episodes, p_value=spec.hacking_p_value,
        )
    return engine
