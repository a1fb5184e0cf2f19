"""DAPO's overlong punishment and the dynamic-sampling test, by hand."""

from __future__ import annotations

import pytest
import torch

from posttrain.algorithms.dapo import informative_groups, overlong_penalty


def test_overlong_penalty_by_hand() -> None:
    # L_max 16, L_cache 4: no penalty up to 12 tokens, then (12 - |y|) / 4: 13 -> -0.25, 15 -> -0.75, 16 -> -1
    lengths_B = torch.tensor([1, 12, 13, 15, 16, 20])
    assert overlong_penalty(lengths_B, 16, 4).tolist() == [0.0, 0.0, -0.25, -0.75, -1.0, -1.0]
    assert overlong_penalty(lengths_B, 16, 4, penalty=0.5).tolist() == [0.0, 0.0, -0.125, -0.375, -0.5, -0.5]
    with pytest.raises(ValueError, match="overlong buffer"):
        overlong_penalty(lengths_B, 16, 0)


def test_informative_groups_by_hand() -> None:
    # groups of 3: mixed; all equal; equal once the excluded 5.0 is left out; one valid; differing by 1e-7
    rewards_B = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 5.0, 0.0, 1.0, 2.0, 0.3, 0.3, 0.3 + 1e-7])
    valid_B = torch.tensor([True] * 8 + [False, True, False, False] + [True] * 3)
    assert informative_groups(rewards_B, valid_B, 3).tolist() == [True, False, False, False, False]
