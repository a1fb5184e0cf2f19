"""The "code" reward source: 1 if the completion's program passes the example's tests in the sandbox.

Off unless the recipe says `allow_code_execution: true`: it runs model-written code (inside the bubblewrap
sandbox of `posttrain.verifiers.sandbox`). If the sandbox cannot run on this machine the first batch raises
`SandboxUnavailable` — a reward of 0 for every completion would silently train on nothing.

The program is the last fenced code block of the completion (```python ... ```), or the whole completion if
it has none. Examples carry `tests` (a `check(candidate)` source, or a list of {"input", "output"} cases)
and, for function tasks, `entry_point`.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence

from posttrain.rewards.base import Example, RewardResult, RewardSource
from posttrain.rewards.registry import register_reward_source
from posttrain.verifiers.code_tests import CodeCase, CodeVerifier
from posttrain.verifiers.sandbox import SandboxLimits

# An opening fence's language line. Unambiguous (no two adjacent `[ \t]*`), so a fence followed by 50k spaces
# cannot backtrack quadratically; fences are paired by a linear scan (a lazy `(.*?)` rescanned to the end
# of the text from every unclosed fence).
_FENCE_HEADER = re.compile(r"[ \t]*(?:(?:python3|python|py)[ \t]*)?\n", re.IGNORECASE)


def extract_program(completion: str) -> str:
    """The last fenced code block of `completion`, or the whole completion if there is none.

    >>> extract_program("Here:\\n```python\\ndef f():\\n    return 1\\n```\\nDone.")
    'def f():\\n    return 1\\n'
    """
    fences, start = [], completion.find("```")
    while start >= 0:  # every position of three backticks, overlapping ones too (as the regex tried them)
        fences.append(start)
        start = completion.find("```", start + 1)
    last, index = None, 0
    while index < len(fences):
        header = _FENCE_HEADER.match(completion, fences[index] + 3)
        closing = bisect.bisect_left(fences, header.end()) if header else len(fences)
        if closing == len(fences):
            index += 1
            continue
        last = completion[header.end() : fences[closing]]
        index = bisect.bisect_left(fences, fences[closing] + 3)
    return completion if last is None else last


@register_reward_source("code")
class CodeReward(RewardSource):
    """Runs each completion's program against its example's tests in the sandbox.

    Args:
        allow_code_execution: Must be True: running model-written code is opt-in.
        tests_field: Example field with the tests.
        entry_point_field: Example field with the function name (absent for stdin/stdout tasks).
        timeout_s: Wall-clock limit per program.
        memory_mb: Address-space limit per process.
        max_workers: Sandboxes run in parallel.
    """

    def __init__(
        self,
        *,
        allow_code_execution: bool = False,
        tests_field: str = "tests",
        entry_point_field: str = "entry_point",
        timeout_s: float = 5.0,
        memory_mb: int = 512,
        max_workers: int = 4,
    ) -> None:
        if allow_code_execution is not True:
            raise ValueError(
                "the 'code' reward source executes model-written code; enable it explicitly by setting "
                "`allow_code_execution: true` in this reward entry's args in the recipe (programs run in a "
                "bubblewrap sandbox with no network)"
            )
        self.tests_field, self.entry_point_field = tests_field, entry_point_field
        self.required_fields = (tests_field,)
        limits = SandboxLimits(timeout_s=timeout_s, cpu_s=max(1, int(timeout_s + 0.999)), memory_mb=memory_mb)
        self.verifier = CodeVerifier(limits=limits)
        self.max_workers = max_workers

    def score(
        self, prompts: list[str], completions: list[str], examples: Sequence[Example], step: int
    ) -> list[RewardResult]:
        self.verifier.ensure_available()  # raises SandboxUnavailable: loud, not a silent 0
        cases = [
            CodeCase(extract_program(completion), example[self.tests_field], example.get(self.entry_point_field))
            for completion, example in zip(completions, examples)
        ]
        return self.verifier.verify_many(cases, max_workers=self.max_workers)
