"""Hostile programs in the code sandbox: each scores 0 within 6 s and leaves the host unchanged."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from posttrain.verifiers.code_tests import CodeVerifier
from posttrain.verifiers.sandbox import NOBODY_UID, SandboxLimits

pytestmark = pytest.mark.timeout(60)  # a broken wall-clock limit fails here instead of hanging CI

TESTS = "def check(candidate):\n    assert candidate(2) == 3\n"
MARK = "posttrain-pwned-" + uuid.uuid4().hex[:12]
HOST_PATHS = [
    Path("/usr") / MARK,
    Path("/etc") / MARK,
    Path.home() / MARK,
    Path.cwd().parent / MARK,
    Path("/") / MARK,
    Path("/tmp") / MARK,
]


def _solution(body: str) -> str:
    return "import os, sys, socket, time\n\ndef inc(x):\n" + "".join(f"    {line}\n" for line in body.splitlines())


ATTACKS = {
    "infinite_loop": _solution("while True:\n    pass"),
    "fork_bomb": _solution("while True:\n    try:\n        os.fork()\n    except OSError:\n        pass"),
    "allocate_1GiB": _solution("block = bytearray(1 << 30)\nreturn x + 1"),
    # LISTENER_PORT is replaced by the port of a listener the test opens on the host's 127.0.0.1.
    "connect_out": _solution("socket.create_connection(('127.0.0.1', LISTENER_PORT), timeout=1)\nreturn x + 1"),
    "write_usr": _solution(f"open('/usr/{MARK}', 'w').write('x')\nreturn x + 1"),
    "write_etc": _solution(f"open('/etc/{MARK}', 'w').write('x')\nreturn x + 1"),
    "write_home": _solution(
        f"open(os.path.expanduser('~/{MARK}'), 'w').write('x')\n"
        f"open('{Path.home()}/{MARK}', 'w').write('x')\nreturn x + 1"
    ),
    "write_parent": _solution(
        f"open('../{MARK}', 'w').write('x')\nopen('{Path.cwd().parent}/{MARK}', 'w').write('x')\nreturn x + 1"
    ),
    "read_parent_env": _solution("return x + 1 if os.environ.get('POSTTRAIN_SANDBOX_SECRET') == 's3cret' else None"),
    "read_host_file": _solution(f"open({str(Path(__file__))!r}).read()\nreturn x + 1"),
    "write_50MB": _solution("open('big.bin', 'wb').write(b'0' * 50_000_000)\nreturn x + 1"),
    "flood_stdout": _solution("while True:\n    print('y' * 4096)"),
    "shell_out": "def inc(x):\n    rc = __import__('o'+'s').system('echo pwned > /etc/"
    + MARK
    + "; echo pwned > /tmp/"
    + MARK
    + "')\n"
    "    return x + 1 if rc == 0 and open('/etc/" + MARK + "').read() else None\n",
    "setsid_daemon": (
        "import os, sys\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', '{MARK}'])\n"
        "    os._exit(0)\n"
        "os._exit(0)\n"
    ),
    "sys_exit_before_tests": "import sys\nsys.exit(0)\ndef inc(x):\n    return x + 1\n",
    "os_exit_before_tests": "import os\nos._exit(0)\ndef inc(x):\n    return x + 1\n",
    "exit_inside_tests": "import os\ndef inc(x):\n    os._exit(0)\n",
}


def _sandbox_pids() -> set[int]:
    """PIDs of processes running as the sandbox uid, or with the marker in their command line."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        uid_line = next((line for line in status.splitlines() if line.startswith("Uid:")), "")
        if str(NOBODY_UID) in uid_line.split()[1:2] or MARK.encode() in cmdline:
            found.add(int(entry.name))
    return found


@pytest.fixture()
def host_listener() -> Iterator[socket.socket]:
    """A TCP listener on the host's loopback; the sandbox (own network namespace) must not reach it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        yield listener


@pytest.fixture(scope="module")
def verifier() -> CodeVerifier:
    verifier = CodeVerifier(limits=SandboxLimits(timeout_s=2.0, cpu_s=2))
    verifier.ensure_available()
    return verifier


def test_correct_solution_scores_one(verifier: CodeVerifier) -> None:
    result = verifier(_solution("return x + 1"), TESTS, "inc")
    assert (result.score, result.status) == (1.0, "ok"), result.reason


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_attack_scores_zero_and_leaves_host_unchanged(
    verifier: CodeVerifier, attack: str, monkeypatch: pytest.MonkeyPatch, host_listener: socket.socket
) -> None:
    monkeypatch.setenv("POSTTRAIN_SANDBOX_SECRET", "s3cret")
    source = ATTACKS[attack].replace("LISTENER_PORT", str(host_listener.getsockname()[1]))
    before = _sandbox_pids()
    begin = time.monotonic()
    result = verifier(source, TESTS, "inc")
    assert time.monotonic() - begin < 6.0
    assert (result.score, result.status) == (0.0, "wrong"), result.reason
    deadline = time.monotonic() + 2.0
    while _sandbox_pids() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sandbox_pids() - before == set(), "a sandboxed process outlived its run"
    assert [path for path in HOST_PATHS if os.path.lexists(path)] == []
    with pytest.raises(BlockingIOError):  # no connection reached the host's listener
        host_listener.accept()
