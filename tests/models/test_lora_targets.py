"""LoRA `target_modules` are checked against the model's module names before training, and at
`posttrain validate` on the model built on the meta device: peft alone trains `[q_projj, v_proj]` with only
`v_proj` (and saves the typo) and ends `[q_projj]` in its own traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from posttrain.cli import main
from posttrain.config.common import LoraSpec
from posttrain.errors import RecipeError
from posttrain.models.checkpoint import apply_lora
from posttrain.models.lora_targets import adaptable_module_names, meta_model


@pytest.mark.parametrize("targets", [["q_projj", "v_proj"], ["q_projj"]])
def test_a_misspelt_target_module_is_an_error_listing_the_names(micro, targets) -> None:
    model, _ = micro
    with pytest.raises(RecipeError, match=r"'q_projj' match no module of the model \(Qwen2ForCausalLM\); adaptable "
                                          r"modules: .*q_proj.*v_proj"):
        apply_lora(model, LoraSpec(r=4, target_modules=targets))


def test_valid_targets_are_adapted(micro) -> None:
    model, _ = micro
    wrapped = apply_lora(model, LoraSpec(r=4, target_modules=["q_proj", "v_proj"]))
    adapted = {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in wrapped.named_parameters() if "lora_A" in name}
    assert adapted == {"q_proj", "v_proj"}


def test_meta_model_has_the_module_names_without_weights() -> None:
    model = meta_model("builtin:micro")
    assert next(model.parameters()).device.type == "meta"
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"} <= set(
        adaptable_module_names(model)
    )
    assert meta_model("no-such-org/no-such-model-offline") is None


def test_validate_checks_lora_targets(tmp_path: Path, write_recipe, micro_recipe, capsys) -> None:
    text = micro_recipe.format(output_dir=tmp_path / "run").replace(
        "    kind: sft\n", "    kind: sft\n    lora: {r: 4, target_modules: [q_projj, v_proj]}\n", 1
    )
    recipe = write_recipe(tmp_path, text)
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "stages[1] (sft).lora.target_modules: 'q_projj' match no module" in err and "v_proj" in err
    assert main(["validate", str(write_recipe(tmp_path, text.replace("q_projj", "q_proj"), "ok.yaml"))]) == 0


def test_a_module_peft_cannot_adapt_is_a_one_line_error(micro) -> None:
    model, _ = micro
    # an RMSNorm exists under that name but is no layer LoRA can adapt
    with pytest.raises(RecipeError, match=r"^lora: peft refused these settings: Target module Qwen2RMSNorm.* is not supported"):
        apply_lora(model, LoraSpec(r=4, target_modules=["input_layernorm"]))


def test_validate_reads_a_local_model_config_without_weights(tmp_path: Path, write_recipe, micro_recipe, capsys) -> None:
    """Phi-3 fuses q/k/v into `qkv_proj`: a Llama-style target list fails at validate, from config.json alone."""
    from transformers import Phi3Config

    Phi3Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
               vocab_size=128, pad_token_id=0).save_pretrained(tmp_path / "phi3")
    assert not list((tmp_path / "phi3").glob("*.safetensors"))
    text = micro_recipe.format(output_dir=tmp_path / "run").replace("builtin:micro", str(tmp_path / "phi3")).replace(
        "    kind: sft\n", "    kind: sft\n    lora: {r: 4, target_modules: [q_proj, v_proj]}\n", 1
    )
    assert main(["validate", str(write_recipe(tmp_path, text))]) == 2
    err = capsys.readouterr().err
    assert "'q_proj', 'v_proj' match no module of the model (Phi3ForCausalLM)" in err and "qkv_proj" in err
