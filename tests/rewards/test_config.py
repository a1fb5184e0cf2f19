"""RewardEntry: the recipe's one-entry-per-reward configuration."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from posttrain.rewards import RewardEntry, WeightSchedule, check_reward_entries


def test_defaults_and_key() -> None:
    entry = RewardEntry(source="math")
    assert (entry.weight, entry.args, entry.normalize, entry.gate, entry.schedule, entry.name) == (
        1.0, {}, "none", None, None, None,
    )  # fmt: skip
    assert entry.key == "math" and RewardEntry(source="math", name="correct").key == "correct"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"source": "math", "wieght": 2}, "wieght"),
        ({"source": "maths"}, "valid sources: ai_judge, code, environment, format"),
        ({"source": "math", "args": {"answer_feild": "x"}}, "valid arguments: answer_field"),
        ({"source": "python"}, "needs argument(s) 'function'"),
        ({"source": "math", "normalize": "zscore"}, "group_zscore"),
        (
            {"source": "math", "weight": 2, "schedule": {"start": 0, "end": 1, "steps": 10}},
            "either `weight` or `schedule`",
        ),
        ({"source": "math", "schedule": {"start": 0, "end": 1, "steps": 0}}, "greater than 0"),
        ({"source": "format", "gate": "format"}, "cannot gate itself"),
        ({"source": "math", "weight": float("nan")}, "weight\n  Input should be a finite number"),
        ({"source": "math", "weight": float("-inf")}, "weight\n  Input should be a finite number"),
        ({"source": "math", "schedule": {"start": float("nan"), "end": 1, "steps": 5}}, "schedule.start\n  Input should be a finite"),
        ({"source": "math", "schedule": {"start": 0, "end": float("inf"), "steps": 5}}, "schedule.end\n  Input should be a finite"),
    ],
)
def test_invalid_entries_name_the_problem(data: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RewardEntry.model_validate(data)


def test_every_field_has_a_description() -> None:
    for model in (RewardEntry, WeightSchedule):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


def test_entries_are_checked_together() -> None:
    check_reward_entries([RewardEntry(source="format"), RewardEntry(source="math", gate="format")])
    with pytest.raises(ValueError, match="distinct names"):
        check_reward_entries([RewardEntry(source="math"), RewardEntry(source="math")])
    with pytest.raises(ValueError, match="not an entry"):
        check_reward_entries([RewardEntry(source="math", gate="format")])
    with pytest.raises(ValueError, match="cycle"):
        check_reward_entries(
            [RewardEntry(source="math", name="a", gate="b"), RewardEntry(source="math", name="b", gate="a")]
        )


def test_swapping_a_source_is_one_line() -> None:
    one = RewardEntry.model_validate({"source": "math", "weight": 1.0})
    other = RewardEntry.model_validate({"source": "reward_model", "weight": 1.0, "args": {"path": "runs/rm"}})
    assert one.weight == other.weight and other.args == {"path": "runs/rm"}


def test_import_is_torch_free() -> None:
    """Validating a reward config must not import torch or math-verify (that is what keeps it fast)."""
    code = (
        "import time, sys, json; t = time.perf_counter(); "
        "from posttrain.rewards import RewardEntry; RewardEntry(source='reward_model', args={'path': 'x'}); "
        "print(json.dumps([time.perf_counter() - t, 'torch' in sys.modules, 'math_verify' in sys.modules]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    _, torch_loaded, math_verify_loaded = json.loads(done.stdout)
    assert not torch_loaded and not math_verify_loaded
