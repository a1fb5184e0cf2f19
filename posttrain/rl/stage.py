"""What the `ppo` and `grpo` stages share: loading the policy, and building the engine from the stage's config.

Stages never import one another, so the common part lives here and `posttrain/stages/ppo.py` and
`posttrain/stages/grpo.py` only register it under their kinds.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from posttrain.config.rl import RLConfig
from posttrain.errors import CheckpointError
from posttrain.models.checkpoint import apply_lora
from posttrain.models.reward_head import is_reward_model_checkpoint
from posttrain.rl.engine import RLEngine
from posttrain.rl.heldout import HeldoutEvaluation
from posttrain.rl.objectives import make_objective
from posttrain.rl.prompts import encode_prompts, load_prompts
from posttrain.rl.reward import RewardScorer
from posttrain.stages.base import Stage, StageContext


class RLStage(Stage):
    """An RL stage: the policy starts from the input checkpoint (full weights or LoRA) and is trained by
    `RLEngine` with the objective of the stage's kind."""

    config: RLConfig

    def __init__(self, context: StageContext):
        super().__init__(context)
        if is_reward_model_checkpoint(context.input_checkpoint):
            raise CheckpointError(
                f"stage {self.config.name!r} starts from a reward model ({context.input_checkpoint}); RL trains a "
                "language model: set `from:` to a language-model stage and name the reward model in `reward:` "
                "(`source: reward_model`, `args: {path: stage:NAME}`)"
            )
        self.load_start_model()
        if self.config.lora is not None:
            self.model = apply_lora(self.model, self.config.lora)

    def build_engine(self) -> RLEngine:
        """The engine with this stage's prompts, reward, objective and held-out evaluation."""
        ctx, config = self.context, self.config
        device = str(ctx.accelerator.device)
        stages_dir = ctx.stage_dir.parent
        prompts = load_prompts(config.data, ctx.recipe_dir, ctx.seed)
        self.skipped_rows = prompts.skipped
        reward = RewardScorer(config.reward, stages_dir, device, ctx.recipe_dir)
        engine = RLEngine(
            config=config, policy=self.model, tokenizer=self.tokenizer, objective=make_objective(config),
            reward=reward, prompts=prompts.rows, accelerator=ctx.accelerator, metrics=ctx.metrics, seed=ctx.seed,
            stage_dir=ctx.stage_dir, checkpoints=ctx.checkpoints,
        )
        if config.heldout is not None:
            spec = config.heldout
            rows = load_prompts(spec.data, ctx.recipe_dir, ctx.seed).rows
            kept, ids, _ = encode_prompts(self.tokenizer, rows, config.generation.max_prompt_tokens)
            gold = RewardScorer(spec.reward, stages_dir, device, ctx.recipe_dir) if spec.reward is not None else reward
            budget = spec.max_new_tokens or config.generation.max_new_tokens
            engine.heldout = HeldoutEvaluation(
                kept, ids, gold, engine.sampler, budget,
                spec.batch_size, spec.every, train_reward=reward if gold is not reward else None,
                samples=spec.samples, sampling=replace(engine.settings, max_new_tokens=budget),
                seed=(ctx.seed * 1_000_003) ^ 0x2545F491,  # a stream the training rollouts do not use
            )
        return engine

    def train(self) -> dict[str, Any]:
        engine = self.build_engine()
        summary = engine.train()
        self.model = engine.policy
        return {**summary, "skipped_data_rows": self.skipped_rows}
