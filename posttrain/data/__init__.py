"""Datasets: where data comes from (`sources`), loading and checking rows, chat templates, packing, the
built-in tiny world and its tasks, and the constitution files RLAIF stages read."""
