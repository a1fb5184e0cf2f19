"""What the RLAIF stage kinds share (no torch); the kinds themselves are `posttrain.config.constitutional`
and `posttrain.config.ai_judge`.

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

from pydantic import Field

from posttrain.config.common import Strict

# how a role model is named, in field descriptions
MODEL_REFERENCE = (
    "`policy` (this stage's starting model), `stage:NAME` (the checkpoint of an earlier stage of this run), "
    "or a local folder / hub id"
)


class RoleSettings(Strict):
    """How the role models (critic, reviser, judge) are run."""

    batch_size: int = Field(64, gt=0, description="Prompts per generation or judging batch.")
    max_prompt_tokens: int = Field(512, gt=0, description="Longer role prompts keep their last tokens (counted).")
