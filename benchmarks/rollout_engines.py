"""Rollout throughput of the three engines side by side: vLLM (``generation.backend: vllm``), posttrain's
native sampler, and transformers' `generate`, same model, prompts and settings, in one process.

    python benchmarks/rollout_engines.py [--sizes tiny llama-25m] [--batch-sizes 32 128] [--new-tokens 256]
                                         [--repeats 3] [--json PATH]

Run it in the vLLM environment (`.ci/vllm_tests` builds ``.venv-vllm``). Every engine samples exactly
``--new-tokens`` tokens per row (temperature 1, no top-p/top-k, float32) from the same left-padded
built-in arithmetic prompts: no row may stop early (native: an end token no vocabulary has; vLLM:
``min_tokens``; HF: ``min_new_tokens``). After one warm-up run of each (vLLM's
first also builds its engine), the engines are timed in turn, ``--repeats`` rounds of one run each, so load
from other processes falls on all alike; figures are medians, ratios the median of per-round ratios.
vLLM's time includes a weight sync before every run (as in training, where one precedes each rollout).

``--sizes``: ``tiny`` (the built-in Qwen2 shape, 0.8M parameters with its 448-token vocabulary),
``micro``, ``llama-25m`` (a Llama shape of 24M parameters: 8 layers, hidden 512, MLP 1408, 8 heads, 4
key/value heads), ``llama-50m`` (50M: 8 layers, hidden 768, MLP 2048, 12 heads, 4 key/value heads),
``qwen2.5-0.5b`` (for a GPU). ``--no-hf`` leaves HF `generate` out (its runs take longest at the larger sizes).
``--vllm-dtype bfloat16`` runs the vLLM engine in bf16 (``generation.vllm.dtype: bfloat16``: the trainer, the
native sampler and HF stay float32, as in training, where the engine's precision is its own; on a CPU it pays
where the CPU has AVX512-BF16 or AMX). ``--native-dtype bfloat16`` samples natively from a bf16 copy of the
model (a policy trained in bf16), for engine against engine in bf16. Threads: the process's torch threads for native and
HF (``--threads``, default all cores); the vLLM engine runs in this process (no OpenMP binding there: vLLM
binds threads only in its worker processes) and uses the same torch thread count. Measured figures:
``benchmarks/results/rollout_engines_cpu.txt``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rollout_vs_hf import build_model, hf_run, our_run, prompts  # noqa: E402  (the sibling benchmark's pieces)

LLAMA_25M = dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4)
LLAMA_50M = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=12, num_key_value_heads=4)
LLAMA = {"llama-25m": LLAMA_25M, "llama-50m": LLAMA_50M}


def build(size: str, device: str):
    """``(model, tokenizer)``: a built-in shape, or the Llama shape of ~25M parameters, randomly initialised."""
    if size not in LLAMA:
        return build_model(size, device, torch.float32)
    from transformers import LlamaConfig, LlamaForCausalLM

    from posttrain.models.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=1024, tie_word_embeddings=True, **LLAMA[size])
    return LlamaForCausalLM(config).to(device).eval(), tokenizer


def vllm_run(model, ids: list[list[int]], new_tokens: int, dtype: str = "float32"):
    """A vLLM sampler over ``model`` (built at the warm-up run), synced before every run."""
    from posttrain.config.rl import VLLMSpec
    from posttrain.rl.sampler import SamplingSettings
    from posttrain.rl.vllm_sampler import VLLMSampler

    class Unstoppable(VLLMSampler):
        """vLLM refuses stop ids outside the vocabulary; ``min_tokens`` keeps every row going instead."""

        def _params(self, settings, seeds):
            params = super()._params(settings, seeds)
            for one in params:
                one.min_tokens = settings.max_new_tokens
            return params

    longest = max(len(p) for p in ids)
    sampler = Unstoppable([0], 0, VLLMSpec(cpu_kv_cache_gib=2, dtype=dtype), max_model_len=longest + new_tokens, seed=0)
    settings = SamplingSettings(max_new_tokens=new_tokens, temperature=1.0)

    def run():
        sampler.weights_changed()
        rollout = sampler.sample(model, ids, settings)
        assert int(rollout.lengths_B.min()) == new_tokens, "a row stopped early"

    return run, sampler


def measure(runs: dict, tokens: int, repeats: int) -> dict:
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    warm_up = {}
    for name, run in runs.items():
        started = time.perf_counter()
        run()
        warm_up[name] = round(time.perf_counter() - started, 2)
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - started)
    row: dict = {f"{name}_tok_s": round(tokens / statistics.median(values)) for name, values in seconds.items()}
    row["vllm_over_native"] = round(statistics.median(n / v for v, n in zip(seconds["vllm"], seconds["native"])), 3)
    if "hf_generate" in seconds:
        row["vllm_over_hf"] = round(statistics.median(h / v for v, h in zip(seconds["vllm"], seconds["hf_generate"])), 3)
        row["native_over_hf"] = round(statistics.median(h / n for n, h in zip(seconds["native"], seconds["hf_generate"])), 3)
    row["warm_up_s"] = warm_up
    row["rounds_s"] = {name: [round(v, 2) for v in values] for name, values in seconds.items()}  # the spread behind the medians
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "llama-25m"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--vllm-dtype", default="float32", choices=["float32", "bfloat16"],
                        help="the vLLM engine's weights (generation.vllm.dtype); native and HF stay float32")
    parser.add_argument("--native-dtype", default="float32", choices=["float32", "bfloat16"],
                        help="the native sampler's model (a bf16 copy: a policy trained in bf16)")
    parser.add_argument("--no-hf", action="store_true", help="time vLLM and the native sampler only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for size in args.sizes:
        model, tokenizer = build(size, "cpu")
        parameters = sum(p.numel() for p in model.parameters())
        native_model = model if args.native_dtype == "float32" else copy.deepcopy(model).to(torch.bfloat16)
        for batch in args.batch_sizes:
            ids = prompts(tokenizer, batch)
            run, sampler = vllm_run(model, ids, args.new_tokens, args.vllm_dtype)
            runs = {
                "vllm": run,
                "native": our_run(native_model, ids, args.new_tokens, "cached", "cpu"),
            }
            if not args.no_hf:
                runs["hf_generate"] = hf_run(model, tokenizer, ids, args.new_tokens, "cpu")
            row = {"size": size, "parameters": parameters, "batch": batch, **measure(runs, batch * args.new_tokens, args.repeats)}
            sampler.close()
            results.append(row)
            hf = (
                f" | HF generate {row['hf_generate_tok_s']:7d} | vLLM/HF {row['vllm_over_hf']:.2f}x | native/HF "
                f"{row['native_over_hf']:.2f}x" if "hf_generate_tok_s" in row else " | HF generate not run"
            )
            print(
                f"{size:10s} ({parameters / 1e6:5.1f}M) batch {batch:4d} x {args.new_tokens}: vLLM {row['vllm_tok_s']:7d} tok/s | "
                f"native {row['native_tok_s']:7d} | vLLM/native {row['vllm_over_native']:.2f}x{hf}",
                flush=True,
            )
    if args.json:
        info = {
            "cpu": platform.processor() or platform.machine(), "threads": args.threads,
            "load_before": os.getloadavg()[0], "new_tokens": args.new_tokens, "vllm_dtype": args.vllm_dtype,
            "native_dtype": args.native_dtype, "results": results,
        }
        Path(args.json).write_text(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
