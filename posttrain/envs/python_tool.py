"""A Python-execution tool that runs the model's code in the code sandbox (`posttrain.verifiers.sandbox`).

The code runs as a fresh program per call, inside bubblewrap with no network, a private /tmp, its own uid
and the sandbox's CPU, memory, process and output limits: everything the code verifier's hardening gives.
The observation is what the program printed (stdout, then stderr), cut to ``max_output_chars``. A program
that fails or runs out of time is still an observation (the model reads the traceback or
``error: timed out``); only a sandbox that cannot start at all is an infrastructure error, raised so the
episode is excluded rather than trained on.

Use it in an environment of one's own::

    from posttrain.envs import ToolEnvironment
    from posttrain.envs.python_tool import python

    class PythonEnvironment(ToolEnvironment):
        tools = (python,)
"""

from __future__ import annotations

from posttrain.envs.tools import ToolInfrastructureError
from posttrain.verifiers.sandbox import Sandbox, SandboxLimits, SandboxUnavailable

MAX_OUTPUT_CHARS = 2000
_SANDBOX = Sandbox(limits=SandboxLimits(timeout_s=5.0, cpu_s=5, memory_mb=512, max_output_bytes=64_000))


def python(code: str) -> str:
    """Runs a Python program in a sandbox and returns what it printed.

    Args:
        code: The whole program; print the values you want to see.
    """
    try:
        run = _SANDBOX.run([_SANDBOX.python(), "-I", "-c", code])
    except SandboxUnavailable as error:
        raise ToolInfrastructureError(f"the sandbox cannot run here: {error}") from None
    if not run.started:
        raise ToolInfrastructureError(f"the sandbox did not start the program: {run.stderr[:200]}")
    if run.timed_out:
        return f"error: timed out after {_SANDBOX.limits.timeout_s:g} s"
    if run.output_overflow:
        return "error: the program printed too much"
    output = run.stdout + (run.stderr if run.returncode != 0 else "")
    return output[:MAX_OUTPUT_CHARS] if len(output) <= MAX_OUTPUT_CHARS else output[:MAX_OUTPUT_CHARS] + "..."
