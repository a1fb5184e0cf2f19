"""Candidate side of a function task: runs INSIDE its own sandbox (mounted at /sandbox/candidate.py).

Untrusted: the solution runs in this interpreter and may change anything here — that is harmless, because
the tests and the verdict live in a different process, in a different sandbox, under a different uid
(`sandbox_harness.py`). All this process can do is answer calls over a pipe, with plain data
(`plain_data.py`), and the runner trusts nothing it sends beyond that.

Usage: ``python -I -S /sandbox/candidate.py REQUEST_FD REPLY_FD`` with the solution at /sandbox/solution.py.
Messages are single lines of JSON:
  candidate → runner, once: ``{"ready": [callable names]}`` or ``{"raise": [type name, message]}``
  runner → candidate: ``{"call": name, "args": <plain>, "kwargs": <plain>}``
  candidate → runner: ``{"value": <plain>}`` or ``{"raise": [type name, message]}``
"""

import json
import os
import sys

if __package__:  # imported on the host (tests, doctests)
    from posttrain.verifiers import plain_data
else:  # run inside the sandbox, where plain_data.py is mounted beside this file
    sys.path.insert(0, "/sandbox")
    import plain_data

_write = os.write


def _send(fd, message):
    data = (json.dumps(message) + "\n").encode()
    while data:
        data = data[_write(fd, data) :]


def _raised(exc):
    return {"raise": [type(exc).__name__, str(exc)[:300]]}


def _reader(fd):
    buffer = b""
    while True:
        while b"\n" not in buffer:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return
            buffer += chunk
        line, buffer = buffer.split(b"\n", 1)
        yield json.loads(line)


def _answer(namespace, request):
    try:
        function = namespace[request["call"]]
        args, kwargs = plain_data.decode(request["args"]), plain_data.decode(request["kwargs"])
        value = function(*args, **kwargs)
    except BaseException as exc:  # SystemExit too: the runner sees it as the call raising
        return _raised(exc)
    try:
        return {"value": plain_data.encode(value)}
    except (ValueError, RecursionError) as exc:
        return {"raise": ["TypeError", f"the return value is not plain data: {exc}"]}


def main():
    request_fd, reply_fd = int(sys.argv[1]), int(sys.argv[2])
    namespace = {"__name__": "solution", "__builtins__": __builtins__}
    with open("/sandbox/solution.py") as handle:
        source = handle.read()
    try:
        exec(compile(source, "solution.py", "exec"), namespace)
    except BaseException as exc:
        _send(reply_fd, _raised(exc))
        os._exit(1)
    names = sorted(name for name, value in namespace.items() if callable(value) and not name.startswith("__"))
    _send(reply_fd, {"ready": names})
    for request in _reader(request_fd):
        _send(reply_fd, _answer(namespace, request))
    os._exit(0)


if __name__ == "__main__":
    main()
