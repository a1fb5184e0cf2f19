"""Red team of the code verifier: every attack scores 0 ("wrong", never a pass and never an excused error)
within timeout + 1 s and leaves the host unchanged; correct runs beside a fork bomb and a memory hog pass.

The attacks are listed (with each limit) in README's "Code sandbox" section; keep the two in step
(`test_readme_lists_every_attack`).
"""

from __future__ import annotations

import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from posttrain.verifiers.code_tests import CodeCase, CodeVerifier
from posttrain.verifiers.isolation import SLOT_COUNT, SLOT_UID_BASE
from posttrain.verifiers.sandbox import ISOLATION, SandboxLimits

pytestmark = pytest.mark.timeout(120)  # a broken wall-clock limit fails here instead of hanging CI

TIMEOUT_S = 2.0
TESTS = "def check(candidate):\n    assert candidate(2) == 3\n"
IO_CASES = [{"input": "2\n", "output": "3\n"}, {"input": "5\n", "output": "6\n"}]
MARK = "posttrain-pwned-" + uuid.uuid4().hex[:12]
HOST_PATHS = [Path(p) / MARK for p in ("/usr", "/etc", "/", "/tmp", "/root", str(Path.cwd().parent), str(Path.home()))]
FAKE_VERDICT = '{"status": "ok", "reason": "all tests passed"}'


def _solution(body: str, *, prelude: str = "") -> str:
    """A module defining `inc(x)` with `body` (wrong unless the attack succeeds)."""
    head = "import os, re, sys, socket, time, signal, json\n" + prelude
    return head + "\ndef inc(x):\n" + "".join(f"    {line}\n" for line in body.splitlines())


_WALK_FRAMES = """
found = []
frame = sys._getframe()
while frame is not None:
    found += [str(v) for v in frame.f_locals.values() if isinstance(v, str) and len(v) == 32]
    frame = frame.f_back
for token in found:
    print(token)
    os.write(1, (chr(10) + token + chr(10)).encode())
return x"""

_EQ_ALWAYS = "class Yes:\n    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n"

ATTACKS: dict[str, str] = {
    # --- reward hacks: a wrong solution trying to be scored 1 ---
    "frame_walk_token": _solution(_WALK_FRAMES),
    "replace_failure_handler": _solution(
        "return x", prelude="sys.modules['__main__']._fail = lambda m: None\nimport builtins\n"
        "builtins.AssertionError = type('Nope', (Exception,), {})\n"
    ),
    "eq_always_true": _solution("return Yes()", prelude=_EQ_ALWAYS),
    "int_subclass_eq": _solution(
        "return Liar(x)", prelude="class Liar(int):\n    def __eq__(self, other):\n        return True\n"
    ),
    "str_subclass_eq": _solution(
        "return Liar('no')", prelude="class Liar(str):\n    def __eq__(self, other):\n        return True\n"
    ),
    "list_subclass_eq": _solution(
        "return Liar()", prelude="class Liar(list):\n    def __eq__(self, other):\n        return True\n"
    ),
    "print_fake_verdict": _solution(f"print({FAKE_VERDICT!r})\nreturn x"),
    "write_fake_verdict_to_every_fd": _solution(
        f"for fd in range(0, 64):\n    try:\n        os.write(fd, ({FAKE_VERDICT!r} + chr(10)).encode())\n"
        "    except OSError:\n        pass\nreturn x"
    ),
    "forge_reply_object": _solution(
        "os.write(int(sys.argv[2]), b'{\"value\": \"{\\\\\"obj\\\\\": 3}\"}' + bytes([10]))\nreturn x"
    ),
    "read_tests_file": _solution("src = open('/sandbox/tests.py').read()\nreturn int(re.findall('== (\\d+)', src)[0])"),
    "exception_named_like_success": _solution(
        "raise type('AssertionError', (Exception,), {})('passed')"
    ),
    "kill_every_process": _solution("os.kill(-1, signal.SIGKILL)\nreturn x"),
    "kill_parent_process": _solution("os.kill(os.getppid(), signal.SIGKILL)\nreturn x"),
    "scan_proc_for_token": _solution(
        "for pid in os.listdir('/proc'):\n    try:\n        print(open(f'/proc/{pid}/environ').read())\n"
        "        print(open(f'/proc/{pid}/cmdline').read())\n    except OSError:\n        pass\nreturn x"
    ),
    "return_nan": _solution("return float('nan')"),
    "return_function": _solution("return lambda *a: 3"),
    "return_deep_nesting": _solution("value = []\nfor _ in range(100000):\n    value = [value]\nreturn value"),
    "return_50MB_string": _solution("return 'y' * 50_000_000"),
    "background_forger": _solution(
        f"if os.fork() == 0:\n    time.sleep(0.2)\n    os.write(int(sys.argv[2]), b'{{\"value\": \"3\"}}' + bytes([10]))\n"
        "    os._exit(0)\nreturn x"
    ),
    "close_pipes": _solution("for fd in range(3, 64):\n    try:\n        os.close(fd)\n    except OSError:\n        pass\nreturn x"),
    "sys_exit_before_tests": "import sys\nsys.exit(0)\ndef inc(x):\n    return x + 1\n",
    "os_exit_before_tests": "import os\nos._exit(0)\ndef inc(x):\n    return x + 1\n",
    "exit_inside_tests": "import os\ndef inc(x):\n    os._exit(0)\n",
    "system_exit_in_function": _solution("raise SystemExit(0)"),
    "keyboard_interrupt_in_function": _solution("raise KeyboardInterrupt"),
    "infinite_recursion": _solution("return inc(x)"),
    # --- resource exhaustion ---
    "infinite_loop": _solution("while True:\n    pass"),
    "sleep_at_import": "import time\ntime.sleep(60)\ndef inc(x):\n    return x + 1\n",
    "fork_bomb": _solution("while True:\n    try:\n        os.fork()\n    except OSError:\n        pass"),
    "thread_bomb": _solution(
        "import threading\nwhile True:\n    threading.Thread(target=time.sleep, args=(60,)).start()"
    ),
    "allocate_1GiB": _solution("block = bytearray(1 << 30)\nreturn x + 1"),
    "memory_hog_8_processes": _solution(
        "for _ in range(8):\n    if os.fork() == 0:\n        block = bytearray(200 << 20)\n        time.sleep(30)\n"
        "time.sleep(30)"
    ),
    "cpu_burn_8_processes": _solution("for _ in range(8):\n    os.fork()\nwhile True:\n    pass"),
    "open_files_exhaustion": _solution("files = [open('/dev/null') for _ in range(100000)]\nreturn x + 1"),
    "write_50MB": _solution("open('big.bin', 'wb').write(b'0' * 50_000_000)\nreturn x + 1"),
    "fill_tmp": _solution(
        "for i in range(100):\n    open(f'/tmp/f{i}', 'wb').write(b'0' * 10_000_000)\nreturn x + 1"
    ),
    "flood_stdout": _solution("while True:\n    print('y' * 4096)"),
    "flood_stderr": _solution("while True:\n    sys.stderr.write('y' * 4096)"),
    # --- escapes: secrets, host files, network, privileges, leftover processes ---
    "connect_out": _solution("socket.create_connection(('127.0.0.1', LISTENER_PORT), timeout=1)\nreturn x + 1"),
    "udp_to_host": _solution(
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.sendto(b'x', ('127.0.0.1', UDP_PORT))\n"
        "s.settimeout(1)\ns.recv(10)\nreturn x + 1"
    ),
    "abstract_unix_socket": _solution(
        "s = socket.socket(socket.AF_UNIX)\ns.connect(ABSTRACT_NAME)\nreturn x + 1"
    ),
    "write_usr": _solution(f"open('/usr/{MARK}', 'w').write('x')\nreturn x + 1"),
    "write_etc": _solution(f"open('/etc/{MARK}', 'w').write('x')\nreturn x + 1"),
    "write_home": _solution(
        f"open(os.path.expanduser('~/{MARK}'), 'w').write('x')\nopen('{Path.home()}/{MARK}', 'w').write('x')\nreturn x + 1"
    ),
    "write_parent": _solution(
        f"open('../{MARK}', 'w').write('x')\nopen('{Path.cwd().parent}/{MARK}', 'w').write('x')\nreturn x + 1"
    ),
    "read_parent_env": _solution("return x + 1 if os.environ.get('POSTTRAIN_SANDBOX_SECRET') == 's3cret' else None"),
    "read_host_file": _solution(f"open({str(Path(__file__))!r}).read()\nreturn x + 1"),
    "read_shadow": _solution("open('/etc/shadow').read()\nreturn x + 1"),
    "setuid_root": _solution("os.setuid(0)\nreturn x + 1"),
    "unshare_user_namespace": _solution("os.unshare(os.CLONE_NEWUSER)\nos.setuid(0)\nreturn x + 1"),
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
}
IO_ATTACKS: dict[str, str] = {
    "io_exit_zero_silently": "import os\nos._exit(0)\n",
    "io_print_fake_verdict": f"print({FAKE_VERDICT!r})\n",
    "io_prefix_only": "print(int(input()) + 1)\nprint('extra')\n",
    "io_read_expected_output": "print(open('/sandbox/expected.txt').read())\n",
    "io_infinite_loop": "while True:\n    pass\n",
}


def _sandbox_pids() -> set[int]:
    """PIDs of processes running as a sandbox slot uid, or with the marker in their command line."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            uid = entry.stat().st_uid
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if SLOT_UID_BASE <= uid < SLOT_UID_BASE + SLOT_COUNT or MARK.encode() in cmdline:
            found.add(int(entry.name))
    return found


@pytest.fixture()
def listeners() -> Iterator[dict[str, socket.socket]]:
    """A TCP and a UDP socket on the host's 127.0.0.1, and an abstract unix socket: the sandbox (own network
    namespace) must reach none of them."""
    tcp, udp = socket.socket(socket.AF_INET, socket.SOCK_STREAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with tcp, udp, unix:
        tcp.bind(("127.0.0.1", 0))
        udp.bind(("127.0.0.1", 0))
        unix.bind("\0" + MARK)
        for sock in (tcp, unix):
            sock.listen(8)
        for sock in (tcp, udp, unix):
            sock.setblocking(False)
        yield {"tcp": tcp, "udp": udp, "unix": unix}


@pytest.fixture(scope="module")
def verifier() -> CodeVerifier:
    verifier = CodeVerifier(limits=SandboxLimits(timeout_s=TIMEOUT_S, cpu_s=2, memory_mb=256))
    verifier.ensure_available()
    return verifier


def _assert_host_unchanged(before: set[int], listeners: dict[str, socket.socket]) -> None:
    deadline = time.monotonic() + 2.0
    while _sandbox_pids() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sandbox_pids() - before == set(), "a sandboxed process outlived its run"
    assert [path for path in HOST_PATHS if os.path.lexists(path)] == []
    layout = ISOLATION.layout()
    leftover_groups = [group for parent in (layout.parents if layout else ()) for group in parent.glob("*-run-*")]
    assert leftover_groups == [], "a run's cgroup outlived it"
    for sock in listeners.values():  # nothing reached the host's sockets
        with pytest.raises(BlockingIOError):
            sock.recv(10) if sock.type == socket.SOCK_DGRAM else sock.accept()


def test_correct_solutions_score_one(verifier: CodeVerifier) -> None:
    function = verifier(_solution("return x + 1"), TESTS, "inc")
    io = verifier("print(int(input()) + 1)\n", IO_CASES)
    assert (function.status, io.status) == ("ok", "ok"), (function.reason, io.reason)


def test_there_are_at_least_40_attacks() -> None:
    assert len(ATTACKS) + len(IO_ATTACKS) >= 40


@pytest.mark.parametrize("attack", [*ATTACKS, *IO_ATTACKS])
def test_attack_scores_zero_in_time_and_leaves_host_unchanged(
    verifier: CodeVerifier, attack: str, monkeypatch: pytest.MonkeyPatch, listeners: dict[str, socket.socket]
) -> None:
    monkeypatch.setenv("POSTTRAIN_SANDBOX_SECRET", "s3cret")
    source = ATTACKS.get(attack) or IO_ATTACKS[attack]
    source = source.replace("LISTENER_PORT", str(listeners["tcp"].getsockname()[1]))
    source = source.replace("UDP_PORT", str(listeners["udp"].getsockname()[1])).replace("ABSTRACT_NAME", repr("\0" + MARK))
    before = _sandbox_pids()
    begin = time.monotonic()
    result = verifier(source, TESTS, "inc") if attack in ATTACKS else verifier(source, IO_CASES)
    assert time.monotonic() - begin < TIMEOUT_S + 1.0
    assert (result.score, result.status) == (0.0, "wrong"), result.reason
    _assert_host_unchanged(before, listeners)


def test_correct_runs_beside_a_fork_bomb_and_a_memory_hog_all_pass(listeners: dict[str, socket.socket]) -> None:
    # 2 shared cores run 22 verifications (44 sandboxes) at once here: the wall-clock limit is generous, the
    # point is that no neighbour's fork bomb or memory use turns a correct run into a 0.
    verifier = CodeVerifier(limits=SandboxLimits(timeout_s=20.0, cpu_s=20, memory_mb=256, max_processes=32))
    verifier.ensure_available()
    correct = [CodeCase(_solution("return x + 1"), TESTS, "inc") for _ in range(20)]
    hostile = [CodeCase(ATTACKS["fork_bomb"], TESTS, "inc"), CodeCase(ATTACKS["memory_hog_8_processes"], TESTS, "inc")]
    before = _sandbox_pids()
    results = verifier.verify_many([hostile[0], *correct[:10], hostile[1], *correct[10:]], max_workers=22)
    statuses = [result.status for result in results]
    assert statuses[0] == statuses[11] == "wrong"
    assert [r.reason for i, r in enumerate(results) if i not in (0, 11) and not r.passed] == []
    _assert_host_unchanged(before, listeners)


def test_readme_lists_every_attack() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("## Code sandbox") :]
    listed = set(re.findall(r"`(\w+)`", section))
    assert f"these {len(ATTACKS) + len(IO_ATTACKS)} attacks" in section
    assert sorted((set(ATTACKS) | set(IO_ATTACKS)) - listed) == []
