"""The stage interface and the registry of stage kinds.

A stage is built from a context (its config, the checkpoint it starts from, where it writes), trains, and
saves a HF-format checkpoint. Stages never import one another; what they share lives in library modules
(`posttrain.training`, `posttrain.data`, `posttrain.models`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posttrain.config.common import ModelSpec
from posttrain.config.stages import StageConfig
from posttrain.distributed import gathered_parameters
from posttrain.models.checkpoint import load_model_and_tokenizer, save_checkpoint
from posttrain.registry import Registry
from posttrain.training.metrics import MetricsWriter
from posttrain.training.state import TrainCheckpoints


@dataclass
class StageContext:
    """Everything a stage needs from the pipeline."""

    config: StageConfig
    model_spec: ModelSpec
    input_checkpoint: Path | None  # None: start from the recipe's model
    stage_dir: Path
    recipe_dir: Path
    seed: int
    accelerator: Any
    metrics: MetricsWriter
    checkpoints: TrainCheckpoints | None = None  # resumable training state inside the stage
    rollout_backend: str | None = None  # RL stages: ``generation.backend`` once resolved (`posttrain.rl.setup`)


class Stage:
    """Base of every stage kind: ``train()`` then ``save(folder)``.

    Subclasses set ``self.model`` and ``self.tokenizer`` in ``__init__`` (usually through
    `load_start_model`) and implement ``train``.
    """

    def __init__(self, context: StageContext):
        self.context = context
        self.config = context.config
        self.model: Any = None
        self.tokenizer: Any = None

    def load_start_model(self) -> None:
        self.model, self.tokenizer = load_model_and_tokenizer(
            self.context.model_spec, self.context.input_checkpoint, device=str(self.context.accelerator.device)
        )

    def train(self) -> dict[str, Any]:
        """Runs the stage; returns a summary (steps, tokens, seconds, ...) for the manifest."""
        raise NotImplementedError(f"{type(self).__name__} does not implement train()")

    def save(self, folder: Path) -> str | None:
        """Writes the output checkpoint (plain HF format); returns the weights hash (None off the main process).

        Called on every process: under ZeRO-3 the parameter shards are gathered (a collective) and the
        main process writes the whole model.
        """
        accelerator = self.context.accelerator
        model = accelerator.unwrap_model(self.model)
        merge = getattr(getattr(self.config, "lora", None), "merge", True)
        with gathered_parameters(accelerator, training_continues=False):
            if not accelerator.is_main_process:
                return None
            return save_checkpoint(model, self.tokenizer, folder, lora_merge=merge)


STAGES: Registry[type[Stage]] = Registry("stage implementation")
# `@register_stage("kind")` registers the class that runs stages of that kind.
register_stage = STAGES.register


def stage_class(kind: str) -> type[Stage]:
    """The implementation of a stage kind; an unknown kind names the valid ones."""
    import posttrain.stages  # noqa: F401  (registers the built-in kinds)

    return STAGES.get(kind)
