"""A pool of long-lived worker processes that can be killed and replaced when a request overruns.

Why hand-written rather than `concurrent.futures.ProcessPoolExecutor` or `multiprocessing.Pool`: neither
can cancel a task that is already running — a worker stuck in C code (sympy raising `9^{9^{9}}`, holding the
GIL so even `signal.alarm` cannot interrupt it) blocks its slot until it finishes, and `ProcessPoolExecutor`
marks the whole pool broken when a worker dies. We need per-request wall-clock limits, kill-and-respawn of
just the offending worker, and callers on any thread. Workers are plain `subprocess` children started as
`python -m <module>` speaking JSON lines on stdin/stdout, rather than `multiprocessing` 'spawn'/'forkserver'
processes, because those re-import the caller's `__main__` in every worker (a training script that imports
torch would make every respawn cost seconds).

Protocol (one JSON object per line):
  worker → host, once at start: ``{"ready": true}``
  host → worker: ``{...request...}``
  worker → host, any number of times: ``{"progress": "<stage>"}`` (so a timed-out request says how far it got)
  worker → host, once per request: ``{"result": {...}}`` (or ``{"result": null, "exception": "..."}``)

A worker runs under an address-space limit (RLIMIT_AS, see `worker_setup`) and exits when its stdin closes.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import resource
import select
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any


class WorkerStartError(RuntimeError):
    """A worker process could not be started or did not report ready in time."""


@dataclass
class PoolReply:
    """What came back for one request.

    Attributes:
        result: The worker's result object, or None if it timed out or died first.
        timed_out: The request ran past its wall-clock limit and the worker was killed.
        crashed: The worker exited (e.g. hit its memory limit) before answering.
        progress: Progress markers the worker reported for this request, in order.
        seconds: Wall-clock time from sending the request to the answer (or the kill).
        exception: The worker's exception text if handling the request raised.
    """

    result: dict[str, Any] | None
    timed_out: bool = False
    crashed: bool = False
    progress: list[str] = field(default_factory=list)
    seconds: float = 0.0
    exception: str | None = None


class _Worker:
    """One child process plus a line buffer over its stdout."""

    def __init__(self, module: str, args: list[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
        self._buffer = b""
        self.ready = False

    def read_message(self, deadline: float) -> dict[str, Any] | None:
        """Next JSON message, or None on timeout. Raises EOFError if the worker has gone."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError("worker exited")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def wait_ready(self, timeout_s: float) -> None:
        if self.ready:
            return
        try:
            message = self.read_message(time.monotonic() + timeout_s)
        except (EOFError, ValueError) as exc:
            raise WorkerStartError(f"worker exited during start-up (exit code {self.process.poll()})") from exc
        if message is None or not message.get("ready"):
            self.kill()
            raise WorkerStartError(f"worker did not report ready within {timeout_s:.0f} s")
        self.ready = True

    def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        self.process.stdin.flush()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


class WorkerPool:
    """`size` worker processes running `python -m module`; thread-safe; kills and replaces on timeout.

    Args:
        module: Importable module whose `__main__` serves the JSON-lines protocol above.
        size: Number of worker processes (requests beyond that wait for a free worker).
        memory_limit_mb: Address-space limit for each worker (RLIMIT_AS), or None for none.
        startup_timeout_s: How long a (re)started worker may take to import and report ready.
    """

    def __init__(
        self,
        module: str,
        *,
        size: int = 2,
        memory_limit_mb: int | None = 1024,
        startup_timeout_s: float = 60.0,
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.module = module
        self.size = size
        self.startup_timeout_s = startup_timeout_s
        self._args = ["--memory-limit-mb", str(memory_limit_mb or 0)]
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        self._started = False
        self._closed = False

    def _spawn(self) -> _Worker:
        worker = _Worker(self.module, self._args)
        with self._lock:
            self._all.add(worker)
        return worker

    def _retire(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            self._all.discard(worker)

    def start(self) -> None:
        """Start all workers now (otherwise the first request does); they import in parallel."""
        with self._lock:
            if self._started:
                return
            if self._closed:
                raise RuntimeError("pool is closed")
            self._started = True
        for _ in range(self.size):
            self._idle.put(self._spawn())

    def request(self, message: dict[str, Any], timeout_s: float) -> PoolReply:
        """Send one request to a free worker and wait at most `timeout_s` for its result.

        On timeout or crash the worker is killed (its whole process, whatever it was doing) and a fresh
        one is started in its place; the reply says which happened and how far the worker got.

        Raises:
            WorkerStartError: If no worker could be started (an infrastructure problem).
        """
        self.start()
        worker = self._idle.get()
        while worker.ready and worker.process.poll() is not None:  # died while idle: not this request's fault
            self._replace(worker)
            worker = self._idle.get()
        try:
            worker.wait_ready(self.startup_timeout_s)
        except WorkerStartError:
            self._replace(worker)
            raise
        begin = time.monotonic()
        deadline = begin + timeout_s
        progress: list[str] = []
        try:
            worker.send(message)
            while True:
                reply = worker.read_message(deadline)
                if reply is None:
                    self._replace(worker)
                    return PoolReply(None, timed_out=True, progress=progress, seconds=time.monotonic() - begin)
                if "progress" in reply:
                    progress.append(str(reply["progress"]))
                    continue
                self._idle.put(worker)
                return PoolReply(
                    reply.get("result"),
                    progress=progress,
                    seconds=time.monotonic() - begin,
                    exception=reply.get("exception"),
                )
        except (EOFError, OSError, ValueError):
            self._replace(worker)
            return PoolReply(None, crashed=True, progress=progress, seconds=time.monotonic() - begin)

    def _replace(self, worker: _Worker) -> None:
        self._retire(worker)
        if not self._closed:
            self._idle.put(self._spawn())

    def close(self) -> None:
        """Kill every worker. The pool cannot be used afterwards."""
        self._closed = True
        with self._lock:
            workers = list(self._all)
            self._all.clear()
        for worker in workers:
            worker.kill()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def worker_setup(argv: list[str]) -> None:
    """Call first thing in a worker's `__main__`: apply the address-space limit from argv.

    Reads `--memory-limit-mb N` (0 means no limit). A worker exits when its stdin closes, i.e. when the host
    is gone. (Not PR_SET_PDEATHSIG: it fires when the *thread* that started the worker exits, and workers are
    started from whichever caller thread needs one — e.g. a short-lived ThreadPoolExecutor thread.)
    """
    limit_mb = int(argv[argv.index("--memory-limit-mb") + 1]) if "--memory-limit-mb" in argv else 0
    if limit_mb > 0:
        limit = limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def serve(handle: Any) -> None:
    """The worker loop: report ready, then answer each request line with `handle(request, report)`.

    `handle` returns the result dict; `report(stage)` sends a progress marker.
    """
    out = sys.stdout.buffer

    def send(message: dict[str, Any]) -> None:
        out.write(json.dumps(message).encode() + b"\n")
        out.flush()

    def report(stage: str) -> None:
        send({"progress": stage})

    send({"ready": True})
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        try:
            send({"result": handle(json.loads(line), report)})
        except Exception as exc:  # a bug or MemoryError in one request must not take the worker down
            send({"result": None, "exception": f"{type(exc).__name__}: {exc}"[:500]})


_DEFAULT_POOLS: dict[str, WorkerPool] = {}
_DEFAULT_POOLS_LOCK = threading.Lock()


def shared_pool(module: str, *, size: int, memory_limit_mb: int | None) -> WorkerPool:
    """A process-wide pool per (module, size, memory limit), created on first use, closed at exit."""
    key = f"{module}:{size}:{memory_limit_mb}"
    with _DEFAULT_POOLS_LOCK:
        pool = _DEFAULT_POOLS.get(key)
        if pool is None or pool._closed:
            pool = WorkerPool(module, size=size, memory_limit_mb=memory_limit_mb)
            _DEFAULT_POOLS[key] = pool
        return pool


@atexit.register
def _close_shared_pools() -> None:
    for pool in list(_DEFAULT_POOLS.values()):
        pool.close()
