"""Stage fingerprints: what decides whether a finished stage is reused, and whether a saved training state
may be resumed.

A stage's fingerprint hashes its config (without the settings that change no result), the fingerprint of
the stage it starts from (or of the base model), the fingerprints of its data and the seed. A stage is
complete when its manifest says so, records that fingerprint, and was trained from the weights its parent
holds now (`input_hash`, the parent's checkpoint hash), and its checkpoint folder exists.

Data fingerprints: a file hashes its bytes; a hub dataset its name and split (it is not downloaded to
plan a run); built-in data its spec, the seed, the code that generates it (every `posttrain/data/*.py`) and
the constitution file it names; data another stage writes (``stage:NAME/OUTPUT``) the producing stage's
fingerprint (`posttrain.data.stage_outputs`). A stage that names another stage's checkpoint elsewhere in its
config (``path: stage:reward_model`` of a reward, a ``critic``/``judge`` role) hashes that stage's fingerprint
too (`referenced_stages`): a reward model trained anew makes the PPO stage trained against it run again.
No torch here.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from posttrain.config.common import DataSpec, Strict
from posttrain.config.stages import StageConfig
from posttrain.data.sources import resolve_data_path
from posttrain.data.stage_outputs import STAGE_PREFIX, linked_data_fingerprint
from posttrain.files import json_hash, read_json, update_digest
from posttrain.recipe import LoadedRecipe, data_specs

MANIFEST = "manifest.json"
# train settings that say how often the training state is saved: they change no result
UNHASHED_TRAIN_KEYS = ("save_every", "keep_last")


def config_dump(model: Strict) -> Any:
    """A config as the JSON a manifest records and a fingerprint hashes (recipe key names)."""
    return model.model_dump(mode="json", by_alias=True)


@functools.lru_cache(maxsize=1)
def builtin_generators_digest() -> str:
    """A hash of the code that generates built-in data (`posttrain/data/*.py`): a change to a generator
    (new answer styles, other wrong answers) changes the data, so stages trained on the old data re-run."""
    digest = hashlib.sha256()
    for source in sorted((Path(__file__).parent / "data").glob("*.py")):
        digest.update(source.name.encode() + b"\0")
        update_digest(digest, source)
    return digest.hexdigest()[:16]


def data_fingerprint(spec: DataSpec, recipe_dir: Path, seed: int) -> str:
    """Built-in data: its spec, the seed, the generators' code and the constitution file it names; files:
    their content; hub datasets: their name and split."""
    path = resolve_data_path(spec.source, recipe_dir)
    if path is None:
        if not spec.source.startswith("builtin:"):
            return json_hash([config_dump(spec), seed])
        constitution = resolve_data_path(spec.constitution, recipe_dir) if spec.constitution else None
        text = constitution.read_text() if constitution is not None and constitution.is_file() else None
        return json_hash([config_dump(spec), seed, builtin_generators_digest(), text])
    digest = hashlib.sha256(json.dumps(config_dump(spec), sort_keys=True).encode())
    update_digest(digest, path)
    return digest.hexdigest()[:16]


def stage_data_fingerprints(stage: StageConfig, recipe_dir: Path, seed: int) -> dict[str, str]:
    """The fingerprint of every data spec of a stage, by its dotted location (as the manifest records them)."""
    return {path: data_fingerprint(spec, recipe_dir, seed) for path, spec in data_specs(stage)}


def base_model_fingerprint(loaded: LoadedRecipe) -> str:
    """The recipe's starting model: its spec, and its weights when it is a local folder."""
    spec = loaded.recipe.model
    local = Path(spec.name_or_path)
    if not spec.name_or_path.startswith("builtin:") and local.exists():
        from posttrain.models.checkpoint import weights_hash

        return json_hash([config_dump(spec), weights_hash(local)])
    import posttrain

    return json_hash([config_dump(spec), posttrain.__version__])


def fingerprint_config(stage: StageConfig) -> dict[str, Any]:
    """The stage config as it counts for reuse and resume: without the settings of how often the training
    state is saved, which change no result."""
    config = config_dump(stage)
    train = config.get("train")
    if isinstance(train, dict):
        config["train"] = {k: v for k, v in train.items() if k not in UNHASHED_TRAIN_KEYS}
    return config


def referenced_stages(section: Any) -> set[str]:
    """Names of the stages whose checkpoints a stage config names as ``stage:NAME`` outside its data specs
    (whose ``stage:NAME/OUTPUT`` sources are fingerprinted as data, `linked_data_fingerprint`).

    >>> sorted(referenced_stages({"reward": [{"source": "reward_model", "args": {"path": "stage:rm"}}],
    ...                           "data": DataSpec(source="stage:critique/pairs"), "critic": "policy"}))
    ['rm']
    """
    if isinstance(section, DataSpec):
        return set()
    if isinstance(section, BaseModel):  # every recipe section (not all of them `Strict`)
        section = {key: getattr(section, key) for key in type(section).model_fields}
    if isinstance(section, dict):
        section = list(section.values())
    if isinstance(section, (list, tuple)):
        return set().union(*(referenced_stages(item) for item in section))
    if isinstance(section, str) and section.startswith(STAGE_PREFIX):
        return {section.removeprefix(STAGE_PREFIX).partition("/")[0]}
    return set()


def stage_fingerprints(loaded: LoadedRecipe) -> list[str]:
    """The fingerprint of every stage, in order (cheap: hashes configs and data files only)."""
    recipe = loaded.recipe
    out: list[str] = []
    base = base_model_fingerprint(loaded)
    by_name: dict[str, str] = {}
    for index, stage in enumerate(recipe.stages):
        parent = recipe.parent_of(index)
        data = [
            linked_data_fingerprint(spec, loaded.directory, recipe.seed, by_name)
            or data_fingerprint(spec, loaded.directory, recipe.seed)
            for _, spec in data_specs(stage)
        ]
        config = fingerprint_config(stage)
        parts = [config, by_name[parent] if parent else base, data, recipe.seed]
        referenced = {name: by_name[name] for name in sorted(referenced_stages(stage)) if name in by_name}
        if referenced:  # only then, so that the fingerprints of stages without references stay as they were
            parts.append(referenced)
        fingerprint = json_hash(parts)
        by_name[stage.name] = fingerprint
        out.append(fingerprint)
    return out


def input_hash(checkpoint: Path | None) -> str | None:
    """The weights hash of the checkpoint a stage starts from (from its stage's manifest); None for the
    base model or a checkpoint without a manifest."""
    if checkpoint is None:
        return None
    manifest = read_json(checkpoint.parent / MANIFEST)
    return manifest.get("checkpoint_hash") if manifest else None


def is_complete(stage_dir: Path, fingerprint: str, input_checkpoint: Path | None) -> bool:
    """A stage is finished when its manifest is complete, matches its fingerprint, and was trained from
    the weights its parent holds now (a parent re-trained to other weights invalidates it)."""
    manifest = read_json(stage_dir / MANIFEST)
    return bool(
        manifest
        and manifest.get("complete")
        and manifest.get("fingerprint") == fingerprint
        and manifest.get("input_hash") == input_hash(input_checkpoint)
        and (stage_dir / "checkpoint").is_dir()
    )
