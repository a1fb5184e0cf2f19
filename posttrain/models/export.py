"""`posttrain export`: a checkpoint as a standalone HF-format folder, optionally pushed to the hub.

A stage checkpoint is either a plain model (full fine-tuning, or LoRA with ``merge: true``; the adapter
sits beside it in ``adapter/``) or, with ``lora.merge: false``, a LoRA adapter alone. A plain model is
copied; an adapter is merged into its base model: ``--base``, else the checkpoint the stage started
from (its manifest's ``input``), else the adapter's own ``base_model_name_or_path``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from posttrain.config.common import ModelSpec
from posttrain.errors import CheckpointError, HubError
from posttrain.models.checkpoint import WEIGHT_SUFFIX

ADAPTER_CONFIG = "adapter_config.json"


def resolve_checkpoint(source: str | Path) -> Path:
    """The checkpoint folder a path names: the folder itself, or a stage folder's ``checkpoint/``."""
    path = Path(source)
    if (path / "checkpoint").is_dir():
        path = path / "checkpoint"
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint at {source}: expected a checkpoint folder or a stage folder holding checkpoint/")
    if not (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: not an HF-format checkpoint (no config.json or {ADAPTER_CONFIG})")
    if not any(path.glob(f"*{WEIGHT_SUFFIX}")):
        raise CheckpointError(f"{path}: no {WEIGHT_SUFFIX} weights found")
    return path


def _prepare_destination(destination: Path, force: bool) -> None:
    if destination.exists() and any(destination.iterdir()):
        if not force:
            raise CheckpointError(f"{destination} exists and is not empty; pass --force to replace it")
        shutil.rmtree(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)


def _copy_model(checkpoint: Path, destination: Path) -> None:
    """Copies the model files (not the LoRA adapter kept beside a merged model) under a temporary name."""
    staging = destination.with_name(f"{destination.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(checkpoint, staging, ignore=shutil.ignore_patterns("adapter"))
    if destination.exists():
        destination.rmdir()  # empty (checked by _prepare_destination)
    staging.rename(destination)


def _base_spec(checkpoint: Path, base: str | None) -> tuple[ModelSpec, str | None]:
    """(model spec, checkpoint path or None) of the model an adapter was trained on."""
    stage_folder = checkpoint.parent
    recipe_file = stage_folder.parent.parent / "recipe.yaml"
    spec = ModelSpec()
    if recipe_file.is_file():
        model_section = (yaml.safe_load(recipe_file.read_text()) or {}).get("model") or {}
        spec = ModelSpec.model_validate(model_section)
    if base is not None:
        return spec.model_copy(update={"name_or_path": base}), None
    manifest_file = stage_folder / "manifest.json"
    if manifest_file.is_file():
        started_from = json.loads(manifest_file.read_text()).get("input")
        if started_from and Path(started_from).is_dir():
            return spec, started_from
        if started_from:
            return spec.model_copy(update={"name_or_path": started_from}), None
    adapter = json.loads((checkpoint / ADAPTER_CONFIG).read_text())
    if not adapter.get("base_model_name_or_path"):
        raise CheckpointError(f"{checkpoint}: cannot tell the adapter's base model; pass --base")
    return spec.model_copy(update={"name_or_path": adapter["base_model_name_or_path"]}), None


def _load_base(checkpoint: Path, base: str | None, task_type: str) -> Any:
    from posttrain.models.checkpoint import load_model_and_tokenizer
    from posttrain.models.reward_head import is_reward_model_checkpoint, load_reward_model, reward_model_from_causal_lm

    spec, path = _base_spec(checkpoint, base)
    if task_type == "SEQ_CLS" and is_reward_model_checkpoint(path or spec.name_or_path):
        return load_reward_model(path or spec.name_or_path)[0]
    model, tokenizer = load_model_and_tokenizer(spec, path)
    return reward_model_from_causal_lm(model, tokenizer) if task_type == "SEQ_CLS" else model


def merge_adapter(checkpoint: Path, destination: Path, base: str | None = None) -> None:
    """Merges a LoRA adapter into its base model and saves the result (with the adapter's tokenizer)."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from posttrain.models.checkpoint import save_checkpoint

    task_type = json.loads((checkpoint / ADAPTER_CONFIG).read_text()).get("task_type") or "CAUSAL_LM"
    model = PeftModel.from_pretrained(_load_base(checkpoint, base, task_type), str(checkpoint))
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    if destination.exists():
        destination.rmdir()  # empty (checked by _prepare_destination)
    save_checkpoint(model.merge_and_unload(), tokenizer, destination, lora_merge=True)


def prepare_for_generation(folder: Path) -> list[str]:
    """Sets what batched generation with the exported folder needs; returns one line per change.

    - the tokenizer pads on the left (a decoder-only model continues the last token of each row; with the
      training side, right, a batched `generate` continues padding);
    - `generation_config.json` stops at the chat template's end-of-turn token as well as at eos
      (`posttrain.models.special_tokens`), so a model SFT-ed on a base tokenizer stops after its answer.
    """
    from transformers import AutoTokenizer, GenerationConfig

    from posttrain.models.special_tokens import end_of_turn_token_id

    changes = []
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    config_file = folder / "tokenizer_config.json"
    if tokenizer.padding_side != "left" and config_file.is_file():
        # written into the config directly: `save_pretrained` does not store padding_side (transformers 5)
        settings = json.loads(config_file.read_text())
        settings["padding_side"] = "left"
        config_file.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n")
        changes.append("tokenizer padding_side: left (for batched generation)")
    turn = end_of_turn_token_id(tokenizer)
    if turn is not None:
        try:
            generation = GenerationConfig.from_pretrained(str(folder))
        except OSError:
            generation = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        eos = generation.eos_token_id
        ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        if turn not in ids:
            generation.eos_token_id = ids + [turn]
            generation.save_pretrained(str(folder))
            changes.append(
                f"generation_config eos_token_id: {generation.eos_token_id} (adds the chat template's end of turn "
                f"{tokenizer.convert_ids_to_tokens(turn)!r})"
            )
    return changes


def export_checkpoint(source: str | Path, destination: str | Path, base: str | None = None, force: bool = False) -> tuple[Path, str]:
    """Writes ``source`` as a plain HF-format model folder at ``destination``.

    Returns:
        the destination and what was done (``"copied"`` or ``"merged"``).
    """
    checkpoint = resolve_checkpoint(source)
    destination = Path(destination)
    if destination.resolve() == checkpoint.resolve():
        raise CheckpointError(f"the destination {destination} is the checkpoint itself")
    _prepare_destination(destination, force)
    if (checkpoint / ADAPTER_CONFIG).is_file():
        merge_adapter(checkpoint, destination, base)
        return destination, "merged"
    if base is not None:
        raise CheckpointError(f"{checkpoint} is a full model, not a LoRA adapter; --base applies to adapters only")
    _copy_model(checkpoint, destination)
    return destination, "copied"


def push_to_hub(folder: Path, repo_id: str, private: bool = False) -> None:
    """Uploads ``folder`` to the hub repository ``repo_id`` (created if missing).

    Needs network and a token (``hf auth login`` or ``HF_TOKEN``); every failure becomes a `HubError`
    that says the exported folder is kept.
    """
    from huggingface_hub import HfApi, get_token

    kept = f"the exported folder is kept at {folder}"
    if get_token() is None:
        raise HubError(f"cannot push to {repo_id}: no Hugging Face token (run `hf auth login` or set HF_TOKEN); {kept}")
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload with posttrain export")
    except Exception as err:  # network, offline mode, auth and permission errors all come as different types
        reason = str(err).strip().splitlines()[0].rstrip(".") if str(err).strip() else type(err).__name__
        raise HubError(f"cannot push to {repo_id}: {reason}; {kept}") from err
