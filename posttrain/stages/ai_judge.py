"""AI-labelled preference pairs (RLAIF, Bai et al. 2022 arXiv 2212.08073 §4; Lee et al. 2023 arXiv 2309.00267).

The policy (the starting model) samples `candidates` responses per prompt; each neighbouring pair is judged
under a sampled principle by the judge model, in both orders (`posttrain.rlaif.judge`). A pair becomes
training data only when both orders prefer the same response; ties are dropped and counted. Pairs of
identical (or empty) responses are not judged. Output ``pairs`` (read as ``stage:NAME/pairs``) holds
prompt/chosen/rejected with the principle and both margins. Principles with a program check also give the
judge's agreement with the ground truth (`judge/agreement`). The stage trains nothing.
"""

from __future__ import annotations

import random
import time
from typing import Any

from posttrain.config.ai_judge import AIJudgeConfig
from posttrain.rlaif.judge import AgreementCounter, ground_truth, judge_pairs
from posttrain.rlaif.runtime import generator_for, role_backends, sampling_settings, stage_inputs, write_output
from posttrain.stages.base import Stage, register_stage


@register_stage("ai_judge")
class AIJudgeStage(Stage):
    """Sample candidate responses, judge them pairwise in both orders, write the agreed pairs."""

    config: AIJudgeConfig

    def __init__(self, context):
        super().__init__(context)
        self.backends = role_backends(context, generation=self.config.generation)
        self.load_start_model()

    def train(self) -> dict[str, Any]:
        ctx, config = self.context, self.config
        started = time.time()
        constitution, prompts, policy, judge = stage_inputs(self, config.constitution, config.judge)
        rows = prompts.rows
        count = config.candidates
        answers = policy.generate([r.messages for r in rows for _ in range(count)], sampling_settings(config.generation),
                                  generator_for(ctx), self.backends["generation"], config.generation.vllm)
        policy.close()  # its vLLM engine, if any: the judge only scores
        rng = random.Random(f"ai_judge/{ctx.seed}")
        candidates, same = [], 0
        for index, row in enumerate(rows):
            texts = [text.strip() for text, _ in answers[index * count : (index + 1) * count]]
            for a, b in zip(texts[0::2], texts[1::2]):
                if not a or not b or " ".join(a.split()) == " ".join(b.split()):
                    same += 1
                    continue
                candidates.append((constitution.sample(rng), row, a, b))
        verdicts = judge_pairs(judge.scorer(constitution), [(p, row.question, a, b) for p, row, a, b in candidates],
                               margin=config.margin)
        counter, out = AgreementCounter(), []
        for (principle, row, a, b), verdict in zip(candidates, verdicts):
            truth = ground_truth(principle, a, b)
            counter.add(verdict, truth)
            if verdict.label is None:
                continue
            chosen, rejected = (a, b) if verdict.label == "a" else (b, a)
            out.append({"prompt": row.messages, "chosen": chosen, "rejected": rejected, "principle": principle.name,
                        "judge_forward": verdict.forward, "judge_backward": verdict.backward,
                        "ground_truth": None if truth is None else ("chosen" if truth == verdict.label else "rejected"),
                        **{k: v for k, v in row.example.items() if k not in ("prompt", "chosen", "rejected")}})
        write_output(ctx.stage_dir, "pairs", out, ctx.accelerator)
        metrics = counter.metrics()
        metrics["judge/identical_or_empty_skipped"] = float(same)
        metrics["seconds"] = time.time() - started
        ctx.metrics.log(1, metrics, total=1)
        return {"prompts": len(rows), **metrics}
