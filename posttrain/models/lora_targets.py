"""Checking LoRA `target_modules` against a model's module names, before training starts.

peft adapts a module when its name equals a target or ends with ``.`` + target, and raises only when *no*
target matches: `[q_projj, v_proj]` trains `v_proj` alone and saves the typo in `adapter_config.json`, and
`[q_projj]` alone ends in peft's own traceback. Every target must match here, and the error lists the names
the model has. `posttrain validate` runs the same check on the model built on the meta device (no weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from posttrain.errors import RecipeError


def adaptable_module_names(model: Any) -> list[str]:
    """Names (last dotted part) of the modules LoRA can adapt: linear, embedding and convolution layers."""
    import torch

    kinds = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d)
    try:
        from transformers.pytorch_utils import Conv1D

        kinds = kinds + (Conv1D,)
    except ImportError:  # older transformers keep Conv1D elsewhere; GPT-2-shaped models then go unchecked
        pass
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if name and isinstance(module, kinds)})


def check_lora_targets(model: Any, targets: Sequence[str] | str, where: str = "lora.target_modules") -> None:
    """Raises `RecipeError` naming every target that matches no module of ``model``, with the names it has.

    ``all-linear`` is always valid (peft picks the linear layers itself).
    """
    if isinstance(targets, str):
        return
    names = set(name for name, _ in model.named_modules() if name)
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        available = adaptable_module_names(model)
        raise RecipeError(
            f"{where}: {', '.join(repr(t) for t in missing)} match no module of the model "
            f"({type(model).__name__}); adaptable modules: {', '.join(available)} (or `all-linear`)"
        )


def meta_model(name_or_path: str, trust_remote_code: bool = False) -> Any | None:
    """The model's module tree on the meta device (no weights read or allocated), or None when its config
    cannot be read offline (a hub id not in the local cache)."""
    import torch

    if name_or_path.startswith("builtin:"):
        from transformers import Qwen2Config

        from posttrain.models.tiny import TINY_SIZES

        size = name_or_path.split(":", 1)[1]
        if size not in TINY_SIZES:
            return None
        config = Qwen2Config(vocab_size=512, **TINY_SIZES[size])  # the module tree does not depend on the vocabulary
    else:
        from transformers import AutoConfig

        local = Path(name_or_path).expanduser()
        try:
            config = AutoConfig.from_pretrained(
                str(local) if local.exists() else name_or_path, trust_remote_code=trust_remote_code,
                local_files_only=True,
            )
        except (OSError, ValueError):
            return None
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception:  # an architecture transformers cannot build from the config alone: the stage checks instead
        return None
