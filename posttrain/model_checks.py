"""`posttrain validate` checks each LoRA stage's `target_modules` against the recipe's model, built on
the meta device from its config (no weights read), so a misspelt module name fails before a run starts.

Torch is imported only when a stage names its target modules (`all-linear` needs no check). A model whose
config is not readable offline (a hub id not in the cache) is left to the stage, which checks the loaded
model the same way (`posttrain.models.lora_targets`). It sits beside recipe.py because it reads the recipe.
"""

from __future__ import annotations

from posttrain.errors import RecipeError
from posttrain.recipe import LoadedRecipe


def check_lora_modules(loaded: LoadedRecipe) -> list[str]:
    """One line per stage whose LoRA `target_modules` name a module the model does not have."""
    stages = [
        (index, stage) for index, stage in enumerate(loaded.recipe.stages)
        if getattr(stage, "lora", None) is not None and not isinstance(stage.lora.target_modules, str)
    ]
    if not stages:
        return []
    from posttrain.models.lora_targets import check_lora_targets, meta_model

    spec = loaded.recipe.model
    model = meta_model(spec.name_or_path, spec.trust_remote_code)
    if model is None:
        return []
    problems = []
    for index, stage in stages:
        try:
            check_lora_targets(model, stage.lora.target_modules, f"stages[{index}] ({stage.name}).lora.target_modules")
        except RecipeError as err:
            problems.append(str(err))
    return problems
