"""Per-run isolation for the code sandbox: a uid of its own and, where the kernel lets us, a cgroup of its own.

Why both. RLIMIT_NPROC counts every process of a uid and RLIMIT_AS binds each process separately, so with
one shared uid a fork bomb in one run made forks fail in the runs beside it, and 64 processes of 512 MB each
took one run to 2.9 GB. Here:

- **A uid per concurrent run (always, when root).** Each run holds a *slot*: a uid from
  `SLOT_UID_BASE .. SLOT_UID_BASE + SLOT_COUNT - 1`, taken with a non-blocking `flock` on a per-uid lock file,
  so slots are exclusive across threads *and* processes on the machine (the kernel drops the lock when a
  process dies). RLIMIT_NPROC then counts the processes of that run only.
- **A cgroup per run (when a writable cgroup v2 with the `pids` and `memory` controllers, or the v1
  `pids` and `memory` hierarchies, are mounted — both are probed at first use).** `pids.max` bounds the
  run's processes and `memory.max` (v1: `memory.limit_in_bytes`) its total memory, whatever the number of
  processes; a `cpu` group (v1) or the v2 default weight gives each run an equal share of the CPU, so a
  neighbour's busy processes do not starve a correct run into a timeout. The host shell that starts bwrap
  joins the cgroup before it execs bwrap, so no process of the run is ever outside it.
  Without cgroups (e.g. a container whose cgroup tree is read-only) runs still get their own uid; the
  memory bound is then `memory_mb` per process only — `Isolation.describe()` says which mode is in force.

The uids need no passwd entry. They must be mapped in this user namespace (0..65535 is, everywhere) and
unused by real users: 47000..47999 by default; set `POSTTRAIN_SANDBOX_UID_BASE` to move the range.

Hand-written: no maintained library offers cgroup v1+v2 creation with limits in a few lines
(`cgroupspy` is v1 only and unmaintained; systemd-run needs systemd as PID 1, absent in containers).
"""

from __future__ import annotations

import atexit
import fcntl
import itertools
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SLOT_UID_BASE = int(os.environ.get("POSTTRAIN_SANDBOX_UID_BASE", "47000"))
SLOT_COUNT = 1000
_LOCK_DIR = Path(tempfile.gettempdir()) / "posttrain-sandbox-slots"


@dataclass(frozen=True)
class CgroupLayout:
    """Where to make per-run groups: one directory per hierarchy, and whether it is cgroup v2."""

    parents: tuple[Path, ...]
    v2: bool


def _own_cgroup_paths() -> dict[str, str]:
    """`/proc/self/cgroup` as {controller or "" for v2: path}."""
    paths: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            paths[name] = path
    return paths


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, filesystem type, super options) of every cgroup mount."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype, _, options = (right.split() + ["", "", ""])[:3]
        if fstype in ("cgroup", "cgroup2"):
            found.append((left.split()[4], fstype, set(options.split(","))))
    return found


def _make_parent(mount: str, own_path: str, name: str) -> Path:
    parent = Path(mount) / own_path.lstrip("/") / name
    parent.mkdir(exist_ok=True)
    return parent


def probe_cgroups() -> CgroupLayout | None:
    """A writable place for per-run cgroups, or None (then runs are isolated by uid only)."""
    if os.geteuid() != 0:
        return None
    name = f"posttrain-sandbox-{os.getpid()}"
    try:
        own, mounts = _own_cgroup_paths(), _mounts()
        for mount, fstype, _ in mounts:
            if fstype == "cgroup2" and {"pids", "memory"} <= set(Path(mount, "cgroup.controllers").read_text().split()):
                parent = _make_parent(mount, own.get("", "/"), name)
                (parent / "cgroup.subtree_control").write_text("+pids +memory")
                return CgroupLayout((parent,), v2=True)
        v1 = {controller: mount for mount, fstype, options in mounts if fstype == "cgroup" for controller in options}
        if "pids" in v1 and "memory" in v1:
            wanted = {v1[c]: c for c in ("memory", "pids") if c in v1}  # one directory per hierarchy
            parents = [_make_parent(m, own.get(c, "/"), name) for m, c in wanted.items()]
            if "cpu" in v1 and v1["cpu"] not in wanted:
                # Each run's cpu group sits beside this process, not under a shared parent: v1 weighs a group
                # against its siblings, so a parent would squeeze every run together into one task's share.
                parents.append(Path(v1["cpu"]) / own.get("cpu", "/").lstrip("/"))
            return CgroupLayout(tuple(parents), v2=False)
    except OSError:
        return None
    return None


class RunCgroup:
    """One run's cgroup (one directory per v1 hierarchy, or one v2 directory) with its limits written."""

    _counter = itertools.count()

    def __init__(self, layout: CgroupLayout, *, max_processes: int, memory_bytes: int) -> None:
        name = f"posttrain-sandbox-{os.getpid()}-run-{next(self._counter)}"
        self.dirs = [parent / name for parent in layout.parents]
        for directory in self.dirs:
            directory.mkdir()
        for directory in self.dirs:
            if (directory / "pids.max").exists():
                (directory / "pids.max").write_text(str(max_processes))
            for limit in ("memory.max", "memory.limit_in_bytes", "memory.swap.max", "memory.memsw.limit_in_bytes"):
                if (directory / limit).exists():
                    value = "0" if limit == "memory.swap.max" else str(memory_bytes)
                    try:
                        (directory / limit).write_text(value)
                    except OSError:
                        if limit in ("memory.max", "memory.limit_in_bytes"):
                            raise

    def join_command(self) -> list[str]:
        """A host-side prefix that moves itself into this cgroup, then execs the rest of the command."""
        script = " && ".join(f"echo $$ > {directory / 'cgroup.procs'}" for directory in self.dirs)
        return ["/bin/sh", "-c", script + ' && exec "$@"', "sh"]

    def remove(self) -> None:
        """Kill whatever is left in the group, then remove it (retrying while the processes exit)."""
        deadline = time.monotonic() + 2.0
        for directory in self.dirs:
            while directory.exists():
                try:
                    for pid in (directory / "cgroup.procs").read_text().split():
                        os.kill(int(pid), signal.SIGKILL)
                    directory.rmdir()
                except (ProcessLookupError, FileNotFoundError):
                    continue
                except OSError:
                    if time.monotonic() > deadline:
                        break  # left for the kernel to finish; harmless, named in the next run's probe
                    time.sleep(0.005)


class SlotPool:
    """Exclusive uid slots, shared by every thread and process on the machine (see the module docstring)."""

    def __init__(self, base: int = SLOT_UID_BASE, count: int = SLOT_COUNT, lock_dir: Path = _LOCK_DIR) -> None:
        self.base, self.count, self.lock_dir = base, count, lock_dir
        self._lock = threading.Lock()
        self._next = 0

    def acquire(self, timeout_s: float = 60.0) -> tuple[int, int]:
        """Take a free slot; returns (uid, lock fd). Raises TimeoutError if none frees up in time."""
        self.lock_dir.mkdir(mode=0o700, exist_ok=True)
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                for _ in range(self.count):
                    offset, self._next = self._next, (self._next + 1) % self.count
                    uid = self.base + offset
                    fd = os.open(self.lock_dir / str(uid), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        return uid, fd
                    except BlockingIOError:
                        os.close(fd)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no free sandbox slot among uids {self.base}..{self.base + self.count - 1}")
            time.sleep(0.01)

    @staticmethod
    def release(fd: int) -> None:
        """Give a slot back (closing the fd drops the lock)."""
        os.close(fd)


class Isolation:
    """The slots and (if available) the cgroup layout of this process; probed once, shared by all sandboxes."""

    def __init__(self) -> None:
        self.slots = SlotPool()
        self._lock = threading.Lock()
        self._probed = False
        self._layout: CgroupLayout | None = None

    def layout(self) -> CgroupLayout | None:
        """Where per-run cgroups go (probed on first use), or None."""
        with self._lock:
            if not self._probed:
                self._probed, self._layout = True, probe_cgroups()
                if self._layout is not None:
                    atexit.register(_remove_parents, self._layout)
            return self._layout

    def describe(self) -> str:
        """Which per-run limits are in force, in words."""
        layout = self.layout()
        if os.geteuid() != 0:
            return "unprivileged: one user namespace per run; process and memory limits per process only"
        if layout is None:
            return "uid per run (RLIMIT_NPROC per run); no writable cgroups: memory limited per process only"
        version = "v2" if layout.v2 else "v1"
        return f"uid per run plus a cgroup {version} per run (pids.max, memory limit, equal CPU share)"

    @contextmanager
    def run_slot(self, *, max_processes: int, memory_bytes: int) -> Iterator[tuple[int, list[str]]]:
        """Hold a uid slot and a fresh cgroup for one run: yields (uid, command prefix joining the cgroup)."""
        uid, fd = self.slots.acquire()
        group = None
        try:
            layout = self.layout()
            if layout is not None:
                group = RunCgroup(layout, max_processes=max_processes, memory_bytes=memory_bytes)
            yield uid, group.join_command() if group is not None else []
        finally:
            if group is not None:
                group.remove()
            self.slots.release(fd)


def _remove_parents(layout: CgroupLayout) -> None:
    for parent in layout.parents:
        if not parent.name.startswith("posttrain-sandbox-"):
            continue  # our own cgroup (the cpu hierarchy's runs sit beside us)
        try:
            parent.rmdir()
        except OSError:
            pass
