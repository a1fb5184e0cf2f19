"""Verifiers: programs that check a model answer (math, code). No torch imports here.

Public API:
- `verify_math(completion, gold)`, `MathVerifier`: final-answer extraction + math-verify equivalence in
  killable worker processes.
- `verify_code(solution, tests, entry_point)`, `CodeVerifier`, `CodeCase`: tests run in a bubblewrap sandbox.
- `Sandbox`, `SandboxLimits`, `SandboxUnavailable`: the sandbox itself.
- `VerificationResult(score, status, reason)`: what every verifier returns.
- `posttrain verify math|code ...`: the command line (`posttrain.verifiers.cli.main`).
"""

from posttrain.verifiers.code_tests import CodeCase, CodeVerifier, verify_code
from posttrain.verifiers.math_answer import MathVerifier, extract_final_answer, verify_math
from posttrain.verifiers.result import VerificationResult
from posttrain.verifiers.sandbox import Sandbox, SandboxLimits, SandboxUnavailable

__all__ = [
    "CodeCase",
    "CodeVerifier",
    "MathVerifier",
    "Sandbox",
    "SandboxLimits",
    "SandboxUnavailable",
    "VerificationResult",
    "extract_final_answer",
    "verify_code",
    "verify_math",
]
