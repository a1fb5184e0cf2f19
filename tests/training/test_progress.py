"""Progress display: plain lines off a terminal (CI, nohup, pipes), a live bar on one, headline metrics."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys

import pytest

from posttrain.training.metrics import MetricsWriter
from posttrain.training.progress import headline

RL_STEP = {"loss": 0.25, "reward": 0.75, "reward/math": 1.0, "kl": 0.0123, "tokens_per_s": 45231.7, "grad_norm": 2.0}


def test_plain_lines_carry_every_value_and_no_terminal_codes() -> None:
    stream = io.StringIO()
    writer = MetricsWriter(None, "grpo", stream=stream, progress="plain")
    for step in (1, 2, 3):
        writer.log(step, {**RL_STEP, "loss": 1.0 / step}, total=3)
    writer.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("[grpo] step 1/3 eta ") and lines[2].startswith("[grpo] step 3/3 loss=0.3333")
    assert "reward/math=1" in lines[1] and "kl=0.0123" in lines[1] and "tokens_per_s=45.2k" in lines[1]
    assert "\x1b" not in stream.getvalue() and "\r" not in stream.getvalue()


def test_auto_mode_is_plain_when_the_stream_is_not_a_terminal() -> None:
    stream = io.StringIO()
    MetricsWriter(None, "sft", stream=stream).log(1, {"loss": 2.0}, total=4)
    assert stream.getvalue() == "[sft] step 1/4 eta 0:00 loss=2\n"


def test_bar_shows_step_total_and_headline_metrics() -> None:
    stream = io.StringIO()
    writer = MetricsWriter(None, "grpo", stream=stream, progress="bar")
    for step in (1, 2, 3):
        writer.log(step, RL_STEP, total=3)
    writer.close()
    out = stream.getvalue()
    assert "\x1b[" in out and "[grpo] step" not in out
    assert "3/3" in out and "eta" in out
    for shown in ("loss 0.25", "reward 0.75", "kl 0.0123", "tok/s 45.2k"):
        assert shown in out
    assert "grad_norm" not in out and "reward/math" not in out  # headlines only; the full row is in the files


def test_headline_prefers_the_total_reward_over_sources() -> None:
    assert headline({"reward/math": 1.0, "reward/mean": 0.5, "kl_mean": 0.1, "policy_loss": 0.2}) == [
        ("loss", 0.2), ("reward", 0.5), ("kl", 0.1)
    ]
    assert headline({"reward/math/mean": 1.0, "grad_norm": 3.0}) == []
    rl = {"loss": 0.1, "reward/math/mean": 1.0, "reward/total/mean": 0.8, "kl": 0.01, "tokens_per_s": 10.0}
    assert headline(rl) == [("loss", 0.1), ("reward", 0.8), ("kl", 0.01), ("tok/s", 10.0)]


def test_non_main_process_shows_nothing() -> None:
    stream = io.StringIO()
    writer = MetricsWriter(None, "sft", is_main=False, stream=stream, progress="bar")
    writer.log(1, {"loss": 1.0}, total=2)
    writer.close()
    assert stream.getvalue() == "" and writer.rows == []


PTY_SCRIPT = """
from posttrain.training.metrics import MetricsWriter
writer = MetricsWriter(None, "sft")
for step in (1, 2):
    writer.log(step, {"loss": 0.5, "tokens_per_s": 1000.0}, total=2)
writer.close()
"""


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_auto_mode_draws_a_bar_on_a_terminal() -> None:
    main, child = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-c", PTY_SCRIPT], stdout=child, stderr=child, env={**os.environ, "COLUMNS": "120"}
    )
    os.close(child)
    output = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(main)
    assert process.wait(timeout=60) == 0, output.decode(errors="replace")
    text = output.decode()
    assert "━" in text and "2/2" in text and "loss 0.5" in text
    assert "[sft] step" not in text


def test_doctests() -> None:
    import doctest

    import posttrain.training.progress

    assert doctest.testmod(posttrain.training.progress).failed == 0
