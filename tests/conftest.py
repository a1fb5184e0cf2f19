"""Shared fixtures: the built-in micro model (built offline), a CPU accelerator, recipe files in tmp dirs.

Everything is tiny and seeded; torch uses one thread unless OMP_NUM_THREADS says otherwise, because the test
machines are small and shared (tiny matmuls only get slower with more threads competing for two cores).

KERNELS: the suite must pass on any x86-64 CPU, not only the one a tolerance was tuned on. Float32 results
depend on which kernels torch picks (AVX2 or AVX-512 blocking in MKL and ATen, thread count), so a test
that compares two computations of the same number either runs in float64, where exactness is the point, or
states the reassociation error it allows and why. Measured on an AMD EPYC (AVX2), torch 2.13.0+cpu, by
hashing the gradients of the tiny model and a 257x129 @ 129x67 product (/proc/cpuinfo: avx2, no avx512):
  - change float32 results:   ATEN_CPU_CAPABILITY=default (ATen's unvectorised kernels: matmul, softmax,
                              reductions) and MKL_CBWR=COMPATIBLE (MKL's compatibility code path).
  - no change on that CPU:    MKL_ENABLE_INSTRUCTIONS=SSE4_2 or AVX, ONEDNN_MAX_CPU_ISA=SSE41,
                              OMP_NUM_THREADS=2 at the test shapes (too small to be split across threads).
So the suite is run with `ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE OMP_NUM_THREADS=2` as well as
plainly; .ci/run runs the numeric tests that way after the README's command. On the Intel Xeon (AVX-512,
AMX) the plain run is itself a different kernel path; ATEN_CPU_CAPABILITY=avx2 there slowed pre-training
about 100x (../shared/MEASURED.md), so emulate the other CPU with the two variables above instead.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

# One thread unless OMP_NUM_THREADS says otherwise: the suite must pass with 1 and 2 (see KERNELS below).
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_accelerate_state():
    """Accelerate keeps one process-wide state; TRL's trainers switch it to bf16 mixed precision on a CPU
    with bf16 support. Restore it after every test so no test trains in another test's precision."""
    from accelerate.state import AcceleratorState, GradientState

    saved = dict(AcceleratorState._shared_state), dict(GradientState._shared_state)
    yield
    for cls, values in zip((AcceleratorState, GradientState), saved):
        cls._shared_state.clear()
        cls._shared_state.update(values)

# A two-stage recipe on the micro model that trains in about a second: pretrain -> sft, one exact-match
# evaluation. Tests format it with the run directory and change it through `--set` overrides.
MICRO_RECIPE = """\
name: micro
seed: 0
output_dir: {output_dir}
model:
  name_or_path: builtin:micro
stages:
  - name: pretrain
    kind: pretrain
    data: {{source: "builtin:corpus", count: 16}}
    train: {{steps: 3, batch_size: 4, seq_len: 32, lr: 1.0e-3, log_every: 1}}
  - name: sft
    kind: sft
    data: {{source: "builtin:arithmetic", count: 32, levels: [1]}}
    train: {{steps: 3, batch_size: 4, seq_len: 32, lr: 1.0e-3, log_every: 1}}
evaluations:
  - name: arith
    kind: exact_match
    data: {{source: "builtin:arithmetic", split: test, count: 8, levels: [1, 2]}}
    max_new_tokens: 4
"""


def _write_recipe(folder: Path, text: str, name: str = "recipe.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="session")
def write_recipe():
    """``write_recipe(folder, text, name="recipe.yaml") -> path``: writes a (dedented) recipe file."""
    return _write_recipe


@pytest.fixture(scope="session")
def micro_recipe():
    """The two-stage micro recipe text; format it with ``output_dir=...``."""
    return MICRO_RECIPE


@pytest.fixture
def micro():
    """A fresh micro model (seed 0, ~0.1M parameters) and the built-in tokenizer."""
    from posttrain.models.tiny import build_tiny_model

    torch.manual_seed(0)
    model, tokenizer = build_tiny_model("micro", seed=0)
    return model.eval(), tokenizer


@pytest.fixture(scope="session")
def micro_dir(tmp_path_factory) -> Path:
    """The micro model saved once as an ordinary HF folder (safetensors)."""
    from posttrain.models.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("micro") / "model", size="micro", seed=0)


@pytest.fixture(scope="session")
def accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


class CliRun:
    """`posttrain run` of the micro recipe in a subprocess whose output is a pipe (not a terminal)."""

    def __init__(self, folder: Path):
        import subprocess
        import sys

        self.recipe = _write_recipe(folder, MICRO_RECIPE.format(output_dir=folder / "run"))
        self.run_dir = folder / "run"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
        self.done = subprocess.run(
            [sys.executable, "-m", "posttrain.cli", "run", str(self.recipe)],
            capture_output=True, text=True, timeout=300, env=env, cwd=folder,
        )
        assert self.done.returncode == 0, self.done.stdout + self.done.stderr


@pytest.fixture(scope="session")
def cli_micro_run(tmp_path_factory) -> CliRun:
    """The micro recipe run once through the command line (its stdout captured, so not a terminal);
    tests of the logs, trackers, samples and report read its run directory and must not change it."""
    return CliRun(tmp_path_factory.mktemp("cli_run"))
