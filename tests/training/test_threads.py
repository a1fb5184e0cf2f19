"""Intra-op threads per process: the recipe, then OMP_NUM_THREADS, then one per process under a
multi-process launch, else torch's default (a busy machine only gets a warning: results must not depend on the
load)."""

from __future__ import annotations

import doctest

import pytest
import torch

import posttrain.training.threads as threads
from posttrain.training.threads import choose_threads, configure_threads


@pytest.mark.parametrize(
    ("setting", "env", "cpus", "load", "expected"),
    [
        (3, {"OMP_NUM_THREADS": "1", "LOCAL_WORLD_SIZE": "2"}, 2, 9.0, 3),  # the recipe wins
        (None, {"OMP_NUM_THREADS": "2", "LOCAL_WORLD_SIZE": "2"}, 2, 9.0, None),  # torch follows OMP_NUM_THREADS
        (None, {"LOCAL_WORLD_SIZE": "2"}, 16, 0.5, 1),
        (None, {}, 2, 2.5, None),  # busy: same threads as idle, so the same float32 results
        (None, {}, 2, 0.5, None),
        (None, {"LOCAL_WORLD_SIZE": "1"}, 8, None, None),
    ],
)
def test_choose_threads(setting, env, cpus, load, expected) -> None:
    assert choose_threads(setting, env, cpus, load)[0] == expected


def test_configure_threads_sets_torch_and_doctest(monkeypatch) -> None:
    before = torch.get_num_threads()
    try:
        assert configure_threads(2) == 2 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert doctest.testmod(threads).failed == 0
