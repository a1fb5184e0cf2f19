"""Checkpoints: atomic HF-format saves that plain transformers loads, LoRA merged on save, unsafe loads refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.config.common import LoraSpec, ModelSpec
from posttrain.errors import CheckpointError
from posttrain.models.checkpoint import apply_lora, load_model_and_tokenizer, save_checkpoint, weights_hash

IDS = torch.tensor([[5, 17, 42, 8, 99, 3, 250, 11]])


@torch.no_grad()
def logits(model) -> torch.Tensor:
    model.eval()
    return model(input_ids=IDS, use_cache=False).logits


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name != folder.name)


def test_saved_checkpoint_loads_with_plain_transformers(micro, tmp_path: Path) -> None:
    model, tokenizer = micro
    folder = tmp_path / "checkpoint"
    digest = save_checkpoint(model, tokenizer, folder)
    assert digest == weights_hash(folder) and len(digest) == 16
    assert (folder / "model.safetensors").exists() and not list(folder.glob("*.bin"))
    assert leftovers(folder) == []  # no `.tmp-` staging folder left behind
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=0)
    reloaded_tokenizer = AutoTokenizer.from_pretrained(folder)
    text = "<|user|>What is 2 + 3?<|end|><|assistant|>"
    assert reloaded_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert reloaded_tokenizer.pad_token_id == tokenizer.pad_token_id
    messages = [{"role": "user", "content": "hi"}]
    assert reloaded_tokenizer.apply_chat_template(messages, tokenize=False) == tokenizer.apply_chat_template(
        messages, tokenize=False
    )


def test_overwriting_a_checkpoint(micro, tmp_path: Path) -> None:
    model, tokenizer = micro
    folder = tmp_path / "checkpoint"
    first = save_checkpoint(model, tokenizer, folder)
    with torch.no_grad():
        model.model.norm.weight.mul_(2.0)
    second = save_checkpoint(model, tokenizer, folder)
    assert first != second
    assert leftovers(folder) == []  # neither `.tmp-` nor `.old-` folders remain
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(folder)), logits(model), rtol=0, atol=0)


def test_load_model_and_tokenizer_from_a_checkpoint(micro, micro_dir: Path) -> None:
    model, tokenizer = load_model_and_tokenizer(ModelSpec(), path=micro_dir)
    reference, _ = micro
    torch.testing.assert_close(logits(model), logits(reference), rtol=0, atol=0)
    assert tokenizer.pad_token_id == reference.config.pad_token_id
    built, _ = load_model_and_tokenizer(ModelSpec(name_or_path="builtin:micro"))
    torch.testing.assert_close(logits(built), logits(reference), rtol=0, atol=0)


def test_lora_save_merges_into_a_plain_model(micro, tmp_path: Path) -> None:
    model, tokenizer = micro
    base = logits(model)
    torch.manual_seed(0)
    peft_model = apply_lora(model, LoraSpec(r=4, alpha=8))
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    with torch.no_grad():  # B starts at zero; make the adapters change the output
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    expected = logits(peft_model)
    assert (expected - base).abs().max() > 1e-2  # else "merged equals peft" would prove nothing
    folder = tmp_path / "checkpoint"
    save_checkpoint(peft_model, tokenizer, folder, lora_merge=True)
    assert (folder / "adapter" / "adapter_config.json").exists()
    assert (folder / "adapter" / "adapter_model.safetensors").exists()
    assert not (folder / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(folder)
    assert not any("lora" in name for name in merged.state_dict())
    torch.testing.assert_close(logits(merged), expected, rtol=1e-4, atol=1e-4)


def test_pickle_only_checkpoint_is_refused(micro_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((micro_dir / "config.json").read_text())
    from safetensors.torch import load_file

    torch.save(load_file(micro_dir / "model.safetensors"), folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="no .safetensors weights"):
        load_model_and_tokenizer(ModelSpec(), path=folder)
    with pytest.raises(CheckpointError, match="pickle"):
        load_model_and_tokenizer(ModelSpec(name_or_path=str(folder)))


def test_remote_code_from_the_hub_needs_a_pinned_revision() -> None:
    spec = ModelSpec(name_or_path="some-org/some-model", trust_remote_code=True)
    with pytest.raises(CheckpointError, match="revision"):
        load_model_and_tokenizer(spec)


def test_weights_hash_needs_safetensors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no .safetensors files"):
        weights_hash(tmp_path)


def test_init_std_sets_the_spread_of_a_builtin_models_initial_weights() -> None:
    """The recipe's `model.init_std` reaches the weights: the built-in model's linear layers are drawn with it
    (Qwen2's default is 0.02), and the same seed gives the same weights."""

    def spread(init_std: float | None) -> float:
        model, _ = load_model_and_tokenizer(ModelSpec(name_or_path="builtin:micro", init_std=init_std), None, "cpu")
        return model.model.layers[0].mlp.up_proj.weight.std().item()

    assert abs(spread(None) - 0.02) < 0.002 and abs(spread(0.06) - 0.06) < 0.006
    first, _ = load_model_and_tokenizer(ModelSpec(name_or_path="builtin:micro", init_std=0.06), None, "cpu")
    again, _ = load_model_and_tokenizer(ModelSpec(name_or_path="builtin:micro", init_std=0.06), None, "cpu")
    assert torch.equal(first.model.embed_tokens.weight, again.model.embed_tokens.weight)
