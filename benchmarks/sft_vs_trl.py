"""SFT throughput: posttrain's SFT loop against TRL's `SFTTrainer`, same model, data, shape, in one run.

    python benchmarks/sft_vs_trl.py [--steps 20] [--warmup 3] [--batch-size 8] [--seq-len 256] [--size tiny]
    OMP_NUM_THREADS=1 python benchmarks/sft_vs_trl.py --size llama12m   # issue 19's side-by-side

Both sides start from the same randomly initialised model and train on the same packed built-in
arithmetic chats (packing on, sequence length and per-step batch equal, fp32 on CPU, AdamW). `--size
tiny` is the built-in model; `llama12m` a 12M-parameter `LlamaForCausalLM` with a 32,768-token ChatML
tokenizer (tests/models/family_tokenizers.py; eos `<|im_end|>`). Throughput is timed per optimizer step
after `--warmup` steps and counts real tokens: our rows without the padding at their ends, TRL's
padding-free packed batches (every token real). Both train with loss on every token (TRL's default for a
`messages` dataset; posttrain's SFT stage trains on assistant tokens only), so the final logged losses and
the held-out perplexities of both trained models (`posttrain.eval.evaluators.perplexity` on the test
split's chats, all tokens) compare. Prints the figures and the ratio; `--json PATH` also writes them.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import platform
import time

import torch


def our_run(model, tokenizer, rows, args) -> tuple[float, float]:
    """(real tokens/s over the timed steps, final loss) of posttrain's SFT loop."""
    from accelerate import Accelerator

    from posttrain.config.common import TrainSpec
    from posttrain.data.packing import encode_chats, pack, unpadded_length
    from posttrain.training.loop import train_loop
    from posttrain.training.metrics import MetricsWriter
    from posttrain.training.schedule import step_rows

    # loss on every token, as TRL's SFTTrainer trains a `messages` dataset by default (assistant_only_loss
    # needs a template with {% generation %} markers): the same objective, so losses and perplexities compare
    packed = pack(encode_chats(tokenizer, rows, loss_on_prompt=True), args.seq_len, tokenizer.pad_token_id, split_examples=False)
    stamps: list[float] = []
    losses: list[float] = []

    class Stamps(MetricsWriter):
        def log(self, step, values, total=None):
            stamps.append(time.perf_counter())
            losses.append(values["loss"])

    spec = TrainSpec(
        steps=args.warmup + args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=1e-4,
        schedule="constant", log_every=1,
    )
    train_loop(model, packed, spec, seed=0, accelerator=Accelerator(cpu=True), metrics=Stamps(None, "ours", stream=io.StringIO()))
    seconds = stamps[-1] - stamps[args.warmup - 1]
    real = sum(
        unpadded_length(packed[i], tokenizer.pad_token_id)
        for step in range(args.warmup, args.warmup + args.steps) for i in step_rows(len(packed), step, args.batch_size, 0)
    )
    return real / seconds, losses[-1]


def trl_run(model, tokenizer, rows, args, workdir: str) -> tuple[float, float]:
    """(real tokens/s over the timed steps, final loss) of TRL's `SFTTrainer`."""
    import datasets
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    stamps: list[float] = []
    batch_tokens: list[int] = []

    class Stamps(TrainerCallback):
        def on_step_end(self, *_, **__):
            stamps.append(time.perf_counter())

    config = SFTConfig(
        output_dir=workdir, max_steps=args.warmup + args.steps, per_device_train_batch_size=args.batch_size,
        max_length=args.seq_len, packing=True, learning_rate=1e-4, lr_scheduler_type="constant",
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0,
        seed=0, disable_tqdm=True, bf16=False, fp16=False, gradient_checkpointing=False,  # fp32, no recomputation: as ours (TRL defaults differ)
    )
    dataset = datasets.Dataset.from_list([{"messages": row["messages"]} for row in rows])
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[Stamps()])
    collate = trainer.data_collator

    def counting(examples):  # one call per optimizer step (no workers, no accumulation)
        batch = collate(examples)
        mask = batch.get("attention_mask")
        batch_tokens.append(int(mask.sum()) if mask is not None else int(batch["input_ids"].numel()))
        return batch

    trainer.data_collator = counting
    trainer.train()
    seconds = stamps[-1] - stamps[args.warmup - 1]
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return sum(batch_tokens[args.warmup : args.warmup + args.steps]) / seconds, losses[-1]


def heldout_perplexity(model, tokenizer, args) -> float:
    from posttrain.config.common import DataSpec
    from posttrain.config.evaluation import EvalConfig
    from posttrain.data.world import arithmetic_rows
    from posttrain.eval.evaluators import perplexity

    config = EvalConfig(name="heldout", kind="perplexity", data=DataSpec(source="builtin:arithmetic"), seq_len=args.seq_len)
    return perplexity(model, tokenizer, arithmetic_rows("test", 400, seed=0), config)["perplexity"]


def build(size: str):
    """(model, tokenizer): the built-in model of that size, or `llama12m`."""
    if size != "llama12m":
        from posttrain.models.tiny import build_tiny_model

        return build_tiny_model(size)
    import sys
    from pathlib import Path

    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.models.family_tokenizers import family_tokenizer

    tokenizer = family_tokenizer("qwen_instruct", 32768)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=1024, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return model, tokenizer


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


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
    from posttrain.run import quiet_libraries

    quiet_libraries()
    torch.manual_seed(0)
    model, tokenizer = build(args.size)
    rows = arithmetic_rows("train", args.rows, seed=0)
    params = sum(p.numel() for p in model.parameters())
    ours_model, trl_model = copy.deepcopy(model), copy.deepcopy(model)
    ours, ours_loss = our_run(ours_model, tokenizer, rows, args)
    with tempfile.TemporaryDirectory() as workdir:
        trl, trl_loss = trl_run(trl_model, tokenizer, rows, args, workdir)
    ours_ppl, trl_ppl = heldout_perplexity(ours_model, tokenizer, args), heldout_perplexity(trl_model, tokenizer, args)
    result = {
        "benchmark": "sft_vs_trl",
        "device": f"cpu ({torch.get_num_threads()} threads, {platform.machine()})",
        "cpu": _cpu_name(),
        "load_1min_at_end": round(os.getloadavg()[0], 1),
        "model": args.size,
        "model_parameters": params,
        "vocabulary": len(tokenizer),
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "timed_steps": args.steps,
        "ours_tokens_per_s": round(ours),
        "trl_tokens_per_s": round(trl),
        "ratio": round(ours / trl, 2),
        "ours_final_loss": round(ours_loss, 4),
        "trl_final_loss": round(trl_loss, 4),
        "ours_heldout_perplexity": round(ours_ppl, 2),
        "trl_heldout_perplexity": round(trl_ppl, 2),
    }
    print(f"model {args.size}: {params / 1e6:.2f}M params, vocabulary {len(tokenizer)}, batch {args.batch_size} x seq "
          f"{args.seq_len}, {args.steps} timed steps, real tokens counted")
    print(f"posttrain SFT : {ours:,.0f} tokens/s, final loss {ours_loss:.4f}, held-out perplexity {ours_ppl:.2f}")
    print(f"TRL SFTTrainer: {trl:,.0f} tokens/s, final loss {trl_loss:.4f}, held-out perplexity {trl_ppl:.2f}")
    print(f"ratio (ours / TRL): {ours / trl:.2f}x")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
