"""Use posttrain reward sources from plain TRL: turn one into a `reward_funcs` callable.

TRL (1.16) calls each reward function as ``f(prompts=..., completions=..., completion_ids=..., **columns)``
where `columns` are the dataset's other columns (one list each) plus `trainer_state`, `log_extra`,
`log_metric` (and `environments`). The adapter turns the columns into one example dict per completion,
reads the step from `trainer_state.global_step`, optionally marks completions without EOS as truncated,
and logs a `CompositeReward`'s per-source metrics through `log_metric`. The `**columns` catch-all is TRL's
calling convention, not ours: the wrapped source still checks the fields it requires by name.

Examples whose result is an infrastructure error return None, which TRL treats as "no reward" (NaN,
ignored in its sums) rather than 0.

>>> from posttrain.rewards.format_reward import FormatReward
>>> func = as_trl_reward_func(FormatReward(pattern="yes", mode="search"), name="says_yes")
>>> func.__name__, func(prompts=["q", "q"], completions=["yes", "no"])
('says_yes', [1.0, 0.0])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from posttrain.rewards.base import TRUNCATED_FIELD, RewardResult, RewardSource
from posttrain.rewards.compose import CompositeReward
from posttrain.rewards.config import RewardEntry

_TRL_RESERVED = ("trainer_state", "log_extra", "log_metric", "environments", "completion_ids")


def message_text(value: Any) -> str:
    """Plain text of a TRL prompt/completion: a string, or a list of chat messages (contents joined).

    >>> message_text([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    'hi\\nyo'
    """
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence):
        return "\n".join(str(message.get("content", "")) for message in value if isinstance(message, Mapping))
    return str(value)


class TRLRewardFunction:
    """A TRL reward function wrapping a `RewardSource` or a `CompositeReward` (see module docstring).

    Attributes:
        __name__: The name TRL logs the reward under (`rewards/<name>/mean`).
    """

    def __init__(
        self,
        reward: RewardSource | CompositeReward,
        *,
        name: str,
        eos_token_id: int | None = None,
        error_value: float | None = None,
    ) -> None:
        self.reward = reward
        self.__name__ = name
        self.eos_token_id = eos_token_id
        self.error_value = error_value

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
        trainer_state = columns.get("trainer_state")
        log_metric = columns.get("log_metric")
        completion_ids = columns.get("completion_ids")
        step = int(getattr(trainer_state, "global_step", 0) or 0)
        data = {key: value for key, value in columns.items() if key not in _TRL_RESERVED}
        examples: list[dict[str, Any]] = [
            {key: value[i] for key, value in data.items()} for i in range(len(completions))
        ]
        if self.eos_token_id is not None and completion_ids is not None:
            for example, ids in zip(examples, completion_ids):
                example.setdefault(TRUNCATED_FIELD, len(ids) == 0 or int(ids[-1]) != self.eos_token_id)
        prompt_texts = [message_text(prompt) for prompt in prompts]
        completion_texts = [message_text(completion) for completion in completions]
        if isinstance(self.reward, CompositeReward):
            result = self.reward(prompt_texts, completion_texts, examples=examples, step=step)
            if callable(log_metric):
                for metric, value in result.metrics.items():
                    log_metric(metric, value)
            return [self.error_value if skip else total for total, skip in zip(result.totals, result.excluded)]
        results = self.reward(prompt_texts, completion_texts, examples=examples, step=step)
        return [self._value(result) for result in results]

    def _value(self, result: RewardResult) -> float | None:
        return self.error_value if result.status == "error" else result.score


def as_trl_reward_func(
    reward: RewardSource | CompositeReward | RewardEntry | Sequence[RewardEntry] | Mapping[str, Any],
    *,
    name: str | None = None,
    eos_token_id: int | None = None,
    error_value: float | None = None,
) -> TRLRewardFunction:
    """Wrap a reward source (or a recipe entry / list of entries) as a TRL `reward_funcs` callable.

    Args:
        reward: A built `RewardSource`, a `CompositeReward`, one `RewardEntry` (or its dict), or a list of
            entries (entries go through `CompositeReward`; the callable returns the weighted total).
        name: `__name__` of the callable (TRL's metric name); default: the source's or entry's name, else
            "reward".
        eos_token_id: If given, a completion whose last id is not EOS is marked truncated.
        error_value: What infrastructure-error examples return (None: TRL ignores them).
    """
    built: RewardSource | CompositeReward
    default = "reward"
    if isinstance(reward, RewardSource | CompositeReward):
        built = reward
    elif isinstance(reward, RewardEntry | Mapping):
        # One entry still goes through CompositeReward so its weight, schedule and truncation rules apply.
        entry = reward if isinstance(reward, RewardEntry) else RewardEntry.model_validate(reward)
        built, default = CompositeReward([entry]), entry.key
    else:
        built = CompositeReward(list(reward))
    if isinstance(built, RewardSource):
        default = built.label
    return TRLRewardFunction(built, name=name or default, eos_token_id=eos_token_id, error_value=error_value)
