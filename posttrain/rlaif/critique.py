"""The critique -> revise loop of Constitutional AI (Bai et al. 2022, arXiv 2212.08073 §3.1).

Per prompt there is a response; per round a principle is drawn, the critic writes a critique of the current
response under it, and the reviser rewrites the response given the critique. After N rounds the final
revision is the supervised target (SL-CAI), and (revision ≻ original response) is a preference pair.

A round's revision that is degenerate (`posttrain.rlaif.filters`) is dropped and counted, and the response
stays as it was for the next round. A prompt whose response was never revised gives no training data.
Generation is a callable, so this module runs with any model (and with stubs in tests).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from posttrain.data.constitution import Constitution
from posttrain.rlaif.filters import REASONS, degenerate_reason

# texts (user messages) -> (generated text, cut off by the budget?) per text
Generate = Callable[[list[str]], list[tuple[str, bool]]]


@dataclass
class RoundRecord:
    """One round of one prompt: the principle, the critique, the revision, and why it was dropped (if)."""

    principle: str
    critique: str
    revision: str
    dropped: str | None


@dataclass
class Revised:
    """One prompt through every round."""

    prompt: str
    original: str
    final: str
    rounds: list[RoundRecord] = field(default_factory=list)
    example: dict[str, Any] = field(default_factory=dict)

    @property
    def revised(self) -> bool:
        return any(r.dropped is None for r in self.rounds)

    def sft_row(self) -> dict[str, Any]:
        """(prompt, final revision) as a chat row for SFT."""
        return {"messages": [{"role": "user", "content": self.prompt}, {"role": "assistant", "content": self.final}],
                **self.example}

    def pair_row(self) -> dict[str, Any]:
        """(prompt, final revision ≻ original) with the accepted rounds' principles and critiques."""
        kept = [r for r in self.rounds if r.dropped is None]
        return {"prompt": self.prompt, "chosen": self.final, "rejected": self.original,
                "principles": [r.principle for r in kept], "critiques": [r.critique for r in kept],
                **{k: v for k, v in self.example.items() if k not in ("prompt", "chosen", "rejected")}}


@dataclass
class LoopResult:
    """Every prompt's record and the counts of dropped revisions by reason."""

    items: list[Revised]
    dropped: dict[str, int]
    rounds: int

    def metrics(self) -> dict[str, float]:
        total = len(self.items) * self.rounds
        out = {f"revise/dropped_{reason}": float(self.dropped[reason]) for reason in REASONS}
        out["revise/revisions"] = float(total)
        out["revise/accepted"] = float(total - sum(self.dropped.values()))
        out["revise/prompts_revised"] = float(sum(item.revised for item in self.items))
        out["revise/prompts"] = float(len(self.items))
        return out


def critique_and_revise(
    constitution: Constitution,
    prompts: Sequence[str],
    responses: Sequence[str],
    generate: Generate,
    *,
    rounds: int,
    rng: random.Random,
    max_chars: int,
    examples: Sequence[dict[str, Any]] | None = None,
    keep_answer: bool = False,
) -> LoopResult:
    """Runs ``rounds`` critique/revision rounds over every (prompt, response), batched across prompts;
    ``keep_answer`` drops revisions that change the response's final number (`filters.degenerate_reason`)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    items = [Revised(p, r, r, example=dict(examples[i]) if examples else {}) for i, (p, r) in enumerate(zip(prompts, responses))]
    markers = constitution.echo_markers()
    dropped = {reason: 0 for reason in REASONS}
    for _ in range(rounds):
        principles = [constitution.sample(rng) for _ in items]
        critiques = generate([constitution.critique_prompt(p, it.prompt, it.final) for p, it in zip(principles, items)])
        revisions = generate([
            constitution.revision_prompt(p, it.prompt, it.final, critique.strip())
            for p, it, (critique, _) in zip(principles, items, critiques)
        ])
        for item, principle, (critique, _), (revision, truncated) in zip(items, principles, critiques, revisions):
            revision = revision.strip()
            reason = degenerate_reason(item.final, revision, truncated=truncated, max_chars=max_chars,
                                       echo_markers=markers, keep_answer=keep_answer)
            item.rounds.append(RoundRecord(principle.name, critique.strip(), revision, reason))
            if reason is None:
                item.final = revision
            else:
                dropped[reason] += 1
    return LoopResult(items, dropped, rounds)


def violation_rates(constitution: Constitution, responses: Sequence[str]) -> dict[str, float]:
    """Per checkable principle, the share of responses that break it, and the share breaking any.

    >>> from posttrain.data.rlaif_demonstrations import arithmetic_constitution
    >>> violation_rates(arithmetic_constitution(), ["Answer: 3", "3"])["any"]
    0.5
    """
    checked = [p for p in constitution.principles if p.check is not None]
    if not responses or not checked:
        return {}
    broken = {p.name: [not p.follows(r) for r in responses] for p in checked}
    out = {name: sum(flags) / len(responses) for name, flags in broken.items()}
    out["any"] = sum(any(flags[i] for flags in broken.values()) for i in range(len(responses))) / len(responses)
    return out
