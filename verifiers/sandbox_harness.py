"""Test harness that runs INSIDE the sandbox (mounted read-only at /sandbox/harness.py); not for import.

Reads one `marshal`-encoded dict from stdin — ``{"token", "mode", "solution", "tests", "entry_point",
"cases"}`` — then replaces stdin with /dev/null and runs the tests. (`marshal` rather than JSON, and lazy
imports, because importing `json` (which imports `re`), `subprocess` and `traceback` took ~35 ms of a ~60 ms
run; both ends run the same interpreter, so the marshal format matches.)

- mode "function": exec the solution, exec the tests, call ``check(<entry_point>)`` if the tests define
  `check` (module-level asserts in the tests run during their exec).
- mode "io": run the solution as a script once per case (`python -I -S solution.py`), feeding the case's
  input, and compare every output line (trailing whitespace and trailing blank lines ignored): all lines,
  not a prefix. A non-zero exit status fails the case.

Only after every test passed does it write the per-run random token on its own stdout line: a program that
calls `sys.exit(0)` / `os._exit(0)` or crashes before the tests finish never prints it. (A program that walks
this interpreter's memory could still find the token; the sandbox, not the token, is the security boundary.)
On failure it writes one line starting with `MARKER` to stderr saying why, and exits 1.
"""

import marshal
import os
import sys

MARKER = "posttrain-harness-failure: "
_write = os.write
_exit = os._exit


def _fail(message: str) -> None:
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    _write(2, ("\n" + MARKER + message.replace("\n", " ")[:1000] + "\n").encode("utf-8", "replace"))
    _exit(1)


def _describe(exc: BaseException, filename: str, source: str) -> str:
    """`AssertionError at tests.py:3: assert candidate(2) == 4` style description."""
    import traceback

    lines = source.splitlines()
    where = ""
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == filename and 0 < lineno <= len(lines):
            where = f" at {filename}:{lineno}: {lines[lineno - 1].strip()[:200]}"
    detail = str(exc)[:300]
    return f"{type(exc).__name__}{': ' + detail if detail else ''}{where}"


def run_function(solution: str, tests: str, entry_point: str) -> None:
    namespace = {"__name__": "solution", "__builtins__": __builtins__}
    try:
        exec(compile(solution, "solution.py", "exec"), namespace)
    except BaseException as exc:  # SystemExit included: leaving early is a failure
        _fail("solution raised " + _describe(exc, "solution.py", solution))
    if entry_point and entry_point not in namespace:
        _fail(f"solution does not define {entry_point!r}")
    try:
        exec(compile(tests, "tests.py", "exec"), namespace)
        check = namespace.get("check")
        if entry_point and callable(check):
            check(namespace[entry_point])
    except BaseException as exc:
        _fail("test failed: " + _describe(exc, "tests.py", tests))


def _lines(text: str) -> list:
    return [line.rstrip() for line in text.rstrip().splitlines()]


def run_io(solution: str, cases: list) -> None:
    import subprocess

    path = "/tmp/solution.py"
    with open(path, "w") as handle:
        handle.write(solution)
    for index, case in enumerate(cases):
        # No per-case timeout: the host's wall-clock limit covers the whole run.
        done = subprocess.run([sys.executable, "-I", "-S", path], input=case["input"].encode(), capture_output=True)
        if done.returncode != 0:
            tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            _fail(f"case {index}: exit status {done.returncode} {tail[0][:300]}")
        got, expected = _lines(done.stdout.decode("utf-8", "replace")), _lines(case["output"])
        if got != expected:
            _fail(f"case {index}: output {len(got)} line(s) differs from expected {len(expected)} line(s)")


def main() -> None:
    chunks = []
    while True:
        chunk = os.read(0, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    payload = marshal.loads(b"".join(chunks))
    token = payload.pop("token")
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    if payload["mode"] == "io":
        run_io(payload["solution"], payload["cases"])
    else:
        run_function(payload["solution"], payload["tests"], payload.get("entry_point") or "")
    try:
        sys.stdout.flush()
    except BaseException:
        pass
    _write(1, ("\n" + token + "\n").encode())
    _exit(0)


if __name__ == "__main__":
    main()
