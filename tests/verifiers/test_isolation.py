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
    # Each of 4 processes stays under the per-process RLIMIT_AS (200 MB) but together they want 400 MB. A child
    # that has allocated tells the parent and holds its memory until the parent ends it, so the outcome does not
    # depend on timing (children exiting early would free memory for later ones): once every child has either
    # allocated or died, the children that died were killed for the run's memory (none exits on its own).
    program = (
        "import os, signal, time\n"
        "read_end, write_end = os.pipe()\n"
        "children = []\n"
        "for _ in range(4):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        block = bytearray(100 << 20)\n"
        "        os.write(write_end, b'a')\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "    children.append(pid)\n"
        "os.close(write_end)\n"
        "os.set_blocking(read_end, False)\n"
        "allocated, died = 0, {}\n"
        "deadline = time.monotonic() + 15\n"
        "while allocated + len(died) < 4 and time.monotonic() < deadline:\n"
        "    try:\n"
        "        allocated += len(os.read(read_end, 16))\n"
        "    except BlockingIOError:\n"
        "        pass\n"
        "    for pid in children:\n"
        "        if pid not in died and os.waitpid(pid, os.WNOHANG)[0] == pid:\n"
        "            died[pid] = True\n"
        "    time.sleep(0.02)\n"
        "print('settled', allocated + len(died) >= 4, 'died', len(died), flush=True)\n"
        "for pid in children:\n"
        "    if pid not in died:\n"
        "        os.kill(pid, signal.SIGKILL)\n"
        "        os.waitpid(pid, 0)\n"
    )
    sandbox = Sandbox(limits=SandboxLimits(timeout_s=30, cpu_s=20, memory_mb=200, tmpfs_mb=16))
    run = sandbox.run([sandbox.python(), "-I", "-S", "-c", program])
    assert run.started and not run.timed_out, run.stderr
    words = run.stdout.split()
    assert words[:2] == ["settled", "True"], run.stdout + run.stderr
    assert int(words[3]) >= 1, run.stdout  # at least one child was killed: the 4 x 100 MB did not all fit


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
