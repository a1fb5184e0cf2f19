"""Run untrusted programs in a bubblewrap sandbox on Linux, without Docker.

Each run is a fresh `bwrap` with new network, PID, IPC and UTS namespaces; a read-only root built from
the system directories and the Python installation only (no /root, /home, /work, /etc secrets); a private
size-limited tmpfs as /tmp and working directory; a cleared environment; `--die-with-parent` and a new
session. Inside, `setpriv` drops to the run's own uid/gid with no groups, no capabilities and no_new_privs, and
`prlimit` caps CPU time, address space, processes, file size, open files and core dumps. The host reads
stdout/stderr with a byte cap and a wall-clock deadline; past either it SIGKILLs bwrap's process group,
and the kernel then kills every process in the PID namespace — including `setsid()` double-forked daemons
that `killpg` alone would miss.

Why hand-written: the choices are Docker (not available to us, and heavy per run), nsjail/firejail (extra
binaries with their own config languages), or Python-level "sandboxes" such as human-eval's
`reliability_guard`, which only monkeypatch `os`/`shutil` inside the same process and are undone by
`__import__('o'+'s')`. bubblewrap is a small Debian package and these flags are the whole policy.

If bwrap is missing or namespaces are refused, `Sandbox.ensure_available()` raises `SandboxUnavailable`.
Per-run limits (`isolation.py`): each run holds a uid of its own (so RLIMIT_NPROC counts that run only) and,
where cgroups are writable, a cgroup of its own (`pids.max`, a memory limit for the whole run, an equal CPU
share); `Isolation.describe()` says which. Inside, a one-line shell writes a start marker on stderr before it
execs the program: a run without it never started (bwrap, setpriv or prlimit failed) and is reported as
`SandboxRun.started = False`, an infrastructure failure, never a wrong answer.

Known limits: bwrap's in-namespace reaper outlives the outer bwrap by a moment and is re-parented to PID 1;
in a container whose PID 1 never reaps orphans (`docker run` without `--init`), each run leaves a zombie.
If the host process is SIGKILLed mid-run, the sandboxed program runs on until it ends or hits its CPU limit.
When not root, bwrap maps the user to nobody in a user namespace instead of `setpriv` (that path needs
unprivileged user namespaces and is untested here).

>>> Sandbox().command(["python3", "-c", "pass"])[0].endswith("bwrap")
True
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from posttrain.verifiers.isolation import Isolation

NOBODY_UID = 65534
"""The uid a sandboxed program appears as when bwrap runs unprivileged (in a user namespace)."""
STARTED_MARKER = "posttrain-sandbox-started"
"""Written on stderr inside the sandbox just before the program starts (stripped from `SandboxRun.stderr`)."""
ISOLATION = Isolation()
"""Per-run uid slots and cgroups, shared by every sandbox of this process (see `isolation.py`)."""


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot run here (bwrap missing, namespaces refused...): an infrastructure error."""


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits for one sandboxed run.

    Attributes:
        timeout_s: Wall-clock limit; the whole process tree is killed past it.
        cpu_s: CPU-time limit (RLIMIT_CPU) per process.
        memory_mb: Address-space limit (RLIMIT_AS) per process, and the memory limit of the whole run
            (its cgroup, /tmp included) where cgroups are available.
        max_processes: Process limit of the run (RLIMIT_NPROC of its own uid, and its cgroup's pids.max).
        max_file_mb: Largest file a process may write (RLIMIT_FSIZE).
        max_open_files: Open file descriptors per process (RLIMIT_NOFILE).
        max_output_bytes: stdout + stderr bytes kept; a run printing more is killed.
        tmpfs_mb: Size of the private /tmp.
    """

    timeout_s: float = 5.0
    cpu_s: int = 5
    memory_mb: int = 512
    max_processes: int = 64
    max_file_mb: int = 16
    max_open_files: int = 64
    max_output_bytes: int = 1_000_000
    tmpfs_mb: int = 64


@dataclass(frozen=True)
class SandboxRun:
    """The outcome of one sandboxed run.

    Attributes:
        returncode: Exit status of the program (None if it was killed by us).
        stdout: What it printed (decoded, capped).
        stderr: Its error output (decoded, capped).
        timed_out: It ran past the wall-clock limit and was killed.
        output_overflow: It printed more than the cap and was killed.
        seconds: Wall-clock duration.
        started: The program itself started; False means an infrastructure failure (see module docstring).
        cancelled: The caller ended it early (its `cancel_fd` became readable).
    """

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool = False
    output_overflow: bool = False
    seconds: float = 0.0
    started: bool = True
    cancelled: bool = False


_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/alternatives", "/etc/localtime")


def _python_prefix() -> str:
    """The Python installation to expose (the base interpreter, not a virtual environment)."""
    return os.path.realpath(sys.base_prefix)


@dataclass
class Sandbox:
    """A bubblewrap sandbox configuration; `run` is thread-safe.

    Attributes:
        limits: Default resource limits (a run may override them).
        bwrap: The bwrap executable (name or path).
        extra_ro_paths: More host paths to expose read-only (e.g. a data directory).
        ro_files: Host files to mount read-only at the given sandbox paths (`{sandbox_path: host_path}`).
    """

    limits: SandboxLimits = field(default_factory=SandboxLimits)
    bwrap: str = "bwrap"
    extra_ro_paths: tuple[str, ...] = ()
    ro_files: dict[str, str] = field(default_factory=dict)

    def python(self) -> str:
        """Path of the Python interpreter inside the sandbox: the host's base interpreter.

        The sandbox exposes the base installation only (not a virtual environment's site-packages), so
        programs get the standard library.
        """
        executable = os.path.realpath(sys.executable)  # a venv's python is a symlink to the base one
        prefix = _python_prefix()
        if not executable.startswith(prefix + "/"):  # a venv made with --copies
            version = f"python{sys.version_info.major}.{sys.version_info.minor}"
            executable = os.path.join(prefix, "bin", version)
        return executable

    def _bind_args(self) -> list[str]:
        args: list[str] = []
        exposed: list[str] = []
        for path in _SYSTEM_DIRS + _SYSTEM_FILES:
            if os.path.lexists(path):
                args += ["--ro-bind", path, path]
                exposed.append(path)
        for path in (_python_prefix(), *self.extra_ro_paths):
            if any(path == done or path.startswith(done + "/") for done in exposed):
                continue
            args += _world_readable_parents(path, exposed)
            args += ["--ro-bind", path, path]
            exposed.append(path)
        for target, source in self.ro_files.items():
            args += _world_readable_parents(target, exposed)
            args += ["--ro-bind", source, target]
        return args

    def command(
        self, argv: list[str], limits: SandboxLimits | None = None, *, uid: int = NOBODY_UID, files: dict[str, int] | None = None
    ) -> list[str]:
        """The full host command line that runs `argv` inside the sandbox as `uid`.

        `files` maps sandbox paths to open file descriptors whose content bwrap copies there read-only.
        """
        limits = limits or self.limits
        bwrap = shutil.which(self.bwrap) or self.bwrap
        command = [
            bwrap,
            "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session",
            *self._bind_args(),
            "--dev", "/dev",
            "--proc", "/proc",
            "--size", str(limits.tmpfs_mb * 1024 * 1024), "--perms", "1777", "--tmpfs", "/tmp",
        ]  # fmt: skip
        for target, fd in (files or {}).items():
            command += ["--perms", "0444", "--ro-bind-data", str(fd), target]
        command += [
            "--remount-ro", "/",
            "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8",
            "--setenv", "HOME", "/nonexistent", "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
            "--chdir", "/tmp",
        ]  # fmt: skip
        if os.geteuid() == 0:
            # As root, drop to the run's own uid ourselves; RLIMIT_NPROC only binds a non-root uid.
            command += [
                "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                "--no-new-privs", "--bounding-set=-all",
            ]  # fmt: skip
        else:
            # Unprivileged bwrap: a user namespace maps us to nobody (bwrap sets no_new_privs itself).
            command[1:1] = ["--unshare-user", "--uid", str(NOBODY_UID), "--gid", str(NOBODY_UID)]
        command += [
            "prlimit",
            f"--cpu={limits.cpu_s}",
            f"--as={limits.memory_mb * 1024 * 1024}",
            f"--nproc={limits.max_processes}",
            f"--fsize={limits.max_file_mb * 1024 * 1024}",
            f"--nofile={limits.max_open_files}",
            "--core=0",
            "--",
            "/bin/sh", "-c", f"printf '{STARTED_MARKER}\\n' >&2 && exec \"$@\"", "sh",
            *argv,
        ]  # fmt: skip
        return command

    def ensure_available(self) -> None:
        """Check once per process and bwrap path that a trivial program runs; raise SandboxUnavailable if not."""
        key = shutil.which(self.bwrap) or self.bwrap
        with _PROBE_LOCK:
            if key in _PROBED:
                problem = _PROBED[key]
            else:
                problem = self._probe()
                _PROBED[key] = problem
        if problem:
            raise SandboxUnavailable(problem)

    def _probe(self) -> str:
        if shutil.which(self.bwrap) is None:
            return (
                f"bubblewrap ({self.bwrap!r}) not found: install it (Debian/Ubuntu: apt-get install bubblewrap) "
                "to run code verifiers"
            )
        try:
            run = self._run_unchecked([self.python(), "-I", "-S", "-c", "print('sandbox-ok')"], b"", None)
        except OSError as exc:
            return f"bubblewrap could not start: {exc}"
        if run.stdout.strip() != "sandbox-ok":
            detail = (run.stderr.strip() or f"exit code {run.returncode}")[-500:]
            return f"bubblewrap sandbox failed to run a trivial program (namespaces refused?): {detail}"
        return ""

    def run(
        self,
        argv: list[str],
        stdin: bytes = b"",
        limits: SandboxLimits | None = None,
        *,
        files: dict[str, bytes] | None = None,
        pass_fds: tuple[int, ...] = (),
        cancel_fd: int | None = None,
        on_start: Callable[[], None] | None = None,
    ) -> SandboxRun:
        """Run `argv` in the sandbox, feeding `stdin`, and return what happened.

        Args:
            argv: The program and its arguments (paths as seen inside the sandbox).
            stdin: Bytes fed to its standard input.
            limits: Limits for this run (default: the sandbox's).
            files: Read-only files to create inside, `{sandbox path: content}`.
            pass_fds: Host file descriptors the program inherits under the same numbers (e.g. pipes).
            cancel_fd: A descriptor that, once readable, makes us kill the run (`SandboxRun.cancelled`).
            on_start: Called once the process is started (e.g. to close our copies of `pass_fds`).

        Raises:
            SandboxUnavailable: If the sandbox cannot run on this machine.
        """
        self.ensure_available()
        return self._run_unchecked(argv, stdin, limits, files or {}, pass_fds, cancel_fd, on_start)

    def _run_unchecked(  # noqa: PLR0913 (the options of `run`)
        self, argv: list[str], stdin: bytes, limits: SandboxLimits | None, files: dict[str, bytes] | None = None,
        pass_fds: tuple[int, ...] = (), cancel_fd: int | None = None, on_start: Callable[[], None] | None = None,
    ) -> SandboxRun:  # fmt: skip
        limits = limits or self.limits
        memory = (limits.memory_mb + limits.tmpfs_mb) * 1024 * 1024
        # +2: the outer bwrap and its in-namespace reaper run in the cgroup too (as root: not in RLIMIT_NPROC).
        with ISOLATION.run_slot(max_processes=limits.max_processes + 2, memory_bytes=memory) as (uid, prefix):
            memfds = {target: _memfd(content) for target, content in (files or {}).items()}
            try:
                begin = time.monotonic()
                process = subprocess.Popen(
                    prefix + self.command(argv, limits, uid=uid, files=memfds),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                    env={},
                    close_fds=True,
                    pass_fds=(*pass_fds, *memfds.values()),
                )
            finally:
                for fd in memfds.values():
                    os.close(fd)
                if on_start is not None:
                    on_start()
            return _collect(process, stdin, begin, limits, cancel_fd)


def _memfd(content: bytes) -> int:
    fd = os.memfd_create("posttrain-sandbox-file", os.MFD_CLOEXEC)
    view = memoryview(content)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _collect(
    process: subprocess.Popen[bytes], stdin: bytes, begin: float, limits: SandboxLimits, cancel_fd: int | None
) -> SandboxRun:
    """Pump the run's streams to the end or the deadline, kill what is left, and describe the outcome."""
    outputs, ended = _pump(process, stdin, begin + limits.timeout_s, limits.max_output_bytes, cancel_fd)
    if ended:  # SIGKILL bwrap's group; --die-with-parent then takes down the PID namespace and all in it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    returncode = process.wait()
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None and not stream.closed:
            stream.close()
    stderr = outputs[1].decode("utf-8", errors="replace")
    started = stderr.startswith(STARTED_MARKER + "\n")
    return SandboxRun(
        returncode=None if ended else returncode,
        stdout=outputs[0].decode("utf-8", errors="replace"),
        stderr=stderr[len(STARTED_MARKER) + 1 :] if started else stderr,
        timed_out=ended == "timeout",
        output_overflow=ended == "overflow",
        seconds=time.monotonic() - begin,
        started=started,
        cancelled=ended == "cancelled",
    )


def _world_readable_parents(path: str, exposed: list[str]) -> list[str]:
    """bwrap arguments creating `path`'s missing parent directories with mode 0755.

    bwrap would otherwise create them with the source's restrictive modes (e.g. /root is 0700), hiding what
    is mounted below from the unprivileged uid.
    """
    args: list[str] = []
    for parent in reversed(Path(path).parents):
        if str(parent) != "/" and str(parent) not in exposed:
            args += ["--perms", "0755", "--dir", str(parent)]
            exposed.append(str(parent))
    return args


_PROBED: dict[str, str] = {}
_PROBE_LOCK = threading.Lock()


def _pump(
    process: subprocess.Popen[bytes], stdin: bytes, deadline: float, cap: int, cancel_fd: int | None
) -> tuple[list[bytes], str]:
    """Feed stdin and collect stdout/stderr until both close, the deadline passes, output exceeds `cap`, or
    `cancel_fd` becomes readable. Returns the outputs and why it stopped early ("" if it did not)."""
    assert process.stdin and process.stdout and process.stderr
    streams = {process.stdout.fileno(): 0, process.stderr.fileno(): 1}
    outputs = [bytearray(), bytearray()]
    pending = memoryview(stdin)
    writer = process.stdin.fileno()
    if not pending:
        process.stdin.close()
        writer = -1
    watched = [] if cancel_fd is None else [cancel_fd]
    while streams:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return [bytes(out) for out in outputs], "timeout"
        readable, writable, _ = select.select([*streams, *watched], [writer] if writer >= 0 else [], [], remaining)
        if cancel_fd is not None and cancel_fd in readable:
            return [bytes(out) for out in outputs], "cancelled"
        if writable:
            try:
                sent = os.write(writer, pending[:65536])
                pending = pending[sent:]
            except BrokenPipeError:
                pending = pending[:0]
            if not pending:
                process.stdin.close()
                writer = -1
        for fd in readable:
            chunk = os.read(fd, 65536)
            if not chunk:
                del streams[fd]
                continue
            outputs[streams[fd]] += chunk
            if len(outputs[0]) + len(outputs[1]) > cap:
                return [bytes(out[:cap]) for out in outputs], "overflow"
    if writer >= 0:
        process.stdin.close()
    return [bytes(out) for out in outputs], ""
