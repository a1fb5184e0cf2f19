"""Evaluation between stages."""

from posttrain.eval.evaluators import evaluator, register_evaluator
from posttrain.eval import preference  # noqa: F401,E402  (registers the preference evaluators)
from posttrain.eval import constitution  # noqa: F401,E402  (registers principle_violations)

__all__ = ["evaluator", "register_evaluator"]
