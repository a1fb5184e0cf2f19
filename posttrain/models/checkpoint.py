"""Loading models by name and saving checkpoints atomically in HF format.

A checkpoint folder is written under a temporary name, every file flushed to disk, then renamed into
place, so a process killed mid-save never leaves a folder that a later run would take for complete.
Weights are read from safetensors only (no pickle); remote model code needs an explicit opt-in.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
from pathlib import Path
from typing import Any

from posttrain.config.common import LoraSpec, ModelSpec
from posttrain.errors import CheckpointError, RecipeError
from posttrain.files import fsync_tree, update_digest

WEIGHT_SUFFIX = ".safetensors"


STAGE_PREFIX = "stage:"


def stage_checkpoint(reference: str, stages_dir: Path, what: str) -> str:
    """The checkpoint folder a ``stage:NAME`` reference names in this run (``what`` says who refers to it, for
    the error), or ``reference`` unchanged when it is not a stage reference."""
    if not reference.startswith(STAGE_PREFIX):
        return reference
    checkpoint = stages_dir / reference.removeprefix(STAGE_PREFIX) / "checkpoint"
    if not (checkpoint / "config.json").is_file():
        finished = sorted(p.parent.name for p in stages_dir.glob("*/checkpoint"))
        raise CheckpointError(
            f"{what}: `{reference}` names no finished stage of this run (looked for {checkpoint}; finished "
            f"stages: {finished or 'none'}); put that stage before this one"
        )
    return str(checkpoint)


def load_model_and_tokenizer(spec: ModelSpec, path: str | Path | None = None, device: str = "cpu"):
    """Loads a causal LM and its tokenizer.

    Args:
        spec: the recipe's model section (used for a built-in model, remote-code policy and dtype).
        path: a checkpoint folder written by an earlier stage; overrides ``spec.name_or_path``.
        device: where to put the model.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = str(path) if path is not None else spec.name_or_path
    if source.startswith("builtin:"):
        from posttrain.models.tiny import build_tiny_model

        model, tokenizer = build_tiny_model(source.removeprefix("builtin:"), seed=spec.seed, init_std=spec.init_std)
        return model.to(device), tokenizer
    local = Path(source)
    if spec.trust_remote_code and path is None and not local.is_dir() and not is_pinned_revision(spec.revision):
        raise CheckpointError(
            f"trust_remote_code: true runs the Python code of hub model {source!r}; pin `model.revision` to a commit "
            f"(40 hex digits; got {spec.revision!r}) so the code that runs is the one you reviewed: a branch or tag "
            "can move"
        )
    if local.exists():
        weights = sorted(local.glob(f"*{WEIGHT_SUFFIX}"))
        if not weights:
            raise CheckpointError(f"{local}: no {WEIGHT_SUFFIX} weights found (pickle checkpoints are not loaded)")
        for file in weights:
            check_safetensors(file)
    dtype = _resolve_dtype(spec.dtype, device)
    kwargs: dict[str, Any] = dict(
        revision=spec.revision, trust_remote_code=spec.trust_remote_code, use_safetensors=True
    )
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device), tokenizer


def is_pinned_revision(revision: str | None) -> bool:
    """Whether ``revision`` names one commit (a full 40-hex-digit hash), not a branch or tag that can move."""
    return revision is not None and re.fullmatch(r"[0-9a-f]{40}", revision) is not None


def _resolve_dtype(name: str, device: str):
    import torch

    if name == "auto":
        on_gpu = device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if on_gpu else torch.float32
    return getattr(torch, name)


def apply_lora(model: Any, spec: LoraSpec, task_type: str = "CAUSAL_LM"):
    """Wraps a model with trainable LoRA adapters (peft); the base weights are frozen.

    ``task_type="SEQ_CLS"`` (reward models) also keeps the new score head fully trainable.
    """
    from peft import LoraConfig, get_peft_model

    from posttrain.models.lora_targets import check_lora_targets

    check_lora_targets(model, spec.target_modules)
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.target_modules,
        task_type=task_type,
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:  # peft's own refusals (e.g. a module type it cannot adapt): one line, no traceback
        raise RecipeError(f"lora: peft refused these settings: {str(err).splitlines()[0]}") from None


def check_safetensors(path: Path) -> None:
    """Refuses a truncated or malformed safetensors file (header length, JSON header, data size).

    Cheap: reads the header only, no tensor data.
    """
    size = path.stat().st_size
    problem = None
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            problem = f"{size} bytes, shorter than a header"
        else:
            (header_len,) = struct.unpack("<Q", head)
            if header_len > size - 8:
                problem = f"header says {header_len} bytes but the file has {size}"
            else:
                try:
                    header = json.loads(handle.read(header_len))
                    end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
                except (ValueError, KeyError, TypeError, IndexError) as err:
                    problem = f"unreadable header ({err})"
                else:
                    if 8 + header_len + end != size:
                        problem = f"tensors need {8 + header_len + end} bytes but the file has {size}"
    if problem:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file: {problem}")


def weights_hash(folder: Path) -> str:
    """SHA-256 over the safetensors files of a checkpoint folder (sorted by name)."""
    digest = hashlib.sha256()
    files = sorted(folder.glob(f"*{WEIGHT_SUFFIX}"))
    if not files:
        raise CheckpointError(f"{folder}: no {WEIGHT_SUFFIX} files")
    for file in files:
        digest.update(file.name.encode())
        update_digest(digest, file)
    return digest.hexdigest()[:16]


def save_checkpoint(model: Any, tokenizer: Any, folder: Path, lora_merge: bool = True) -> str:
    """Saves ``model`` (merging LoRA adapters when asked) and ``tokenizer`` to ``folder`` atomically.

    Returns:
        the hash of the saved weights.
    """
    folder = Path(folder)
    staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        to_save = model
        if hasattr(model, "peft_config"):
            model.save_pretrained(staging / "adapter")
            if lora_merge:
                to_save = model.merge_and_unload()
        to_save.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        fsync_tree(staging)
        digest = weights_hash(staging)
    except OSError as err:  # e.g. disk full: keep whatever checkpoint is in place
        shutil.rmtree(staging, ignore_errors=True)
        kept = f"; the previous {folder} is kept" if folder.exists() else ""
        raise CheckpointError(f"could not save {folder} ({err}){kept}") from None
    if folder.exists():
        # keep the old folder until the new one is in place
        old = folder.with_name(f"{folder.name}.old-{os.getpid()}")
        folder.rename(old)
        staging.rename(folder)
        shutil.rmtree(old)
    else:
        staging.rename(folder)
    return digest
