"""The constitution file: principles, each with a critique and a revision request, and the prompt templates.

A constitution is a YAML file (Bai et al. 2022, arXiv 2212.08073 §3.1 and appendix C: each principle is a
critique request paired with a revision request)::

    templates:                      # optional; paths relative to this file; default: the built-in text
      critique: templates/critique.txt
      revision: templates/revision.txt
      judge: templates/judge.txt
    principles:
      - name: answer_format
        critique_request: "Does the response end with Answer: N?"
        revision_request: "Rewrite the response to end with Answer: N."
        judge_request: "Which response ends with Answer: N?"   # optional; default the critique request
        check: answer_format        # optional: a program check (posttrain.data.principle_checks), the ground truth
        check_args: {}
        weight: 1.0                 # how often the principle is drawn, relative to the others

A template is the user message a role model answers, with ``{placeholders}`` (``{{`` and ``}}`` for literal
braces). The critique template needs ``{response}`` and ``{critique_request}`` (``{prompt}`` optional); the
revision template ``{response}``, ``{critique}`` and ``{revision_request}`` (``{prompt}`` optional); the
judge template ``{response_a}`` and ``{response_b}`` (``{prompt}``, ``{judge_request}`` optional). The judge
answers with the label of the better response, ``A`` or ``B``.

Every problem (a principle without a request, a template without a required placeholder or with an unknown
one, an unknown check) is reported at once, naming the principle or template, before anything is generated.
No torch here.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from posttrain.errors import PosttrainError
from posttrain.files import json_hash
from posttrain.data.principle_checks import PRINCIPLE_CHECKS, run_check

JUDGE_LABELS = ("A", "B")

DEFAULT_TEMPLATES = {
    "critique": "{critique_request}\nQuestion: {prompt}\nResponse: {response}",
    "revision": "{revision_request}\nQuestion: {prompt}\nResponse: {response}\nCritique: {critique}",
    "judge": "{judge_request}\nQuestion: {prompt}\nA: {response_a}\nB: {response_b}",
}
# per template: (placeholders it must have, placeholders it may have)
PLACEHOLDERS = {
    "critique": ({"response", "critique_request"}, {"prompt"}),
    "revision": ({"response", "critique", "revision_request"}, {"prompt"}),
    "judge": ({"response_a", "response_b"}, {"prompt", "judge_request"}),
}
_PRINCIPLE_KEYS = {"name", "critique_request", "revision_request", "judge_request", "check", "check_args", "weight"}


class ConstitutionError(PosttrainError, ValueError):
    """A constitution that cannot be used; the message names the file and every principle/template at fault."""


@dataclass(frozen=True)
class Principle:
    """One principle: what the critic is asked, what the reviser is asked, and what the judge is asked."""

    name: str
    critique_request: str
    revision_request: str
    judge_request: str
    check: str | None = None
    check_args: dict[str, Any] = field(default_factory=dict)
    weight: float = 1.0

    def follows(self, response: str) -> bool | None:
        """The program check's verdict on ``response``; None when the principle has no check."""
        return None if self.check is None else run_check(self.check, self.check_args, response)


@dataclass(frozen=True)
class Constitution:
    """Checked principles and templates; renders the prompts of the critic, the reviser and the judge."""

    principles: tuple[Principle, ...]
    templates: dict[str, str]
    origin: str = "<built-in>"

    def principle(self, name: str) -> Principle:
        for principle in self.principles:
            if principle.name == name:
                return principle
        raise KeyError(f"{self.origin}: no principle {name!r}; principles: {[p.name for p in self.principles]}")

    def sample(self, rng: random.Random) -> Principle:
        """A principle drawn in proportion to its weight (one per critique round, as in §3.1)."""
        return rng.choices(self.principles, weights=[p.weight for p in self.principles])[0]

    def critique_prompt(self, principle: Principle, prompt: str, response: str) -> str:
        return self.templates["critique"].format(
            critique_request=principle.critique_request, prompt=prompt, response=response
        )

    def revision_prompt(self, principle: Principle, prompt: str, response: str, critique: str) -> str:
        return self.templates["revision"].format(
            revision_request=principle.revision_request, prompt=prompt, response=response, critique=critique
        )

    def judge_prompt(self, principle: Principle, prompt: str, response_a: str, response_b: str) -> str:
        return self.templates["judge"].format(
            judge_request=principle.judge_request, prompt=prompt, response_a=response_a, response_b=response_b
        )

    def echo_markers(self) -> list[str]:
        """Text that belongs to the prompts, not to an answer: the templates' fixed lines and every request.
        A revision that contains one has echoed its prompt (`posttrain.rlaif.filters`)."""
        markers: set[str] = set()
        for template in self.templates.values():
            for literal, *_ in string.Formatter().parse(template):
                markers.update(line.strip() for line in literal.splitlines() if len(line.strip()) >= 4)
        for principle in self.principles:
            markers.update((principle.critique_request, principle.revision_request, principle.judge_request))
        return sorted(m for m in markers if m)

    def fingerprint(self) -> str:
        """A hash of everything that changes what the role models are asked."""
        content = {"templates": self.templates, "principles": [vars(p) for p in self.principles]}
        return json_hash(content)


def template_problems(name: str, text: str) -> list[str]:
    """What is wrong with template ``name`` (missing or unknown placeholders, unbalanced braces)."""
    required, optional = PLACEHOLDERS[name]
    try:
        found = {field_name for _, field_name, _, _ in string.Formatter().parse(text) if field_name is not None}
    except ValueError as err:
        return [f"template {name!r}: {err} (write literal braces as {{{{ and }}}})"]
    problems = []
    missing = sorted(required - found)
    if missing:
        problems.append(f"template {name!r} lacks the placeholder(s) {', '.join('{' + m + '}' for m in missing)}")
    unknown = sorted(found - required - optional)
    if unknown:
        allowed = ", ".join("{" + p + "}" for p in sorted(required | optional))
        problems.append(f"template {name!r} has unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)}; allowed: {allowed}")
    return problems


def _principle(raw: Any, index: int, problems: list[str]) -> Principle | None:
    if not isinstance(raw, dict):
        problems.append(f"principles[{index}]: a principle must be a mapping")
        return None
    name = raw.get("name")
    label = f"principle {name!r}" if isinstance(name, str) and name else f"principles[{index}]"
    if not (isinstance(name, str) and name):
        problems.append(f"{label}: needs a `name`")
    unknown = sorted(set(raw) - _PRINCIPLE_KEYS)
    if unknown:
        problems.append(f"{label}: unknown key(s) {unknown}; keys: {sorted(_PRINCIPLE_KEYS)}")
    texts = {}
    for key in ("critique_request", "revision_request", "judge_request"):
        value = raw.get(key)
        if value is None and key == "judge_request":
            value = raw.get("critique_request")
        if not (isinstance(value, str) and value.strip()):
            problems.append(f"{label}: missing `{key}` (a non-empty string)")
        texts[key] = value.strip() if isinstance(value, str) else ""
    check, check_args = raw.get("check"), raw.get("check_args") or {}
    if check is not None and check not in PRINCIPLE_CHECKS:
        problems.append(f"{label}: unknown check {check!r}; checks: {', '.join(PRINCIPLE_CHECKS.names())}")
    if not isinstance(check_args, dict):
        problems.append(f"{label}: `check_args` must be a mapping")
        check_args = {}
    elif check in PRINCIPLE_CHECKS:
        try:
            run_check(check, check_args, "Answer: 1")
        except TypeError as err:
            problems.append(f"{label}: bad `check_args` for check {check!r}: {err}")
    weight = raw.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
        problems.append(f"{label}: `weight` must be a positive number, got {weight!r}")
        weight = 1.0
    return Principle(str(name), texts["critique_request"], texts["revision_request"], texts["judge_request"],
                     check, dict(check_args), float(weight))


def parse_constitution(raw: Any, origin: str = "<constitution>", base_dir: Path | None = None) -> Constitution:
    """Checks a parsed constitution (a mapping) and returns it; `ConstitutionError` lists every problem.

    Template paths are resolved against ``base_dir`` (the constitution file's folder).
    """
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise ConstitutionError(f"{origin}: a constitution must be a mapping with `principles` (and `templates`)")
    unknown = sorted(set(raw) - {"principles", "templates"})
    if unknown:
        problems.append(f"unknown top-level key(s) {unknown}; keys: principles, templates")
    templates = dict(DEFAULT_TEMPLATES)
    raw_templates = raw.get("templates") or {}
    if not isinstance(raw_templates, dict):
        problems.append("`templates` must map template names (critique, revision, judge) to files")
        raw_templates = {}
    for name, value in raw_templates.items():
        if name not in DEFAULT_TEMPLATES:
            problems.append(f"template {name!r}: unknown template; templates: {', '.join(DEFAULT_TEMPLATES)}")
            continue
        if isinstance(value, dict) and isinstance(value.get("text"), str):
            templates[name] = value["text"]
            continue
        if not isinstance(value, str):
            problems.append(f"template {name!r}: give a file path (or `{{text: ...}}`), got {value!r}")
            continue
        path = Path(value) if Path(value).is_absolute() or base_dir is None else base_dir / value
        if not path.is_file():
            problems.append(f"template {name!r}: file not found: {path}")
            continue
        templates[name] = path.read_text().rstrip("\n")
    for name, text in templates.items():
        problems += template_problems(name, text)
    raw_principles = raw.get("principles")
    principles: list[Principle] = []
    if not isinstance(raw_principles, list) or not raw_principles:
        problems.append("`principles` must be a non-empty list")
        raw_principles = []
    for index, item in enumerate(raw_principles):
        principle = _principle(item, index, problems)
        if principle is not None:
            principles.append(principle)
    names = [p.name for p in principles]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        problems.append(f"principle name(s) used twice: {repeated}")
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise ConstitutionError(f"{origin}: {len(problems)} problem(s):\n{listing}")
    return Constitution(tuple(principles), templates, origin)


def load_constitution(path: str | Path) -> Constitution:
    """Reads and checks a constitution YAML file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ConstitutionError(f"constitution file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConstitutionError(f"{path}: not valid YAML: {err}") from None
    return parse_constitution(raw, str(path), path.parent)
