"""Typed, validated recipe sections (pydantic, no torch): `posttrain.config.X` holds the config of
`kind: X`; `common`, `stages`, `rl`, `rlaif` and `evaluation` hold the sections several kinds share.

Importing this package registers every stage kind's config class.
"""

from posttrain.config import ai_judge, constitutional, curate, dpo, grpo, ppo, pretrain, reward_model, sft  # noqa: F401
