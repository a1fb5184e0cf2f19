"""What a checkpoint does on the calculator world's held-out problems: where its greedy episodes go wrong.

    python benchmarks/calculator_episodes.py RUN_DIR [--stages sft grpo] [--count 600] [--seed 0]

Runs greedy episodes (`builtin:calculator`, 3 turns, 64 episode tokens, 24 new tokens a turn, as
recipes/tools_calculator.yaml) of each stage's checkpoint in ``RUN_DIR/stages/NAME/checkpoint`` on the
held-out problems of ``--seed`` (the run's seed: the held-out problems the run's own evaluation used) and
counts each episode as one of:

    call, right            called the calculator with the problem's numbers and answered its result
    call miscopied         the call's numbers or operation are not the problem's
    result miscopied       the call was right but the final answer is not the tool's result
    direct, right / wrong  answered without calling the tool
    other                  several calls, no final answer, or a failed episode

With ``builtin:calculator``'s ``tool_share`` the SFT model answers some problems directly (the weak
teacher's estimate) and GRPO should move those episodes to ``call, right``.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

import torch

from posttrain.config.common import DataSpec, ModelSpec
from posttrain.config.rl import EnvironmentSpec
from posttrain.models.checkpoint import load_model_and_tokenizer
from posttrain.rl.episodes import EpisodeRunner
from posttrain.rl.prompts import load_prompts
from posttrain.rl.sampler import RolloutSampler, SamplingSettings, end_token_ids

KINDS = ("call, right", "call miscopied", "result miscopied", "direct, right", "direct, wrong", "other")
CALL = re.compile(r"^<<calculator: (\d+) ([+-]) (\d+)>>$")


def classify(messages: list[dict], question: str, answer: str, level: int, failed: bool) -> str:
    """One of `KINDS` for a finished episode's messages (the user's question first).

    >>> classify([{"role": "user", "content": "What is 71 - 28?"}, {"role": "assistant", "content": "40"}], "What is 71 - 28?", "43", 4, False)
    'direct, wrong'
    >>> call = [{"role": "assistant", "content": "<<calculator: 71 - 23>>"}, {"role": "tool", "content": "48"}]
    >>> classify(call + [{"role": "assistant", "content": "48"}], "What is 71 - 28?", "43", 4, False)
    'call miscopied'
    """
    replies = [m["content"].strip() for m in messages if m["role"] == "assistant"]
    tools = [m["content"].strip() for m in messages if m["role"] == "tool"]
    if failed or not replies:
        return "other"
    if not tools:
        return "direct, right" if replies[-1] == answer else "direct, wrong"
    call = CALL.match(replies[0])
    if len(tools) != 1 or len(replies) != 2 or call is None:
        return "other"
    numbers = re.findall(r"\d+", question)
    a, op, b = call.groups()
    if [a, b] != numbers[-2:] or op != ("-" if level == 4 else "+"):  # level 4 subtracts, level 5 adds
        return "call miscopied"
    return "call, right" if replies[1] == tools[0] == answer else "result miscopied"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--stages", nargs="+", default=["sft", "grpo"])
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = load_prompts(DataSpec(source="builtin:calculator", split="test", count=args.count), Path("."), args.seed).rows
    environment = EnvironmentSpec(name="builtin:calculator", max_turns=3, max_episode_tokens=64)
    settings = SamplingSettings(max_new_tokens=24, temperature=0.0)
    print(f"{args.run_dir}: {len(rows)} held-out problems (seed {args.seed}), greedy episodes")
    print("stage  " + "  ".join(f"{kind:>16}" for kind in KINDS))
    for stage in args.stages:
        model, tokenizer = load_model_and_tokenizer(ModelSpec(), args.run_dir / "stages" / stage / "checkpoint")
        model.eval()
        sampler = RolloutSampler(end_token_ids(model, tokenizer), tokenizer.pad_token_id)
        runner = EpisodeRunner(environment, tokenizer, sampler, max_prompt_tokens=128)
        counts: Counter[str] = Counter()
        with torch.no_grad():
            for start in range(0, len(rows), 64):
                batch = rows[start : start + 64]
                for row, episode in zip(batch, runner.run(model, batch, settings).episodes):
                    failed = episode.failure is not None
                    example = row.example
                    counts[classify(episode.messages, row.question, example["answer"], example["level"], failed)] += 1
        print(f"{stage:<6} " + "  ".join(f"{counts[kind] / len(rows):>16.3f}" for kind in KINDS))


if __name__ == "__main__":
    main()
