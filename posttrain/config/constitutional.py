"""Recipe section of `kind: constitutional` (no torch): critique and revision of sampled answers against a
constitution (the RLAIF stages are described in `posttrain.config.rlaif`); the stage is
`posttrain.stages.constitutional`."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from posttrain.config.common import DataSpec
from posttrain.config.rl import GenerationSpec
from posttrain.config.rlaif import MODEL_REFERENCE, RoleSettings
from posttrain.config.stages import StageConfig, register_stage_config


@register_stage_config("constitutional")
class ConstitutionalConfig(StageConfig):
    """Critique -> revise (Bai et al. 2022, arXiv 2212.08073 §3.1): per prompt a response from the policy;
    per round a sampled principle, a critique and a revision by the critic. Writes the outputs
    `revisions` ((prompt, final revision) chat rows for SFT) and `pairs` ((prompt, revision ≻ original) with
    the principles and critiques kept); degenerate revisions are dropped and counted."""

    outputs: ClassVar[tuple[str, ...]] = ("revisions", "pairs")

    constitution: str = Field(description="Constitution YAML file (relative to the recipe's folder); see posttrain.data.constitution.")
    data: DataSpec = Field(description="Prompts: the same row layouts as RL stages (`builtin:arithmetic`, question/prompt/messages rows).")
    critic: str = Field("policy", description=f"The critic and reviser: {MODEL_REFERENCE}.")
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
