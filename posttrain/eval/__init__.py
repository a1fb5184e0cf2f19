"""Evaluation between stages."""

from posttrain.eval.evaluators import evaluator, register_evaluator

__all__ = ["evaluator", "register_evaluator"]
