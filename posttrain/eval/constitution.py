"""``principle_violations``: how often a model's greedy answers break the built-in world's principles.

The answers to held-out prompts are checked by program against every checkable principle of the built-in
arithmetic constitution (`posttrain.data.rlaif_demonstrations`): ``violation_rate`` is the share of answers that
break at least one, ``violation_rate_<principle>`` the share breaking each. The ground truth of the RLAIF
demonstration: the constitutional stages should lower it without lowering `exact_match` accuracy.
"""

from __future__ import annotations

from typing import Any

from posttrain.config.evaluation import EvalConfig
from posttrain.data.rlaif_demonstrations import arithmetic_constitution
from posttrain.data.packing import ChatRenderer, render_prompt
from posttrain.eval.evaluators import greedy_generate, register_evaluator
from posttrain.rlaif.critique import violation_rates


@register_evaluator("principle_violations")
def principle_violations(model: Any, tokenizer: Any, rows: list[dict[str, Any]], config: EvalConfig) -> dict[str, float]:
    """Violation rates of greedy answers to the rows' prompts (see the module docstring)."""
    renderer = ChatRenderer(tokenizer)
    prompts = [render_prompt(tokenizer, row["messages"], renderer) for row in rows]
    answers = [a.strip() for a in greedy_generate(model, tokenizer, prompts, config.max_new_tokens, config.batch_size)]
    rates = violation_rates(arithmetic_constitution(), answers)
    out = {"violation_rate": rates.pop("any"), "n": float(len(rows))}
    out.update({f"violation_rate_{name}": value for name, value in rates.items()})
    return out
