"""Datasets: loading user files, chat templates, packing, and the built-in tiny world."""
