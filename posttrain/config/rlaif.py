"""Recipe sections of the RLAIF stages, `kind: constitutional` and `kind: ai_judge` (no torch).

Neither trains: each generates data with language models and writes it into its stage folder, where later
stages of the same recipe read it as ``data: {source: "stage:NAME/OUTPUT"}``. The stage's checkpoint is
its starting model, unchanged (set `evaluate: false` to skip evaluating it again)::

    - name: critique
      kind: constitutional
      from: sft
      constitution: constitutions/arithmetic.yaml
      data: {source: "builtin:arithmetic", count: 2000}
      rounds: 2
    - name: sft_revised
      kind: sft
      from: sft
      data: {source: "stage:critique/revisions"}      # (prompt, final revision) chat rows
    - name: dpo
      kind: dpo
      data: {source: "stage:critique/pairs"}          # (prompt, revision ≻ original)
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from posttrain.config.common import DataSpec, Strict
from posttrain.config.rl import GenerationSpec
from posttrain.config.stages import StageConfig, register_stage_config

_MODEL_REFERENCE = (
    "`policy` (this stage's starting model), `stage:NAME` (the checkpoint of an earlier stage of this run), "
    "or a local folder / hub id"
)


class RoleSettings(Strict):
    """How the role models (critic, reviser, judge) are run."""

    batch_size: int = Field(64, gt=0, description="Prompts per generation or judging batch.")
    max_prompt_tokens: int = Field(512, gt=0, description="Longer role prompts keep their last tokens (counted).")


@register_stage_config("constitutional")
class ConstitutionalConfig(StageConfig):
    """Critique -> revise (Bai et al. 2022, arXiv 2212.08073 §3.1): per prompt a response from the policy;
    per round a sampled principle, a critique and a revision by the critic. Writes the outputs
    `revisions` ((prompt, final revision) chat rows for SFT) and `pairs` ((prompt, revision ≻ original) with
    the principles and critiques kept); degenerate revisions are dropped and counted."""

    outputs: ClassVar[tuple[str, ...]] = ("revisions", "pairs")

    constitution: str = Field(description="Constitution YAML file (relative to the recipe's folder); see posttrain.data.constitution.")
    data: DataSpec = Field(description="Prompts: the same row layouts as RL stages (`builtin:arithmetic`, question/prompt/messages rows).")
    critic: str = Field("policy", description=f"The critic and reviser: {_MODEL_REFERENCE}.")
    rounds: int = Field(1, gt=0, description="Critique/revision rounds per prompt, each under a freshly drawn principle.")
    response: GenerationSpec = Field(
        default_factory=lambda: GenerationSpec(max_new_tokens=32, temperature=1.0),
        description="How the policy samples the responses that are critiqued.",
    )
    revise: GenerationSpec = Field(
        default_factory=lambda: GenerationSpec(max_new_tokens=32, temperature=0.0),
        description="How the critic writes critiques and revisions (default greedy).",
    )
    max_revision_chars: int = Field(400, gt=0, description="A longer revision is dropped as `too_long` (as is one cut off by max_new_tokens).")
    keep_answer: bool = Field(
        False,
        description="Drop (as `changed_answer`) a revision whose last number differs from the response's: for tasks "
        "answered by a number, a revision must fix how the answer is given, not change it.",
    )
    roles: RoleSettings = Field(default_factory=RoleSettings, description="Batching of the role models.")


@register_stage_config("ai_judge")
class AIJudgeConfig(StageConfig):
    """AI-labelled preference pairs: per prompt the policy samples `candidates` responses; each neighbouring
    pair is judged under a sampled principle in both orders and labelled only when both orders agree (ties
    are dropped and counted). Writes the output `pairs` (prompt/chosen/rejected plus the principle and the
    judge's margins); with program-checkable principles the judge's agreement with the ground truth is
    logged."""

    outputs: ClassVar[tuple[str, ...]] = ("pairs",)

    constitution: str = Field(description="Constitution YAML file (relative to the recipe's folder): principles and the judge template.")
    data: DataSpec = Field(description="Prompts (same layouts as RL stages).")
    judge: str = Field("policy", description=f"The judge: {_MODEL_REFERENCE}.")
    candidates: int = Field(2, ge=2, description="Responses sampled per prompt; pairs are (1, 2), (3, 4), ...")
    generation: GenerationSpec = Field(
        default_factory=lambda: GenerationSpec(max_new_tokens=32, temperature=1.0),
        description="How the policy samples the candidate responses.",
    )
    margin: float = Field(0.0, ge=0, description="Both orders must prefer the same response by more than this log-probability margin.")
    roles: RoleSettings = Field(default_factory=RoleSettings, description="Batching of the judge.")
