"""Sample generations per stage: the same fixed prompts, answered greedily by every evaluated checkpoint.

Written at evaluation time to ``stages/<stage>/samples.json`` (``base/samples.json`` for the starting
model) so the run report can show, side by side, what each stage changed. The prompts are the recipe's
``logging.sample_prompts``, or else the first ``logging.samples`` prompts of its first ``exact_match``
evaluation (with their reference answers).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posttrain.config.evaluation import EvalConfig
from posttrain.files import json_hash, write_json_atomic
from posttrain.recipe import Recipe

SAMPLES_FILE = "samples.json"


@dataclass(frozen=True)
class SamplePlan:
    """Which prompts to sample and the key that says whether stored samples are still current."""

    recipe: Recipe
    recipe_dir: Path

    def enabled(self) -> bool:
        settings = self.recipe.logging
        return settings.samples > 0 and (bool(settings.sample_prompts) or self._evaluation() is not None)

    def key(self, model_hash: str) -> str:
        settings = self.recipe.logging
        evaluation = self._evaluation()
        source = evaluation.model_dump(mode="json") if evaluation is not None else None
        parts = [model_hash, settings.samples, settings.sample_prompts, settings.sample_max_new_tokens, source, self.recipe.seed]
        return json_hash(parts)

    def is_current(self, folder: Path, model_hash: str) -> bool:
        stored = read_samples(folder)
        return stored is not None and stored.get("key") == self.key(model_hash)

    def prompts(self) -> list[dict[str, Any]]:
        """``[{"messages": [...], "answer": ...?}]``: chat prompts (without the assistant's answer)."""
        settings = self.recipe.logging
        if settings.sample_prompts:
            return [{"messages": [{"role": "user", "content": text}]} for text in settings.sample_prompts[: settings.samples]]
        from posttrain.data.loading import load_dataset

        evaluation = self._evaluation()
        rows = load_dataset(evaluation.data, self.recipe_dir, self.recipe.seed, purpose="evaluate").rows[: settings.samples]
        out = []
        for row in rows:
            messages = row["messages"]
            if messages[-1]["role"] == "assistant":
                answer = row.get("answer", messages[-1]["content"])
                messages = messages[:-1]
            else:
                answer = row.get("answer")
            out.append({"messages": messages, **({"answer": str(answer)} if answer is not None else {})})
        return out

    def write(self, folder: Path, model_hash: str, model: Any, tokenizer: Any) -> None:
        """Generates greedy completions of the prompts and stores them with their key."""
        from posttrain.data.packing import ChatRenderer, render_prompt
        from posttrain.eval.evaluators import greedy_generate

        started = time.time()
        prompts = self.prompts()
        renderer = ChatRenderer(tokenizer)
        texts = [render_prompt(tokenizer, p["messages"], renderer) for p in prompts]
        completions = greedy_generate(model, tokenizer, texts, self.recipe.logging.sample_max_new_tokens, batch_size=16)
        samples = [
            {"prompt": _user_text(p["messages"]), **({"answer": p["answer"]} if "answer" in p else {}), "completion": c}
            for p, c in zip(prompts, completions)
        ]
        record = {"key": self.key(model_hash), "samples": samples, "seconds": round(time.time() - started, 3)}
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / SAMPLES_FILE, record)  # every process evaluates; none reads a torn file

    def _evaluation(self) -> EvalConfig | None:
        """The first exact-match evaluation: its rows are chat prompts with reference answers."""
        return next((e for e in self.recipe.evaluations if e.kind == "exact_match"), None)


def _user_text(messages: list[dict[str, str]]) -> str:
    return "\n".join(m["content"] for m in messages if m["role"] != "assistant")


def read_samples(folder: Path) -> dict[str, Any] | None:
    """The stored samples of a stage folder, or None."""
    try:
        return json.loads((folder / SAMPLES_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
