"""`posttrain export`: a plain checkpoint is copied (without the LoRA adapter kept beside it), an unmerged
LoRA adapter is merged into the base its stage started from, and `--push` fails offline with a clear
message that keeps the exported folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.cli import main
from posttrain.config.common import LoraSpec
from posttrain.errors import CheckpointError, HubError
from posttrain.models.checkpoint import apply_lora, save_checkpoint, weights_hash
from posttrain.models.export import export_checkpoint, push_to_hub

REPO = Path(__file__).resolve().parents[2]


def test_export_copies_a_stage_checkpoint(cli_micro_run, tmp_path: Path, capsys) -> None:
    stage = cli_micro_run.run_dir / "stages" / "sft"
    destination = tmp_path / "exported"
    assert main(["export", str(stage), str(destination)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"copied {stage} -> {destination}", "  tokenizer padding_side: left (for batched generation)"]
    assert weights_hash(destination) == weights_hash(stage / "checkpoint")
    model = AutoModelForCausalLM.from_pretrained(destination)
    tokenizer = AutoTokenizer.from_pretrained(destination)
    assert model.config.vocab_size == len(tokenizer) and tokenizer.padding_side == "left"
    assert not [p for p in destination.parent.iterdir() if ".tmp-" in p.name]


def test_export_refuses_a_non_empty_destination_unless_forced(cli_micro_run, tmp_path: Path) -> None:
    stage = cli_micro_run.run_dir / "stages" / "pretrain"
    destination = tmp_path / "out"
    destination.mkdir()
    (destination / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="exists and is not empty; pass --force"):
        export_checkpoint(stage, destination)
    export_checkpoint(stage, destination, force=True)
    assert not (destination / "keep.txt").exists() and (destination / "config.json").is_file()


@pytest.fixture
def adapter_stage(micro_dir: Path, tmp_path: Path):
    """A stage folder as `lora.merge: false` leaves it: the adapter alone, and a manifest naming its base."""
    model = AutoModelForCausalLM.from_pretrained(micro_dir)
    tokenizer = AutoTokenizer.from_pretrained(micro_dir)
    peft_model = apply_lora(model, LoraSpec(r=4, alpha=8, merge=False))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # B starts at zero, which would make merging a no-op
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    stage = tmp_path / "runs" / "r" / "stages" / "sft"
    save_checkpoint(peft_model, tokenizer, stage / "checkpoint", lora_merge=False)
    (stage / "manifest.json").write_text(json.dumps({"input": str(micro_dir)}))
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        with peft_model.disable_adapter():
            base_logits = peft_model(input_ids=ids).logits
    return stage, ids, expected, base_logits


def test_export_merges_an_adapter_into_the_base_it_started_from(adapter_stage, tmp_path: Path) -> None:
    stage, ids, expected, base_logits = adapter_stage
    assert (stage / "checkpoint" / "adapter_config.json").is_file()
    destination, how = export_checkpoint(stage, tmp_path / "merged")
    assert how == "merged" and not (destination / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(destination)
    with torch.no_grad():
        logits = merged(input_ids=ids).logits
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits, base_logits, atol=1e-3)


def test_push_without_a_token_says_how_to_log_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(HubError, match=r"no Hugging Face token \(run `hf auth login` or set HF_TOKEN\); the exported folder is kept at"):
        push_to_hub(tmp_path, "someone/model")


def test_push_offline_is_a_short_error_and_keeps_the_export(cli_micro_run, tmp_path: Path) -> None:
    destination = tmp_path / "exported"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_not_a_real_token"}
    done = subprocess.run(
        [sys.executable, "-m", "posttrain.cli", "export", str(cli_micro_run.run_dir / "stages" / "sft"), str(destination),
         "--push", "someone/model"],
        capture_output=True, text=True, timeout=120, env=env, cwd=REPO,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    error = done.stderr.strip()
    assert error.startswith("error: cannot push to someone/model: ") and "offline mode is enabled" in error
    assert error.endswith(f"the exported folder is kept at {destination}") and "\n" not in error
    assert (destination / "config.json").is_file()
