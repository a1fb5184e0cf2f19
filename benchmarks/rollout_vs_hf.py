"""Rollout throughput: posttrain's sampler against transformers' `generate`, same model, prompts and settings.

    python benchmarks/rollout_vs_hf.py [--size tiny] [--batch-sizes 32 128] [--new-tokens 64] [--repeats 5]
                                       [--device cpu] [--dtype float32] [--forward-loop] [--json PATH]

Both sample (temperature 1, no top-p/top-k, fp32 unless ``--dtype``) exactly ``--new-tokens`` tokens per
row from the same left-padded prompts: no end token can stop a row early (`generate` gets
``min_new_tokens``; our sampler is given an end token id the vocabulary does not have). Tokens/s counts
generated tokens. After one warm-up run of each, the two are timed alternately, ``--repeats`` rounds of
one run each, so load from other processes on a shared machine falls on both alike; the ratio printed is
the median of the per-round ratios (the tokens/s figures are medians too). ``--forward-loop`` adds, for
reference, our loop over the model's own forward (``backend=transformers``). ``--size qwen2.5-0.5b``
builds a randomly initialised Qwen2.5-0.5B-shaped model (for a GPU, with ``--dtype bfloat16``).

Remaining differences: `generate` also returns the prompt with the completion and applies its logits
processors; ours also returns each token's log-probability and the masks (what RL needs).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

QWEN25_05B = dict(
    hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
    vocab_size=151936, max_position_embeddings=2048, tie_word_embeddings=True, rope_theta=1_000_000.0,
)


def build_model(size: str, device: str, dtype: torch.dtype):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from posttrain.models.tiny import build_tiny_model, build_tokenizer

    torch.manual_seed(0)
    if size == "qwen2.5-0.5b":
        model, tokenizer = Qwen2ForCausalLM(Qwen2Config(**QWEN25_05B)), build_tokenizer()
    else:
        model, tokenizer = build_tiny_model(size)
    return model.to(device=device, dtype=dtype).eval(), tokenizer


def prompts(tokenizer, batch: int) -> list[list[int]]:
    from posttrain.data.world import arithmetic_rows

    rows = arithmetic_rows("train", batch, seed=0)
    texts = [tokenizer.apply_chat_template(row["messages"][:1], tokenize=False, add_generation_prompt=True) for row in rows]
    return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]


def timed(run, device: str) -> float:
    """Seconds of one call of ``run``."""
    started = time.perf_counter()
    run()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - started


def our_run(model, ids: list[list[int]], new_tokens: int, backend: str, device: str):
    from posttrain.rl.sampler import RolloutSampler, SamplingSettings

    sampler = RolloutSampler([10**9], pad_token_id=0, backend=backend)  # an id no vocabulary has: never stops
    settings = SamplingSettings(max_new_tokens=new_tokens, temperature=1.0)
    generator = torch.Generator(device=device).manual_seed(0)
    return lambda: sampler.sample(model, ids, settings, generator)


def hf_run(model, tokenizer, ids: list[list[int]], new_tokens: int, device: str):
    tokenizer.padding_side = "left"
    batch = tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(device)
    settings = dict(
        do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
        pad_token_id=tokenizer.pad_token_id,
    )

    def run():
        with torch.no_grad():
            model.generate(**batch, **settings)

    return run


def compare(runs: dict, tokens: int, repeats: int, device: str) -> dict:
    """Tokens/s of each run (median over rounds) and the median per-round ratio of ours over HF's."""
    for run in runs.values():
        run()  # warm-up
    seconds = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            seconds[name].append(timed(run, device))
    row = {name: tokens / statistics.median(values) for name, values in seconds.items()}
    row["ratio"] = statistics.median(h / o for o, h in zip(seconds["ours_cached"], seconds["hf_generate"]))
    row["ratio_per_round"] = [round(h / o, 3) for o, h in zip(seconds["ours_cached"], seconds["hf_generate"])]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", help="tiny, micro or qwen2.5-0.5b")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--forward-loop", action="store_true", help="also time our loop over the model's forward")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, tokenizer = build_model(args.size, args.device, getattr(torch, args.dtype))
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    results = []
    for batch in args.batch_sizes:
        ids = prompts(tokenizer, batch)
        runs = {
            "ours_cached": our_run(model, ids, args.new_tokens, "cached", args.device),
            "hf_generate": hf_run(model, tokenizer, ids, args.new_tokens, args.device),
        }
        if args.forward_loop:
            runs["ours_transformers_forward"] = our_run(model, ids, args.new_tokens, "transformers", args.device)
        row = {"batch": batch, **compare(runs, batch * args.new_tokens, args.repeats, args.device)}
        results.append(row)
        print(
            f"batch {batch:4d} x {args.new_tokens} new tokens: ours {row['ours_cached']:9.0f} tok/s | "
            + (f"ours over model forward {row['ours_transformers_forward']:9.0f} tok/s | " if args.forward_loop else "")
            + f"HF generate {row['hf_generate']:9.0f} tok/s | ratio {row['ratio']:.2f}x "
            f"(per round: {', '.join(f'{r:.2f}' for r in row['ratio_per_round'])})",
            flush=True,
        )
    if args.json:
        info = {"size": args.size, "device": device_name, "dtype": args.dtype, "threads": torch.get_num_threads(),
                "new_tokens": args.new_tokens, "results": results}
        with open(args.json, "w") as handle:
            json.dump(info, handle, indent=2)


if __name__ == "__main__":
    main()
