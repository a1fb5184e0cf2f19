"""The verdict every verifier and reward source returns: a score plus why.

One small frozen dataclass shared by `posttrain.verifiers` and `posttrain.rewards`, so a verifier's verdict
passes straight through as a reward without conversion (model: open-instruct's
`VerificationResult(score, cost, reasoning)`).

>>> VerificationResult(1.0, "ok", "equal").to_json()
'{"score": 1.0, "status": "ok", "reason": "equal"}'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

Status = Literal["ok", "wrong", "error"]
"""`ok`: passed (or a neutral shaping score); `wrong`: the answer was judged wrong;
`error`: an infrastructure problem (sandbox missing, gold answer unparseable...) — never a verdict on the
answer, so callers exclude it rather than reward or punish it."""

STATUSES: tuple[Status, ...] = ("ok", "wrong", "error")


@dataclass(frozen=True)
class VerificationResult:
    """One verification.

    Attributes:
        score: The reward for this answer (1.0 / 0.0 for verifiers, any float for shaping terms).
        status: "ok", "wrong" or "error" (see `Status`).
        reason: One line for humans saying why.
    """

    score: float
    status: Status
    reason: str

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    @property
    def passed(self) -> bool:
        """Whether the answer passed (status "ok")."""
        return self.status == "ok"

    def to_dict(self) -> dict[str, float | str]:
        """The result as a plain dict (the JSON shape the CLI prints)."""
        return {"score": float(self.score), "status": self.status, "reason": self.reason}

    def to_json(self) -> str:
        """The result as one line of JSON."""
        return json.dumps(self.to_dict())


def ok(reason: str, score: float = 1.0) -> VerificationResult:
    """A passing result."""
    return VerificationResult(score, "ok", reason)


def wrong(reason: str, score: float = 0.0) -> VerificationResult:
    """A result for an answer judged wrong."""
    return VerificationResult(score, "wrong", reason)


def error(reason: str) -> VerificationResult:
    """An infrastructure error: score 0, to be excluded by the caller, never rewarded."""
    return VerificationResult(0.0, "error", reason)
