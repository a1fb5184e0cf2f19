"""SFT throughput: posttrain's SFT loop against TRL's `SFTTrainer`, same model, data, shape, in one run.

    python benchmarks/sft_vs_trl.py [--steps 20] [--warmup 3] [--batch-size 8] [--seq-len 256] [--size tiny]

Both sides start from the same randomly initialised built-in model and train on the same packed
built-in arithmetic chats (packing on, sequence length and per-step batch equal, fp32 on CPU, AdamW).
Throughput counts every position of every packed row, timed per optimizer step after `--warmup` steps.
Prints tokens/s for each and the ratio; `--json PATH` also writes the figures.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import platform
import time

import torch


def our_tokens_per_second(model, tokenizer, rows, args) -> float:
    from accelerate import Accelerator

    from posttrain.config.common import TrainSpec
    from posttrain.data.packing import encode_chats, pack
    from posttrain.training.loop import train_loop
    from posttrain.training.metrics import MetricsWriter

    packed = pack(encode_chats(tokenizer, rows), args.seq_len, tokenizer.pad_token_id, split_examples=False)
    stamps: list[float] = []

    class Stamps(MetricsWriter):
        def log(self, step, values, total=None):
            stamps.append(time.perf_counter())

    spec = TrainSpec(
        steps=args.warmup + args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=1e-4,
        schedule="constant", log_every=1,
    )
    train_loop(model, packed, spec, seed=0, accelerator=Accelerator(cpu=True), metrics=Stamps(None, "ours", stream=io.StringIO()))
    seconds = stamps[-1] - stamps[args.warmup - 1]
    return args.steps * args.batch_size * args.seq_len / seconds


def trl_tokens_per_second(model, tokenizer, rows, args, workdir: str) -> float:
    import datasets
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    stamps: list[float] = []

    class Stamps(TrainerCallback):
        def on_step_end(self, *_, **__):
            stamps.append(time.perf_counter())

    config = SFTConfig(
        output_dir=workdir, max_steps=args.warmup + args.steps, per_device_train_batch_size=args.batch_size,
        max_length=args.seq_len, packing=True, learning_rate=1e-4, lr_scheduler_type="constant",
        logging_steps=10_000, save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0,
        seed=0, disable_tqdm=True, bf16=False, fp16=False, gradient_checkpointing=False,  # fp32, no recomputation: as ours (TRL defaults differ)
    )
    dataset = datasets.Dataset.from_list([{"messages": row["messages"]} for row in rows])
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[Stamps()])
    trainer.train()
    seconds = stamps[-1] - stamps[args.warmup - 1]
    return args.steps * args.batch_size * args.seq_len / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--rows", type=int, default=8000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import tempfile

    from posttrain.data.world import arithmetic_rows
    from posttrain.models.tiny import build_tiny_model
    from posttrain.run import quiet_libraries

    quiet_libraries()
    torch.manual_seed(0)
    model, tokenizer = build_tiny_model(args.size)
    rows = arithmetic_rows("train", args.rows, seed=0)
    params = sum(p.numel() for p in model.parameters())
    ours = our_tokens_per_second(copy.deepcopy(model), tokenizer, rows, args)
    with tempfile.TemporaryDirectory() as workdir:
        trl = trl_tokens_per_second(copy.deepcopy(model), tokenizer, rows, args, workdir)
    result = {
        "benchmark": "sft_vs_trl",
        "device": f"cpu ({torch.get_num_threads()} threads, {platform.machine()})",
        "model_parameters": params,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "timed_steps": args.steps,
        "ours_tokens_per_s": round(ours),
        "trl_tokens_per_s": round(trl),
        "ratio": round(ours / trl, 2),
    }
    print(f"model {params / 1e6:.2f}M params, batch {args.batch_size} x seq {args.seq_len}, {args.steps} timed steps")
    print(f"posttrain SFT : {ours:,.0f} tokens/s")
    print(f"TRL SFTTrainer: {trl:,.0f} tokens/s")
    print(f"ratio (ours / TRL): {ours / trl:.2f}x")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
