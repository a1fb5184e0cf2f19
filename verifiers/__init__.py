"""Verifiers: programs that check a model answer (math, code). No torch imports here."""
