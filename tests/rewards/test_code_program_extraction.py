"""The code reward's program extraction: same blocks as a fenced-block regex, in linear time."""

from __future__ import annotations

import random
import re
import time

import pytest

from posttrain.rewards.code_reward import extract_program

# The former extraction: right on short texts (the oracle here) but quadratic on a fence followed by
# tens of thousands of spaces.
_REGEX = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def _by_regex(completion: str) -> str:
    blocks = _REGEX.findall(completion)
    return blocks[-1] if blocks else completion


def test_same_program_as_the_regex_on_random_short_texts() -> None:
    rng = random.Random(0)
    pieces = ["`", "```", "py", "python", "Python3", "\n", " ", "\t", "x", "js"]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 14))) for _ in range(5000)]
    texts += ["a```py\nx=1\n```b```\ny=2\n```", "````python\nx\n```", "```js\nx\n```", "```python\nunclosed"]
    assert [extract_program(text) for text in texts] == [_by_regex(text) for text in texts]


@pytest.mark.parametrize(
    "completion",
    ["```" + " " * 50_000, "```python" + " " * 50_000, "```python\n" * 20_000, "`" * 100_000, ("```" + " " * 999) * 100],
)
def test_adversarial_text_is_fast(completion: str) -> None:
    begin = time.monotonic()
    extract_program(completion)
    assert time.monotonic() - begin < 1.0
