"""Reward sources: one interface for reward models, verifiers, judges, rules and user functions."""
