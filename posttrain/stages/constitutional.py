"""The critique -> revise stage (Constitutional AI's supervised phase, Bai et al. 2022, arXiv 2212.08073 §3).

The policy (the starting model) answers every prompt; the critic (the policy itself or another model)
critiques and revises each answer for `rounds` rounds under sampled principles. Outputs, read by later
stages as ``stage:NAME/revisions`` and ``stage:NAME/pairs``:

- ``revisions``: (prompt, final revision) chat rows for SFT;
- ``pairs``: (prompt, final revision ≻ original response) with the principles and critiques kept.

The stage trains nothing: its checkpoint is the starting model.
"""

from __future__ import annotations

import random
import time
from typing import Any

from posttrain.config.constitutional import ConstitutionalConfig
from posttrain.errors import StageError
from posttrain.rlaif.critique import critique_and_revise, violation_rates
from posttrain.rlaif.runtime import generator_for, role_backends, sampling_settings, stage_inputs, write_output
from posttrain.stages.base import Stage, register_stage


@register_stage("constitutional")
class ConstitutionalStage(Stage):
    """Critique and revise the policy's answers; write SFT rows and preference pairs."""

    config: ConstitutionalConfig

    def __init__(self, context):
        super().__init__(context)
        self.backends = role_backends(context, response=self.config.response, revise=self.config.revise)
        self.load_start_model()

    def train(self) -> dict[str, Any]:
        ctx, config = self.context, self.config
        started = time.time()
        constitution, prompts, policy, critic = stage_inputs(self, config.constitution, config.critic)
        generator = generator_for(ctx)
        answers = policy.generate(
            [row.messages for row in prompts.rows], sampling_settings(config.response), generator, self.backends["response"],
            config.response.vllm,
        )
        revise_settings = sampling_settings(config.revise)
        result = critique_and_revise(
            constitution, [row.question for row in prompts.rows], [text.strip() for text, _ in answers],
            lambda texts: critic.answer(texts, revise_settings, generator, self.backends["revise"], config.revise.vllm),
            rounds=config.rounds, rng=random.Random(f"constitutional/{ctx.seed}"),
            max_chars=config.max_revision_chars, examples=[row.example for row in prompts.rows],
            keep_answer=config.keep_answer,
        )
        for role in {id(policy): policy, id(critic): critic}.values():
            role.close()  # vLLM engines of the generation roles (memory for the stages after this one)
        revised = [item for item in result.items if item.revised]
        with_original = [item for item in revised if item.original.strip()]
        write_output(ctx.stage_dir, "revisions", (item.sft_row() for item in revised), ctx.accelerator)
        write_output(ctx.stage_dir, "pairs", (item.pair_row() for item in with_original), ctx.accelerator)
        write_output(ctx.stage_dir, "trace", ({"prompt": i.prompt, "original": i.original, "final": i.final,
                                               "rounds": [vars(r) for r in i.rounds]} for i in result.items),
                     ctx.accelerator)
        metrics = result.metrics()
        for when, texts in (("before", [i.original for i in result.items]), ("after", [i.final for i in result.items])):
            metrics.update({f"violations/{when}/{k}": v for k, v in violation_rates(constitution, texts).items()})
        metrics["revise/pairs"] = float(len(with_original))
        metrics["revise/cut_prompts"] = float(policy.cut_prompts + (critic.cut_prompts if critic is not policy else 0))
        metrics["seconds"] = time.time() - started
        ctx.metrics.log(1, metrics, total=1)
        if not revised:
            raise StageError(
                f"stage {config.name!r}: no usable revision among {len(result.items)} prompts "
                f"(dropped: {result.dropped}); see {ctx.stage_dir / 'data' / 'trace.jsonl'}"
            )
        return {"prompts": len(result.items), "skipped_data_rows": prompts.skipped, **metrics}
