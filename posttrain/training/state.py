"""Resumable training state: periodic checkpoints inside a stage, written atomically and without pickle.

A stage with ``train.save_every: N`` saves, every N steps, everything needed to continue exactly where it
stopped, under ``<stage>/resume/step-<8 digits>/``::

    model.safetensors          every weight of the trained module (LoRA adapters, value head included)
    optimizer.safetensors      the optimizer's tensor state, keyed ``<param index>/<name>``
    optimizer.json             its parameter groups and non-tensor state
    rng-rank<R>.safetensors    torch CPU (and CUDA) generator states of process R
    rng-rank<R>.json           Python and NumPy generator states of process R
    state.json                 step (which is also the data position: the order of rows is a pure function
                               of (seed, step)), counters, the loop's last values, and the stage's identity
    COMPLETE                   written last: size and SHA-256 of every file above

Tensors are stored as safetensors and everything else as JSON, so loading never unpickles anything. A
save goes to ``step-<N>.tmp``, every file is flushed to disk, the ``COMPLETE`` marker is written, the
folder is renamed into place and its parent flushed: a process killed at any point leaves the previous
checkpoint as the newest complete one. Only the newest ``keep_last`` are kept.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from posttrain.errors import CheckpointError
from posttrain.files import file_sha256, fsync_dir, fsync_file, write_json_atomic
from posttrain.models.checkpoint import check_safetensors

MARKER = "COMPLETE"
_STEP_FOLDER = re.compile(r"^step-(\d{8})$")


def step_folder_name(step: int) -> str:
    return f"step-{step:08d}"


def complete_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every complete checkpoint under ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        match = _STEP_FOLDER.match(child.name)
        if match and (child / MARKER).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint under ``folder`` (a stage's ``resume/``), or None."""
    found = complete_checkpoints(folder)
    return found[-1][1] if found else None


def remove_stale_staging(folder: Path) -> list[Path]:
    """Deletes half-written checkpoint folders that a killed process left in ``folder``; returns them.

    ``*.tmp`` folders (training state) always; ``*.tmp-<pid>`` / ``*.old-<pid>`` (final checkpoints) when
    no process with that id is alive.
    """
    removed = []
    if not folder.is_dir():
        return removed
    for child in folder.iterdir():
        match = re.search(r"\.(tmp|old)(?:-(\d+))?$", child.name)
        if not match or not child.is_dir():
            continue
        pid = match.group(2)
        if pid is not None and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        shutil.rmtree(child, ignore_errors=True)
        removed.append(child)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------------------------------------
# integrity


def verify_checkpoint(folder: Path) -> dict[str, Any]:
    """Checks every file of a training-state checkpoint against its ``COMPLETE`` record; returns the record.

    Raises:
        CheckpointError: naming the file that is missing, truncated or changed.
    """
    marker = folder / MARKER
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{folder}: not a complete training-state checkpoint ({err})") from None
    for name, expected in record["files"].items():
        path = folder / name
        advice = f"delete {folder} to resume from the checkpoint before it"
        if not path.is_file():
            raise CheckpointError(f"{path}: missing from the checkpoint; {advice}")
        if path.stat().st_size != expected["size"]:
            raise CheckpointError(
                f"{path}: truncated or corrupt ({path.stat().st_size} bytes, {expected['size']} were written); {advice}"
            )
        if name.endswith(".safetensors"):
            check_safetensors(path)
        if file_sha256(path) != expected["sha256"]:
            raise CheckpointError(f"{path}: corrupt (its SHA-256 differs from the one written); {advice}")
    return record


def _write_marker(staging: Path) -> None:
    """Records size and hash of every file, then writes the marker; the last write of a save."""
    files = {}
    for path in sorted(staging.iterdir()):
        fsync_file(path)
        files[path.name] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    write_json_atomic(staging / MARKER, {"files": files}, indent=1, default=None)
    fsync_dir(staging)


# ---------------------------------------------------------------------------------------------------------
# what is stored


def _optimizer_files(optimizer: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    other: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{index}/{name}"] = value.detach().to("cpu").contiguous()
            else:
                other.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "state": other}


def _load_optimizer(optimizer: Any, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta["state"].items():
        state.setdefault(int(index), {}).update(values)
    groups = [{**group, "betas": tuple(group["betas"])} if "betas" in group else group for group in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _rng_files() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    import numpy as np

    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, value in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda/{index}"] = value
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    meta = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(position), int(has_gauss), float(cached)],
    }
    return tensors, meta


def _restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda/{i}"] for i in range(len([k for k in tensors if k.startswith("cuda/")]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached))


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    check_safetensors(path)
    return load_file(str(path))


# ---------------------------------------------------------------------------------------------------------
# what changed


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def describe_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two stage identities (see `TrainCheckpoints`), one line per difference."""
    changes = []
    old, new = _flatten(saved.get("config", {})), _flatten(current.get("config", {}))
    for key in sorted(set(old) | set(new)):
        if old.get(key, "<unset>") != new.get(key, "<unset>"):
            changes.append(f"config {key}: {old.get(key, '<unset>')!r} -> {new.get(key, '<unset>')!r}")
    old_data, new_data = saved.get("data", {}), current.get("data", {})
    for key in sorted(set(old_data) | set(new_data)):
        if old_data.get(key) != new_data.get(key):
            changes.append(f"data {key}: content changed ({old_data.get(key)} -> {new_data.get(key)})")
    for key, what in (
        ("parent", "the model it starts from"),
        ("input_hash", "the weights of the checkpoint it starts from"),
        ("seed", "the recipe seed"),
        ("world_size", "the number of processes"),
    ):
        if saved.get(key) != current.get(key):
            changes.append(f"{what}: {saved.get(key)} -> {current.get(key)}")
    return changes


# ---------------------------------------------------------------------------------------------------------


class TrainCheckpoints:
    """Saves and restores the resumable training state of one stage.

    Args:
        folder: the stage's ``resume/`` folder.
        every: save after every this many steps (None: never).
        keep_last: how many complete checkpoints to keep.
        identity: what the state was trained with (config, data and parent fingerprints, seed, world size);
            stored with every checkpoint so a resume with other settings can be refused (`describe_changes`).
        accelerator: the stage's accelerator (process index, barriers, unwrapping).
        resume_from: a checkpoint to restore at the start of training, or None to start afresh.
    """

    def __init__(
        self,
        folder: Path,
        every: int | None,
        keep_last: int,
        identity: dict[str, Any],
        accelerator: Any,
        resume_from: Path | None = None,
    ):
        self.folder, self.every, self.keep_last = Path(folder), every, keep_last
        self.identity, self.accelerator, self.resume_from = identity, accelerator, resume_from

    def due(self, step: int, total: int) -> bool:
        """Whether to save after 1-based step ``step`` (not after the last: the stage's checkpoint follows)."""
        return self.every is not None and step % self.every == 0 and step < total

    def last_good(self) -> str:
        """The newest complete checkpoint, in words for an error message."""
        latest = latest_checkpoint(self.folder)
        if latest is None:
            return "no training state was saved in this stage yet"
        return f"the last good training state is {latest} (continue from it with `posttrain run RECIPE --resume`)"

    def save(self, step: int, module: Any, optimizer: Any, values: dict[str, Any]) -> Path:
        """Writes the state after 1-based ``step``; ``values`` are the loop's counters (JSON).

        Raises:
            CheckpointError: the save failed (e.g. disk full); the previous checkpoint is left as it was.
        """
        accelerator = self.accelerator
        final = self.folder / step_folder_name(step)
        staging = final.with_name(final.name + ".tmp")
        main = accelerator.is_main_process
        try:
            if main:
                if staging.exists():
                    shutil.rmtree(staging)
                staging.mkdir(parents=True)
            accelerator.wait_for_everyone()
            self._write_files(staging, step, module, optimizer, values)
            accelerator.wait_for_everyone()
            if main:
                _write_marker(staging)
                if final.exists():
                    shutil.rmtree(final)
                staging.rename(final)
                fsync_dir(self.folder)
                self._prune()
        except OSError as err:
            if main:
                shutil.rmtree(staging, ignore_errors=True)
            raise CheckpointError(
                f"could not save the training state of step {step} to {final} ({err}); {self.last_good()}"
            ) from None
        accelerator.wait_for_everyone()
        return final

    def _write_files(self, staging: Path, step: int, module: Any, optimizer: Any, values: dict[str, Any]) -> None:
        from safetensors.torch import save_file, save_model

        rank = self.accelerator.process_index
        rng_tensors, rng_meta = _rng_files()
        save_file(rng_tensors, str(staging / f"rng-rank{rank}.safetensors"))
        write_json_atomic(staging / f"rng-rank{rank}.json", rng_meta, indent=1, default=None)
        if not self.accelerator.is_main_process:
            return
        save_model(self._unwrap(module), str(staging / "model.safetensors"))
        optimizer_tensors, optimizer_meta = _optimizer_files(optimizer)
        save_file(optimizer_tensors, str(staging / "optimizer.safetensors"))
        write_json_atomic(staging / "optimizer.json", optimizer_meta, indent=1, default=None)
        state = {"step": step, "identity": self.identity, "values": values}
        write_json_atomic(staging / "state.json", state, indent=1, default=None)

    def _unwrap(self, module: Any) -> Any:
        """The bare module. `accelerator.unwrap_model` imports DeepSpeed when it is installed (seconds, on the
        resume path), so it is called only for a module that is wrapped (DDP, DeepSpeed, torch.compile)."""
        if hasattr(module, "module") or hasattr(module, "_orig_mod"):
            return self.accelerator.unwrap_model(module)
        return module

    def _prune(self) -> None:
        for _, path in complete_checkpoints(self.folder)[: -self.keep_last]:
            shutil.rmtree(path, ignore_errors=True)

    def restore(self, module: Any, optimizer: Any) -> dict[str, Any] | None:
        """Loads ``resume_from`` into ``module`` and ``optimizer`` and this process's RNGs.

        Returns:
            None when there is nothing to resume; else ``{"step": step, **values}`` as saved.
        """
        if self.resume_from is None:
            return None
        from safetensors.torch import load_model

        folder = self.resume_from
        verify_checkpoint(folder)
        state = json.loads((folder / "state.json").read_text())
        target = self._unwrap(module)
        check_safetensors(folder / "model.safetensors")
        missing, unexpected = load_model(target, str(folder / "model.safetensors"), strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"{folder}: the saved weights do not fit this stage's model (missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]})"
            )
        meta = json.loads((folder / "optimizer.json").read_text())
        _load_optimizer(optimizer, _load_tensors(folder / "optimizer.safetensors"), meta)
        rank = self.accelerator.process_index
        rng_path = folder / f"rng-rank{rank}.safetensors"
        if not rng_path.is_file():
            raise CheckpointError(f"{folder}: no random-number state for process {rank}")
        _restore_rng(_load_tensors(rng_path), json.loads((folder / f"rng-rank{rank}.json").read_text()))
        return {"step": state["step"], **state["values"]}


def read_state(folder: Path) -> dict[str, Any]:
    """The ``state.json`` of a checkpoint (step, identity, values)."""
    try:
        return json.loads((folder / "state.json").read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{folder}: unreadable state.json ({err})") from None
