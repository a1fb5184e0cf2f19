"""Per-run isolation: exclusive uid slots (across processes too), and a cgroup per run that bounds the
processes and the memory of the whole run, not of each process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from posttrain.verifiers.isolation import SlotPool
from posttrain.verifiers.sandbox import ISOLATION, Sandbox, SandboxLimits

pytestmark = pytest.mark.timeout(120)


def test_slots_are_exclusive_within_a_process(tmp_path: Path) -> None:
    pool = SlotPool(base=47900, count=3, lock_dir=tmp_path)
    held = [pool.acquire() for _ in range(3)]
    assert sorted(uid for uid, _ in held) == [47900, 47901, 47902]
    with pytest.raises(TimeoutError, match="no free sandbox slot"):
        pool.acquire(timeout_s=0.05)
    pool.release(held[1][1])
    assert pool.acquire(timeout_s=1.0)[0] == 47901


def test_slots_are_exclusive_across_processes(tmp_path: Path) -> None:
    code = (
        "import sys, time; from pathlib import Path; from posttrain.verifiers.isolation import SlotPool\n"
        f"uid, fd = SlotPool(base=47900, count=2, lock_dir=Path({str(tmp_path)!r})).acquire()\n"
        "print(uid, flush=True); time.sleep(30)\n"
    )
    other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        taken = int(other.stdout.readline())
        uid, _ = SlotPool(base=47900, count=2, lock_dir=tmp_path).acquire(timeout_s=1.0)
        assert {uid, taken} == {47900, 47901}
    finally:
        other.kill()
        other.wait()


def _needs_cgroups() -> None:
    if ISOLATION.layout() is None:
        pytest.skip(f"no writable cgroups on this machine ({ISOLATION.describe()})")


def test_run_memory_is_bounded_per_run_not_per_process() -> None:
    _needs_cgroups()
    # Each of 4 processes stays under the per-process RLIMIT_AS (200 MB) but together they want 400 MB.
    program = (
        "import os, time\n"
        "for _ in range(4):\n"
        "    if os.fork() == 0:\n"
        "        block = bytearray(100 << 20)\n"
        "        print('allocated', flush=True)\n"
        "        time.sleep(1.5)\n"
        "        os._exit(0)\n"
        "for _ in range(4):\n"
        "    os.wait()\n"
    )
    sandbox = Sandbox(limits=SandboxLimits(timeout_s=20, cpu_s=20, memory_mb=200, tmpfs_mb=16))
    run = sandbox.run([sandbox.python(), "-I", "-S", "-c", program])
    assert run.started and not run.timed_out, run.stderr
    assert run.stdout.count("allocated") < 4


def test_run_processes_are_bounded_per_run() -> None:
    _needs_cgroups()
    program = (
        "import os, time\nforks = 0\n"
        "for _ in range(40):\n"
        "    try:\n        pid = os.fork()\n    except OSError:\n        break\n"
        "    if pid == 0:\n        time.sleep(5)\n        os._exit(0)\n"
        "    forks += 1\n"
        "print(forks)\n"
    )
    sandbox = Sandbox(limits=SandboxLimits(timeout_s=20, cpu_s=20, max_processes=8))
    run = sandbox.run([sandbox.python(), "-I", "-S", "-c", program])
    assert run.started and not run.timed_out, run.stderr
    assert 1 <= int(run.stdout.split()[0]) < 8


def test_a_run_that_cannot_start_is_reported_as_not_started() -> None:
    sandbox = Sandbox()
    sandbox.ensure_available()
    run = sandbox.run(["/nonexistent/program"])
    assert run.started  # the program was reached: it is the program that failed...
    broken = Sandbox(extra_ro_paths=("/nonexistent-dir-for-bwrap",))
    run = broken._run_unchecked([broken.python(), "-c", "pass"], b"", None)
    assert not run.started and "bwrap" in run.stderr  # ...while here the sandbox itself never started
