"""GRPO step time: posttrain's `grpo` stage against TRL's `GRPOTrainer`, same model, prompts, group size,
batch, completion length and reward function, in one run.

    python benchmarks/grpo_vs_trl.py [--steps 10] [--warmup 1] [--rounds 2] [--prompts 8] [--group-size 4]
                                     [--new-tokens 32] [--size tiny] [--vllm] [--vllm-dtype auto] [--json PATH]

``--vllm`` (in the vLLM environment, `.ci/vllm_tests`) also times ours with ``generation.backend: vllm``:
its engine is built in the warm-up step (not timed) and its weights synced before every rollout (timed);
``--vllm-dtype bfloat16`` runs that engine in bf16 (the trainer stays float32). ``--size llama-25m`` /
``llama-50m``: the randomly initialised Llama shapes of benchmarks/rollout_engines.py, saved once to a
temporary folder that every side loads (the compute floor too).

Shape (defaults): the built-in ~0.85M-parameter Qwen2-shaped model, 8 prompts x G=4 = 32 completions per
step, at most 32 new tokens, temperature 1, one optimizer step per generation, beta = 0, fp32 on CPU. The
reward is the share of digits in the completion (`digit_share`), the same function for both. Each side
starts from the same random initialisation and sees the same built-in arithmetic questions. Seconds per
step are timed over ``--steps`` steps after ``--warmup`` steps; completion tokens/s is what each side
reports as generated per step, divided by its step time. The two sides run alternately, ``--rounds``
times each (a fresh run every round), so load from other processes on a shared machine falls on both
alike; the figures are medians over rounds and the ratio is the median of the per-round ratios.

Also printed, as a yardstick: the compute floor of one step, timed in the same process as the median of
``--steps`` runs of (a) the generation's matrix work, one forward over prompt + completion of the 32 rows
without a cache (what a KV-cache decoder computes, give or take attention), and (b) one forward+backward
of the model over the same rows. No GRPO implementation can take less than roughly (a) + (b); the
ratio TRL / floor bounds the speed-up any implementation can show over TRL at this shape and machine.

Remaining differences (state them with the figures): with beta = 0 TRL computes no reference model
forward; ours still runs it because the KL to the reference is logged even when beta = 0 (a
reward-hacking guard): one extra no-grad forward per step (through our cached decoder, each distinct prompt
once), which TRL's figure does not include. TRL also logs more per step (entropy, clip
ratios, completion-length statistics); ours logs its per-step metrics to a writer that discards them.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch


def digit_share(completion: str) -> float:
    """The reward: the share of characters of the completion that are digits."""
    return sum(ch.isdigit() for ch in completion) / max(len(completion), 1)


def digit_share_reward(prompt: str, completion: str, example: dict) -> float:
    """`digit_share` with the signature of posttrain's `python` reward source."""
    return digit_share(completion)


def model_name(args) -> str:
    """What both sides load: a built-in size, or the folder `main` saved a Llama shape to (``--size llama-*``)."""
    return args.model_dir or f"builtin:{args.size}"


def load_model(args):
    """``(model, tokenizer)`` as TRL and the compute floor get them: the same weights ours loads."""
    if args.model_dir is None:
        from posttrain.models.tiny import build_tiny_model

        return build_tiny_model(args.size)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(args.model_dir), AutoTokenizer.from_pretrained(args.model_dir)


def save_llama(size: str, folder: Path) -> str:
    """The Llama shapes of benchmarks/rollout_engines.py, randomly initialised, with the built-in tokenizer."""
    from rollout_engines import build

    model, tokenizer = build(size, "cpu")
    model.save_pretrained(folder / size)
    tokenizer.save_pretrained(folder / size)
    return str(folder / size)


def ours(args, workdir: Path, backend: str = "native") -> tuple[float, float]:
    from accelerate import Accelerator

    from posttrain.config.common import ModelSpec
    from posttrain.config.grpo import GRPOConfig
    from posttrain.stages import StageContext, stage_class
    from posttrain.training.metrics import MetricsWriter

    config = GRPOConfig.model_validate({
        "name": "grpo", "kind": "grpo",
        "data": {"source": "builtin:arithmetic", "count": args.prompts * (args.steps + args.warmup)},
        "reward": [{"source": "python", "args": {"function": f"{Path(__file__).resolve()}:digit_share_reward"}}],
        "group_size": args.group_size,
        "generation": {"max_new_tokens": args.new_tokens, "temperature": 1.0, "backend": backend,
                       "vllm": {"dtype": args.vllm_dtype}},
        "train": {"steps": args.steps + args.warmup, "prompts_per_step": args.prompts, "lr": 1e-5},
    })
    stamps: list[float] = []
    tokens: list[float] = []

    class Stamps(MetricsWriter):
        def log(self, step, values, total=None):
            stamps.append(time.perf_counter())
            tokens.append(values["completion_tokens"])

    context = StageContext(
        config=config, model_spec=ModelSpec(name_or_path=model_name(args)), input_checkpoint=None,
        stage_dir=workdir / f"ours_{backend}", recipe_dir=workdir, seed=0, accelerator=Accelerator(cpu=True),
        metrics=Stamps(None, "ours", stream=io.StringIO()),
    )
    stage_class("grpo")(context).train()
    seconds = (stamps[-1] - stamps[args.warmup - 1]) / args.steps
    return seconds, sum(tokens[args.warmup:]) / args.steps / seconds


def compute_floor(args) -> float:
    """Seconds of one forward over 32 full rows (no grad) plus one forward+backward: see the docstring."""
    model, _ = load_model(args)
    model.train()
    rows = args.prompts * args.group_size
    ids = torch.randint(3, model.config.vocab_size, (rows, 12 + args.new_tokens), generator=torch.Generator().manual_seed(0))

    def step() -> None:
        with torch.no_grad():
            model(input_ids=ids, logits_to_keep=args.new_tokens)
        logits = model(input_ids=ids, logits_to_keep=args.new_tokens + 1).logits
        torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, -args.new_tokens:, None]).mean().backward()
        model.zero_grad(set_to_none=True)

    step()
    seconds = []
    for _ in range(args.steps):
        started = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def trl(args, workdir: Path) -> tuple[float, float]:
    import datasets
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from posttrain.data.world import arithmetic_rows

    model, tokenizer = load_model(args)
    rows = arithmetic_rows("train", args.prompts * (args.steps + args.warmup), seed=0)
    dataset = datasets.Dataset.from_list([{"prompt": row["messages"][:1]} for row in rows])
    stamps: list[float] = []
    lengths: list[float] = []

    class Stamps(TrainerCallback):
        def on_step_end(self, *_, **__):
            stamps.append(time.perf_counter())

        def on_log(self, _args, _state, _control, logs=None, **__):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    def reward(prompts, completions, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [digit_share(text) for text in texts]

    config = GRPOConfig(
        output_dir=str(workdir / "trl"), max_steps=args.steps + args.warmup, learning_rate=1e-5,
        per_device_train_batch_size=args.prompts * args.group_size, num_generations=args.group_size,
        max_completion_length=args.new_tokens, temperature=1.0, beta=0.0, logging_steps=1, report_to=[],
        save_strategy="no", use_cpu=True, bf16=False, disable_dropout=True, shuffle_dataset=False,
    )
    trainer = GRPOTrainer(
        model=model, reward_funcs=reward, args=config, train_dataset=dataset, processing_class=tokenizer,
        callbacks=[Stamps()],
    )
    trainer.train()
    seconds = (stamps[-1] - stamps[args.warmup - 1]) / args.steps
    completions = args.prompts * args.group_size
    return seconds, sum(lengths[args.warmup:]) * completions / args.steps / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--size", default="tiny", help="a built-in size, or llama-25m / llama-50m (rollout_engines.py's shapes)")
    parser.add_argument("--vllm-dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="ours with vLLM: the engine's weights (generation.vllm.dtype)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--vllm", action="store_true", help="also time ours with generation.backend: vllm (run in the vLLM environment)"
    )
    args = parser.parse_args()
    saved = tempfile.TemporaryDirectory()
    args.model_dir = save_llama(args.size, Path(saved.name)) if args.size.startswith("llama-") else None
    runs: dict[str, list[tuple[float, float]]] = {"ours": [], "trl": [], **({"ours_vllm": []} if args.vllm else {})}
    floors: list[float] = []
    for round_index in range(args.rounds):
        with tempfile.TemporaryDirectory() as folder:
            runs["ours"].append(ours(args, Path(folder)))
            runs["trl"].append(trl(args, Path(folder)))
            if args.vllm:
                runs["ours_vllm"].append(ours(args, Path(folder), "vllm"))
                print(f"round {round_index + 1}: ours with vLLM {runs['ours_vllm'][-1][0]:.3f} s/step", flush=True)
        floors.append(compute_floor(args))
        (ours_s, _), (trl_s, _) = runs["ours"][-1], runs["trl"][-1]
        print(f"round {round_index + 1}: ours {ours_s:.3f} s/step, TRL {trl_s:.3f} s/step, floor {floors[-1]:.3f} s, "
              f"ratio {trl_s / ours_s:.2f}x", flush=True)
    ours_seconds, ours_tokens = (statistics.median(v) for v in zip(*runs["ours"]))
    trl_seconds, trl_tokens = (statistics.median(v) for v in zip(*runs["trl"]))
    per_round = [t[0] / o[0] for o, t in zip(runs["ours"], runs["trl"])]
    tokens_ratio = statistics.median(o[1] / t[1] for o, t in zip(runs["ours"], runs["trl"]))
    floor = statistics.median(floors)
    print(f"ours: {ours_seconds:.3f} s/step, {ours_tokens:.0f} completion tokens/s")
    print(f"TRL:  {trl_seconds:.3f} s/step, {trl_tokens:.0f} completion tokens/s")
    if args.vllm:
        vllm_seconds, vllm_tokens = (statistics.median(v) for v in zip(*runs["ours_vllm"]))
        print(f"ours with vLLM: {vllm_seconds:.3f} s/step, {vllm_tokens:.0f} completion tokens/s")
    print(f"compute floor (one no-grad forward + one forward/backward over the step's rows): {floor:.3f} s")
    print(f"speed-up: {statistics.median(per_round):.2f}x per step, {tokens_ratio:.2f}x tokens/s "
          f"(per round: {', '.join(f'{r:.2f}' for r in per_round)}); TRL / floor = {trl_seconds / floor:.2f}x")
    if args.json:
        info = {"device": platform.processor() or "cpu", "threads": torch.get_num_threads(), **vars(args),
                "ours_s_per_step": ours_seconds, "ours_tokens_per_s": ours_tokens,
                "trl_s_per_step": trl_seconds, "trl_tokens_per_s": trl_tokens, "floor_s": floor,
                "ratio_per_round": per_round,
                **({"ours_vllm_s_per_step": vllm_seconds, "ours_vllm_tokens_per_s": vllm_tokens} if args.vllm else {})}
        with open(args.json, "w") as handle:
            json.dump(info, handle, indent=2)


if __name__ == "__main__":
    main()
