"""The resumable training state on its own: what a save holds and restores, that a save is atomic and a
failed one keeps the previous checkpoint, that damaged files are refused, and that nothing is unpickled."""

from __future__ import annotations

import errno
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from posttrain.errors import CheckpointError
from posttrain.training.optimizer import make_optimizer
from posttrain.config.common import TrainSpec
from posttrain.training.state import (
    MARKER,
    TrainCheckpoints,
    complete_checkpoints,
    describe_changes,
    latest_checkpoint,
    remove_stale_staging,
    verify_checkpoint,
)

IDENTITY = {"fingerprint": "f", "config": {"train": {"lr": 0.001}}, "data": {}, "parent": "p", "seed": 0, "world_size": 1}


def trained_model(accelerator, steps: int = 2):
    """A micro model after a few AdamW steps (so the optimizer has moments to save)."""
    from posttrain.models.tiny import build_tiny_model

    model, _ = build_tiny_model("micro", seed=0)
    optimizer = make_optimizer(model, TrainSpec(steps=1, lr=1e-3, weight_decay=0.1))
    ids = torch.arange(16)[None]
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def store(folder: Path, accelerator, **kwargs) -> TrainCheckpoints:
    return TrainCheckpoints(folder, kwargs.pop("every", 2), kwargs.pop("keep_last", 2), IDENTITY, accelerator, **kwargs)


def test_a_restored_state_continues_bit_for_bit(tmp_path: Path, accelerator) -> None:
    """Weights, optimizer moments and every generator come back: the next update and the next random draws
    equal those of the process that saved."""
    model, optimizer = trained_model(accelerator)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    folder = store(tmp_path, accelerator).save(2, model, optimizer, {"tokens_seen": 7, "last": {"loss": 0.25}})
    draws = (random.random(), float(np.random.rand()), torch.rand(3))
    ids = torch.arange(16)[None]
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    after_step = {k: v.clone() for k, v in model.state_dict().items()}

    fresh, fresh_optimizer = trained_model(accelerator, steps=0)
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    values = store(tmp_path, accelerator, resume_from=folder).restore(fresh, fresh_optimizer)
    assert values == {"step": 2, "tokens_seen": 7, "last": {"loss": 0.25}}
    assert random.random() == draws[0] and float(np.random.rand()) == draws[1]
    assert torch.equal(torch.rand(3), draws[2])
    fresh(input_ids=ids, labels=ids).loss.backward()
    fresh_optimizer.step()
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, after_step[name]), name


def test_only_safetensors_and_json_are_written_and_the_marker_lists_them(tmp_path: Path, accelerator) -> None:
    model, optimizer = trained_model(accelerator)
    folder = store(tmp_path, accelerator).save(4, model, optimizer, {})
    names = sorted(p.name for p in folder.iterdir())
    assert names == [MARKER, "model.safetensors", "optimizer.json", "optimizer.safetensors", "rng-rank0.json",
                     "rng-rank0.safetensors", "state.json"]
    assert sorted(json.loads((folder / MARKER).read_text())["files"]) == [n for n in names if n != MARKER]
    assert json.loads((folder / "state.json").read_text())["identity"] == IDENTITY


def test_keeps_the_newest_states_only(tmp_path: Path, accelerator) -> None:
    model, optimizer = trained_model(accelerator)
    keep = store(tmp_path, accelerator, keep_last=2)
    for step in (2, 4, 6):
        keep.save(step, model, optimizer, {})
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [4, 6]
    assert keep.due(8, 10) and not keep.due(7, 10) and not keep.due(10, 10)  # the last step: the stage saves


def test_a_failed_save_keeps_the_previous_state(tmp_path: Path, accelerator, monkeypatch) -> None:
    model, optimizer = trained_model(accelerator)
    keep = store(tmp_path, accelerator)
    first = keep.save(2, model, optimizer, {})
    import safetensors.torch

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_model", disk_full)
    with pytest.raises(CheckpointError, match=r"step 4 .*No space left on device.*last good training state is .*step-00000002"):
        keep.save(4, model, optimizer, {})
    assert latest_checkpoint(tmp_path) == first
    verify_checkpoint(first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000002"]  # no half-written folder


def test_a_folder_without_its_marker_is_not_a_checkpoint_and_is_cleaned(tmp_path: Path, accelerator) -> None:
    model, optimizer = trained_model(accelerator)
    done = store(tmp_path, accelerator).save(2, model, optimizer, {})
    unfinished = tmp_path / "step-00000004.tmp"
    unfinished.mkdir()
    (unfinished / "model.safetensors").write_bytes(b"partial")
    renamed_without_marker = tmp_path / "step-00000006"
    renamed_without_marker.mkdir()
    assert latest_checkpoint(tmp_path) == done
    assert remove_stale_staging(tmp_path) == [unfinished]


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage_header"])
def test_damaged_files_are_refused_with_the_file_named(tmp_path: Path, accelerator, damage: str) -> None:
    model, optimizer = trained_model(accelerator)
    folder = store(tmp_path, accelerator).save(2, model, optimizer, {})
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
        expected = "truncated or corrupt"
    elif damage == "flip":
        data[-5] ^= 0xFF
        path.write_bytes(bytes(data))
        expected = "SHA-256 differs"
    else:
        path.write_bytes(b"\xff" * len(data))
        expected = "truncated or corrupt safetensors"
    with pytest.raises(CheckpointError, match=f"model.safetensors.*{expected}"):
        store(tmp_path, accelerator, resume_from=folder).restore(*trained_model(accelerator, steps=0))


def test_a_truncated_model_checkpoint_is_refused_before_loading(micro_dir: Path, tmp_path: Path) -> None:
    import shutil

    from posttrain.config.common import ModelSpec
    from posttrain.models.checkpoint import load_model_and_tokenizer

    copy = Path(shutil.copytree(micro_dir, tmp_path / "model"))
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="model.safetensors: truncated or corrupt safetensors file"):
        load_model_and_tokenizer(ModelSpec(name_or_path=str(copy)))


class WritesAFile:
    """A pickle payload: unpickling it calls os.system, which creates ``target``."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


def test_a_pickle_that_runs_code_is_never_loaded(micro_dir: Path, tmp_path: Path, accelerator) -> None:
    import pickle
    import shutil

    from posttrain.config.common import ModelSpec
    from posttrain.models.checkpoint import load_model_and_tokenizer

    control = tmp_path / "control"
    pickle.loads(pickle.dumps(WritesAFile(control)))
    assert control.exists()  # the payload is live: plain unpickling runs it
    target = tmp_path / "pwned"
    payload = pickle.dumps({"weight": WritesAFile(target)})
    # a model folder holding only pickle weights
    model_folder = Path(shutil.copytree(micro_dir, tmp_path / "model"))
    (model_folder / "model.safetensors").unlink()
    (model_folder / "pytorch_model.bin").write_bytes(payload)
    with pytest.raises(CheckpointError, match="no .safetensors weights found"):
        load_model_and_tokenizer(ModelSpec(name_or_path=str(model_folder)))
    # a training state whose tensors were swapped for the pickle (its record updated to match)
    model, optimizer = trained_model(accelerator)
    folder = store(tmp_path / "resume", accelerator).save(2, model, optimizer, {})
    for name in ("model.safetensors", "optimizer.safetensors"):
        (folder / name).write_bytes(payload)
    record = json.loads((folder / MARKER).read_text())
    for name in ("model.safetensors", "optimizer.safetensors"):
        import hashlib

        record["files"][name] = {"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    (folder / MARKER).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="truncated or corrupt safetensors"):
        store(tmp_path / "resume", accelerator, resume_from=folder).restore(*trained_model(accelerator, steps=0))
    assert not target.exists()
    # torch.load, should anything call it, refuses the payload too with weights_only=True
    (tmp_path / "state.pt").write_bytes(payload)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "state.pt", weights_only=True)
    assert not target.exists()


def test_remote_code_needs_a_commit_not_a_branch() -> None:
    from posttrain.config.common import ModelSpec
    from posttrain.models.checkpoint import is_pinned_revision, load_model_and_tokenizer

    for revision in (None, "main", "v1.0", "abc123"):
        spec = ModelSpec(name_or_path="some-org/some-model", trust_remote_code=True, revision=revision)
        with pytest.raises(CheckpointError, match="pin `model.revision` to a commit"):
            load_model_and_tokenizer(spec)
    assert is_pinned_revision("0123456789abcdef0123456789abcdef01234567")


def test_remote_code_from_a_local_folder_is_allowed(micro_dir: Path) -> None:
    from posttrain.config.common import ModelSpec
    from posttrain.models.checkpoint import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(ModelSpec(name_or_path=str(micro_dir), trust_remote_code=True))
    assert model.config.model_type == "qwen2"


def test_changes_are_named() -> None:
    current = {**IDENTITY, "config": {"train": {"lr": 0.002}}, "data": {"data": "b"}, "world_size": 2}
    saved = {**IDENTITY, "data": {"data": "a"}}
    assert describe_changes(saved, current) == [
        "config train.lr: 0.001 -> 0.002",
        "data data: content changed (a -> b)",
        "the number of processes: 1 -> 2",
    ]
    assert describe_changes(IDENTITY, dict(IDENTITY)) == []


def test_a_nan_stops_the_loop_naming_the_step_and_the_last_good_state(tmp_path: Path, accelerator) -> None:
    import io

    from posttrain.data.packing import encode_chats, pack
    from posttrain.data.world import arithmetic_rows
    from posttrain.errors import NonFiniteLossError
    from posttrain.models.tiny import build_tiny_model
    from posttrain.training.loop import causal_lm_loss_sum, train_loop
    from posttrain.training.metrics import MetricsWriter

    model, tokenizer = build_tiny_model("micro", seed=0)
    rows = pack(encode_chats(tokenizer, arithmetic_rows("train", 32, 0, (1,))), 32, tokenizer.pad_token_id, split_examples=False)
    calls = {"n": 0}

    def nan_on_third_step(model, batch):
        loss, count = causal_lm_loss_sum(model, batch)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 3 else loss), count

    keep = store(tmp_path, accelerator, every=2)
    spec = TrainSpec(steps=4, batch_size=2, seq_len=32, lr=1e-3, log_every=1, save_every=2)
    with pytest.raises(NonFiniteLossError, match=r"loss=nan .* at step 3 \(rows .*step-00000002.*--resume"):
        train_loop(model, rows, spec, seed=0, accelerator=accelerator, metrics=MetricsWriter(None, "t", stream=io.StringIO()),
                   loss_sum_fn=nan_on_third_step, checkpoints=keep)
    verify_checkpoint(latest_checkpoint(tmp_path))
