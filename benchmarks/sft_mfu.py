"""SFT model FLOPs utilisation (MFU): posttrain's SFT loop on a Qwen2.5-0.5B-shaped model under ZeRO-2.

    python benchmarks/sft_mfu.py [--shape qwen2.5-0.5b] [--seq-len 2048] [--batch-size 4] [--steps 20]
        [--warmup 5] [--zero-stage 2] [--gradient-checkpointing] [--peak-tflops X] [--json PATH]

The model is randomly initialised (no download) with Qwen2.5-0.5B's shape; the data are the built-in
arithmetic chats, packed into rows of ``--seq-len`` tokens (attention kept inside each example), trained
with bf16 autocast on a GPU. Throughput counts every position of every packed row, timed per optimizer step
after ``--warmup`` steps.

FLOPs, per trained token (Kaplan et al., arXiv 2001.08361 §2.1; Chowdhery et al., arXiv 2204.02311
app. B):

- ``6 * N``: N = the parameters that take part in matrix products: every parameter except the input
  embedding table (a lookup), with the LM head counted once even when tied to the embedding.
- attention, stated separately: ``12 * layers * hidden * seq_len`` for the score and value products over
  the full sequence (PaLM's count). Packed rows attend inside each example only and causally, so the
  attention actually computed is smaller; the figure is an upper bound.

MFU = 6·N·tokens/s / peak, where peak is the device's dense bf16 peak (looked up for known GPUs, or
``--peak-tflops``). ``--shape micro`` / ``tiny`` run the same code on a CPU in seconds (no peak there: the
script prints tokens/s and FLOP/s only).
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import time

import torch

# dense bf16 tensor-core peaks, TFLOP/s (vendor data sheets, without sparsity)
PEAK_BF16_TFLOPS = {"H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H200": 989.0, "A100": 312.0}

SHAPES = {
    # Qwen2.5-0.5B's config.json
    "qwen2.5-0.5b": dict(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768,
        rope_theta=1_000_000.0, rms_norm_eps=1e-6,
    ),
}


def build_model(shape: str, seq_len: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from posttrain.models.tiny import build_tiny_model

    if shape in SHAPES:
        torch.manual_seed(0)
        _, tokenizer = build_tiny_model("micro", seed=0)
        config = Qwen2Config(**SHAPES[shape], attn_implementation="sdpa")
        return Qwen2ForCausalLM(config), tokenizer
    return build_tiny_model(shape, seed=0, max_positions=max(512, seq_len))


def matmul_parameters(model) -> int:
    """Parameters in matrix products: all but the input embedding; a tied LM head counts once."""
    embedding = model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    tied = model.get_output_embeddings().weight is embedding
    return total - embedding.numel() + (embedding.numel() if tied else 0)


def peak_tflops(device: torch.device, given: float | None) -> tuple[float | None, str]:
    if device.type != "cuda":
        return given, platform.processor() or "cpu"
    name = torch.cuda.get_device_name(device)
    if given is not None:
        return given, name
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None), name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="qwen2.5-0.5b", help="qwen2.5-0.5b, or a built-in size (micro, tiny)")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--zero-stage", type=int, default=2, help="0: no DeepSpeed (plain Accelerate)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, if not a known GPU")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    from pathlib import Path

    from posttrain.config.common import DataSpec, TrainSpec
    from posttrain.data.loading import load_dataset
    from posttrain.data.packing import encode_chats, pack
    from posttrain.distributed import make_accelerator, shutdown
    from posttrain.training.loop import train_loop
    from posttrain.training.metrics import MetricsWriter

    accelerator = make_accelerator(args.zero_stage or None)
    model, tokenizer = build_model(args.shape, args.seq_len)
    model.to(accelerator.device)
    needed = (args.warmup + args.steps) * args.batch_size * args.grad_accum * accelerator.num_processes
    data = load_dataset(DataSpec(source="builtin:arithmetic", count=needed * args.seq_len // 24), Path("."), 0)
    rows = pack(encode_chats(tokenizer, data.rows), args.seq_len, tokenizer.pad_token_id, split_examples=False)
    stamps: list[float] = []

    class Stamps(MetricsWriter):
        def log(self, step, values, total=None):
            if accelerator.device.type == "cuda":
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    spec = TrainSpec(
        steps=args.warmup + args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, seq_len=args.seq_len,
        lr=1e-4, schedule="constant", log_every=1, gradient_checkpointing=args.gradient_checkpointing,
    )
    n_matmul = matmul_parameters(model)
    config = model.config
    train_loop(model, rows, spec, seed=0, accelerator=accelerator, metrics=Stamps(None, "mfu", stream=io.StringIO()))
    seconds = stamps[-1] - stamps[args.warmup - 1]
    tokens_per_s = args.steps * args.batch_size * args.grad_accum * accelerator.num_processes * args.seq_len / seconds
    model_flops = 6 * n_matmul * tokens_per_s
    attention_flops = 12 * config.num_hidden_layers * config.hidden_size * args.seq_len * tokens_per_s
    peak, device_name = peak_tflops(accelerator.device, args.peak_tflops)
    processes = accelerator.num_processes
    result = {
        "device": device_name, "processes": processes, "shape": args.shape, "matmul_parameters": n_matmul,
        "seq_len": args.seq_len, "batch_size": args.batch_size, "grad_accum": args.grad_accum,
        "zero_stage": args.zero_stage, "gradient_checkpointing": args.gradient_checkpointing,
        "tokens_per_s": round(tokens_per_s, 1),
        "model_tflops_per_s": round(model_flops / 1e12, 3),
        "attention_tflops_per_s_upper_bound": round(attention_flops / 1e12, 3),
        "peak_tflops_per_device": peak,
        "mfu": round(model_flops / (peak * 1e12 * processes), 4) if peak else None,
        "mfu_with_attention_upper_bound": round((model_flops + attention_flops) / (peak * 1e12 * processes), 4) if peak else None,
        "torch": torch.__version__,
    }
    if accelerator.is_main_process:
        print(json.dumps(result, indent=2))
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(result, handle, indent=2)
    shutdown()


if __name__ == "__main__":
    main()
