"""Preference evaluators on held-out pairs, and which model and rows each evaluator takes.

- ``pairwise_accuracy`` (reward models): share of pairs whose chosen text scores above the rejected one.
- ``preference_accuracy`` (language models): share of pairs whose chosen response has the higher summed
  log-probability, the quantity DPO raises relative to its reference.

Ties count as wrong. With built-in pairs, the accuracy of each pair kind is reported too
(``accuracy_correct``, ``accuracy_format``). The pipeline loads a reward-model checkpoint as a sequence
classifier and runs on it only the evaluators that take one (`evaluated_model_type`).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

from posttrain.config.evaluation import EvalConfig
from posttrain.data.preferences import PreferencePair, encode_pairs, load_preferences
from posttrain.eval.evaluators import register_evaluator
from posttrain.training.pairs import response_logprobs, reward_scores, score_pairs

ModelType = Literal["causal_lm", "reward_model"]
# evaluator kinds that read preference pairs, and the kind of model each one scores
PREFERENCE_EVALUATORS: dict[str, ModelType] = {
    "pairwise_accuracy": "reward_model",
    "preference_accuracy": "causal_lm",
}


def evaluated_model_type(kind: str) -> ModelType:
    """The kind of model an evaluator scores; every evaluator but the reward-model ones takes a causal LM."""
    return PREFERENCE_EVALUATORS.get(kind, "causal_lm")


def evaluation_rows(config: EvalConfig, recipe_dir: Path, seed: int) -> list[Any]:
    """An evaluation's rows: preference pairs for the preference evaluators, none for `lm_eval` (its tasks
    read their own data), chat/text rows otherwise."""
    if config.data is None:
        return []
    if config.kind in PREFERENCE_EVALUATORS:
        return load_preferences(config.data, recipe_dir, seed).pairs
    from posttrain.data.loading import load_dataset

    return load_dataset(config.data, recipe_dir, seed, purpose="evaluate").rows


def _accuracies(pairs: list[PreferencePair], chosen: list[float], rejected: list[float]) -> dict[str, float]:
    wins = [c > r for c, r in zip(chosen, rejected)]
    out = {
        "accuracy": sum(wins) / len(wins),
        "margin": sum(c - r for c, r in zip(chosen, rejected)) / len(wins),
        "n": float(len(wins)),
    }
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for pair, win in zip(pairs, wins):
        if isinstance(pair.extra.get("kind"), str):
            by_kind[pair.extra["kind"]].append(win)
    for kind, kind_wins in sorted(by_kind.items()):
        out[f"accuracy_{kind}"] = sum(kind_wins) / len(kind_wins)
    return out


@register_evaluator("pairwise_accuracy")
def pairwise_accuracy(model: Any, tokenizer: Any, rows: list[PreferencePair], config: EvalConfig) -> dict[str, float]:
    """Reward model: share of pairs scored chosen > rejected, and the mean score gap (``margin``)."""
    encoded = encode_pairs(tokenizer, rows, config.seq_len)
    chosen, rejected = score_pairs(reward_scores, model, encoded, config.batch_size)
    return _accuracies(rows, chosen, rejected)


@register_evaluator("preference_accuracy")
def preference_accuracy(model: Any, tokenizer: Any, rows: list[PreferencePair], config: EvalConfig) -> dict[str, float]:
    """Language model: share of pairs with log p(chosen) > log p(rejected), and the mean log-prob gap."""
    encoded = encode_pairs(tokenizer, rows, config.seq_len)
    chosen, rejected = score_pairs(response_logprobs, model, encoded, config.batch_size)
    return _accuracies(rows, chosen, rejected)
