"""Every stage kind on small random models of the architectures users fine-tune most, each with a 32k-token
BPE tokenizer and its family's chat conventions (tests/models/family_tokenizers.py): Llama with a Llama 3
*base* tokenizer and Qwen2 with a Qwen2.5 *base* tokenizer (eos is not the end-of-turn token), Qwen3,
Mistral, Gemma 2, Gemma 3 and Phi-3. Pre-training, SFT (full and LoRA), reward model, DPO, GRPO (math and
code rewards), PPO and constitutional critique/revision each run a step or two, then export +
`from_pretrained` + batched chat-template generation.

The large vocabulary is the point: the built-in tiny model's 512 tokens hid a sampler defect (issue 22).
A random model never ends its answers, so the constitutional stage's critic gets a fixed, usable revision
after generating (its own generation still runs); everything else is the families' own models.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from posttrain.models.special_tokens import end_of_turn_token_id
from posttrain.pipeline import Pipeline
from posttrain.recipe import load_recipe
from posttrain.training.metrics import MetricsWriter
from tests.models.family_tokenizers import CONVENTIONS, family_tokenizer

CONSTITUTION = Path(__file__).resolve().parents[2] / "recipes" / "constitutions" / "arithmetic.yaml"
VOCAB = 32768
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
             max_position_embeddings=256, tie_word_embeddings=True)


def _config(family: str, tokenizer):
    import transformers

    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
               bos_token_id=tokenizer.bos_token_id)
    if family == "llama":
        return transformers.LlamaConfig(**SMALL, **ids)
    if family == "qwen2":
        return transformers.Qwen2Config(**SMALL, **ids)
    if family == "qwen3":
        return transformers.Qwen3Config(**SMALL, head_dim=16, **ids)
    if family == "mistral":
        return transformers.MistralConfig(**SMALL, head_dim=16, sliding_window=None, **ids)
    if family == "gemma2":
        return transformers.Gemma2Config(**SMALL, head_dim=16, query_pre_attn_scalar=16, sliding_window=16, **ids)
    if family == "gemma3":
        return transformers.Gemma3TextConfig(**SMALL, head_dim=16, query_pre_attn_scalar=16, sliding_window=16, **ids)
    if family == "phi3":
        return transformers.Phi3Config(**SMALL, **ids)
    raise ValueError(family)


# family -> the tokenizer convention it is tested with
FAMILIES = {
    "llama": "llama3_base", "qwen2": "qwen_base", "qwen3": "qwen_instruct", "mistral": "mistral",
    "gemma2": "gemma", "gemma3": "gemma", "phi3": "phi3",
}


def save_family_model(family: str, folder: Path) -> Path:
    from transformers import AutoModelForCausalLM, GenerationConfig

    tokenizer = family_tokenizer(FAMILIES[family], VOCAB)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(family, tokenizer))
    # a base checkpoint's generation config names only the tokenizer's eos
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


RECIPE = """\
name: family
output_dir: {run}
evaluate_base: false
model: {{name_or_path: "{model}"}}
stages:
  - {{name: pretrain, kind: pretrain, evaluate: false, data: {{source: "builtin:corpus", count: 16}},
     train: {{steps: 1, batch_size: 4, seq_len: 64}}}}
  - {{name: sft, kind: sft, from: pretrain, data: {{source: "builtin:arithmetic", count: 32, levels: [1]}},
     train: {{steps: 2, batch_size: 4, seq_len: 64, lr: 1.0e-3}}}}
  - {{name: sft_lora, kind: sft, from: pretrain, evaluate: false, data: {{source: "builtin:arithmetic", count: 8}},
     lora: {{r: 4, target_modules: all-linear}}, train: {{steps: 1, batch_size: 4, seq_len: 64}}}}
  - {{name: reward_model, kind: reward_model, from: sft, evaluate: false,
     data: {{source: "builtin:preferences", count: 8}}, train: {{steps: 1, batch_size: 4, seq_len: 64}}}}
  - {{name: dpo, kind: dpo, from: sft, evaluate: false, data: {{source: "builtin:preferences", count: 8}},
     train: {{steps: 1, batch_size: 4, seq_len: 64}}}}
  - {{name: grpo, kind: grpo, from: sft, evaluate: false, data: {{source: "builtin:arithmetic", count: 8}},
     reward: [{{source: math, args: {{workers: 1}}}}], group_size: 2, generation: {{max_new_tokens: 4}},
     train: {{steps: 1, prompts_per_step: 2}}}}
  - {{name: grpo_code, kind: grpo, from: sft, evaluate: false, data: {{source: "builtin:code", count: 4}},
     reward: [{{source: code, args: {{allow_code_execution: true, timeout_s: 5.0, max_workers: 1}}}}], group_size: 2,
     generation: {{max_new_tokens: 8}}, train: {{steps: 1, prompts_per_step: 2}}}}
  - {{name: ppo, kind: ppo, from: sft, evaluate: false, data: {{source: "builtin:arithmetic", count: 8}},
     reward: [{{source: reward_model, args: {{path: "stage:reward_model"}}}}], group_size: 2,
     generation: {{max_new_tokens: 4}}, train: {{steps: 1, prompts_per_step: 2}}}}
  - {{name: critique, kind: constitutional, from: sft, evaluate: false, constitution: {constitution},
     data: {{source: "builtin:arithmetic", count: 2, levels: [1]}}, rounds: 1,
     response: {{max_new_tokens: 4}}, revise: {{max_new_tokens: 4}}}}
evaluations:
  - {{name: arith, kind: exact_match, data: {{source: "builtin:arithmetic", split: test, count: 4}}, max_new_tokens: 4}}
"""


def _quiet_init(original):
    def init(self, path, stage, is_main=True, stream=None, **options):
        original(self, path, stage, is_main, io.StringIO() if stream is None else stream, **options)

    return init


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_stage_kind_runs_on_the_family(family, tmp_path: Path, accelerator, monkeypatch, capsys) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    import posttrain.rlaif.language_model as language_model
    from posttrain.cli import main

    model_dir = save_family_model(family, tmp_path / "model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    turn = end_of_turn_token_id(tokenizer)
    assert turn == tokenizer.convert_tokens_to_ids(CONVENTIONS[FAMILIES[family]].end_of_turn)
    monkeypatch.setattr(MetricsWriter, "__init__", _quiet_init(MetricsWriter.__init__))
    generate = language_model.RoleModel.answer

    def answer_then_revise(self, texts, settings, generator, *backend):
        out = generate(self, texts, settings, generator, *backend)  # the family model generates as usual
        return [("The answer is 5.", False) for _ in out]  # (text, cut off): a finished, usable revision

    monkeypatch.setattr(language_model.RoleModel, "answer", answer_then_revise)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(run=tmp_path / "run", model=model_dir, constitution=CONSTITUTION))
    table = Pipeline(load_recipe(recipe), accelerator=accelerator, log=lambda line: None).run()
    assert [row["stage"] for row in table] == ["sft"] and 0 <= table[0]["arith.accuracy"] <= 1
    stages = tmp_path / "run" / "stages"
    assert all((stages / name / "manifest.json").is_file() for name in
               ("pretrain", "sft", "sft_lora", "reward_model", "dpo", "grpo", "grpo_code", "ppo", "critique"))

    exported = tmp_path / "exported"
    assert main(["export", str(stages / "sft"), str(exported)]) == 0
    model = AutoModelForCausalLM.from_pretrained(exported)
    tokenizer = AutoTokenizer.from_pretrained(exported)
    assert tokenizer.padding_side == "left" and len(tokenizer) >= VOCAB
    eos = GenerationConfig.from_pretrained(exported).eos_token_id
    assert turn in ([eos] if isinstance(eos, int) else eos)
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
             for q in ("What is 2 + 3?", "Ann has 4 cups and gets 5 more. How many cups does Ann have now?")]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 2 and batch["input_ids"].shape[1] < out.shape[1] <= batch["input_ids"].shape[1] + 3
    assert (batch["attention_mask"][:, -1] == 1).all()  # left padding: both prompts end where generation starts
