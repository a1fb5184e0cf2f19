"""Trusted test runner of a function task: runs INSIDE its own sandbox (mounted at /sandbox/harness.py).

It runs the task's tests (/sandbox/tests.py) and calls the solution, which lives in another process in
another sandbox under another uid (`sandbox_candidate.py`), over two pipes. Arguments and return values
cross as plain data (`plain_data.py`): the tests only ever compare builtins, never an object of the
solution's classes; the solution cannot read this process's memory, frames or modules, nor replace its
failure handling, and nothing it prints reaches the verdict. The verdict is one JSON line on this
process's original stdout (the tests' own prints go to stderr).

Usage: ``python -I -S /sandbox/harness.py REQUEST_FD REPLY_FD ENTRY_POINT``. Every name the solution defines
as a callable is bound in the tests' namespace to a proxy; `check(<entry_point>)` is called if the tests
define `check` (module-level asserts run during their exec).

Verdicts: ``ok`` (every test passed), ``wrong`` (a test failed, the solution raised, died or sent
something that is not a reply), ``error`` (the task itself is broken: tests that do not compile, or that
pass the candidate an argument that is not plain data).
"""

import builtins
import json
import os
import sys

if __package__:  # imported on the host (tests, doctests)
    from posttrain.verifiers import plain_data
else:  # run inside the sandbox, where plain_data.py is mounted beside this file
    sys.path.insert(0, "/sandbox")
    import plain_data

MAX_REPLY_BYTES = 8 << 20


class CandidateGone(BaseException):
    """The solution's process died, hung up or sent a malformed reply (a BaseException: tests cannot catch it)."""


class NotPlainArgument(BaseException):
    """The tests passed an argument that cannot cross as plain data: a problem of the task, not the solution."""


class CandidateError(Exception):
    """The solution raised an exception that is not a builtin one (its name and message are kept)."""


def _exception(name, message):
    """The exception to raise in the tests for one the solution raised: builtin types only."""
    kind = getattr(builtins, name, None) if type(name) is str else None
    if isinstance(kind, type) and issubclass(kind, Exception) and kind.__module__ == "builtins":
        try:
            return kind(str(message))
        except Exception:
            pass
    return CandidateError(f"{str(name)[:100]}: {str(message)[:300]}")


class Channel:
    """The runner's end of the pipes to the solution's process."""

    def __init__(self, request_fd, reply_fd):
        self.request_fd, self.reply_fd, self.buffer = request_fd, reply_fd, b""

    def receive(self):
        while b"\n" not in self.buffer:
            if len(self.buffer) > MAX_REPLY_BYTES:
                raise CandidateGone(f"reply longer than {MAX_REPLY_BYTES} bytes")
            chunk = os.read(self.reply_fd, 1 << 16)
            if not chunk:
                raise CandidateGone("the solution's process exited")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):
            raise CandidateGone("malformed reply") from None
        if type(message) is not dict or len(message) != 1:
            raise CandidateGone("malformed reply")
        return message

    def call(self, name, args, kwargs):
        try:
            request = {"call": name, "args": plain_data.encode(args), "kwargs": plain_data.encode(kwargs)}
        except (ValueError, RecursionError) as exc:
            raise NotPlainArgument(f"the tests pass {name}() an argument that is not plain data ({exc})") from None
        data = (json.dumps(request) + "\n").encode()
        try:
            while data:
                data = data[os.write(self.request_fd, data) :]
        except OSError:
            raise CandidateGone("the solution's process exited") from None
        reply = self.receive()
        if type(reply.get("value")) is str:
            try:
                return plain_data.decode(reply["value"])
            except ValueError as exc:
                raise CandidateGone(f"malformed return value: {exc}") from None
        raised = reply.get("raise")
        if type(raised) is list and len(raised) == 2:
            raise _exception(*raised)
        raise CandidateGone("malformed reply")


class Candidate:
    """Stands for one of the solution's functions in the tests: calling it calls the real one remotely."""

    def __init__(self, channel, name):
        self._channel, self.__name__ = channel, name

    def __call__(self, *args, **kwargs):
        return self._channel.call(self.__name__, args, kwargs)


def _describe(exc, filename, source):
    """`AssertionError at tests.py:3: assert candidate(2) == 4` style description."""
    import traceback

    lines = source.splitlines()
    where = ""
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == filename and 0 < lineno <= len(lines):
            where = f" at {filename}:{lineno}: {lines[lineno - 1].strip()[:200]}"
    detail = str(exc)[:300]
    return f"{type(exc).__name__}{': ' + detail if detail else ''}{where}"


def _hello(channel, entry_point):
    """The solution's callable names, or a (status, reason) verdict if it cannot be tested."""
    try:
        hello = channel.receive()
    except CandidateGone as exc:
        return ("wrong", f"solution failed before the tests: {exc}")
    raised, names = hello.get("raise"), hello.get("ready")
    if type(raised) is list and len(raised) == 2:
        return ("wrong", f"solution raised {str(raised[0])[:100]}: {str(raised[1])[:300]}")
    if type(names) is not list or not all(type(name) is str for name in names):
        return ("wrong", "solution sent a malformed greeting")
    if entry_point and entry_point not in names:
        return ("wrong", f"solution does not define {entry_point!r}")
    return [name for name in names if name.isidentifier()]


def run_tests(channel, tests, entry_point):
    """Run the tests against the solution; returns (status, reason)."""
    try:
        code = compile(tests, "tests.py", "exec")
    except (SyntaxError, ValueError) as exc:
        return ("error", f"bad task: the tests do not compile: {exc}")
    names = _hello(channel, entry_point)
    if type(names) is tuple:
        return names
    namespace = {"__name__": "tests", **{name: Candidate(channel, name) for name in names}}
    try:
        exec(code, namespace)
        check = namespace.get("check")
        if entry_point and callable(check):
            check(namespace[entry_point])
    except CandidateGone as exc:
        return ("wrong", f"solution failed during the tests: {exc}")
    except NotPlainArgument as exc:
        return ("error", f"bad task: {exc}")
    except BaseException as exc:  # SystemExit from the tests too: any other way out is a failed test
        return ("wrong", "test failed: " + _describe(exc, "tests.py", tests))
    return ("ok", "all tests passed")


def main():
    verdict_fd = os.dup(1)
    os.dup2(2, 1)  # the tests' prints go to stderr; stdout carries the verdict only
    request_fd, reply_fd, entry_point = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    with open("/sandbox/tests.py") as handle:
        tests = handle.read()
    status, reason = run_tests(Channel(request_fd, reply_fd), tests, entry_point)
    os.write(verdict_fd, (json.dumps({"status": status, "reason": reason[:1000]}) + "\n").encode())
    os._exit(0)


if __name__ == "__main__":
    main()
