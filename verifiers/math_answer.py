"""Math answer verifier: extract the final answer, compare it with the gold answer.

Equivalence (fractions, LaTeX, sets, intervals, `x=3` vs `3`...) is decided by the `math-verify` package,
run in killable worker processes (`math_worker.py` via `worker_pool.py`) with a wall-clock limit and an
address-space limit: math-verify's own timeout uses `signal.alarm`, which only works in a main thread, and
an answer such as `\\boxed{9^{9^{9}}}` can hold the GIL for tens of seconds — so checking in-process is
unsafe from trainer threads. A worker that overruns is killed and replaced; the answer scores 0.

Hand-written here, and why:
- Final-answer extraction (`\\boxed{}`, `#### N`, "The answer is N", "Answer: N", the last number): we need
  "only the final answer counts" and "several conflicting answers score 0", which math-verify's own
  extraction (it returns the first answer it can parse, anywhere in the text) does not give.
- A fast path for plain integers, decimals and simple fractions (`12`, `-0.5`, `1,000`, `3/4`,
  `\\frac{3}{4}`), compared exactly with `fractions.Fraction` in the calling thread: it skips the worker
  round trip, which is most of the cost on easy numeric tasks (GSM8K-style). Anything else, or two numbers
  within 0.1% of each other (math-verify rounds floats: `0.333333` equals `1/3`), goes to math-verify.

>>> extract_final_answer("so x = 2 and \\\\boxed{\\\\frac{1}{2}}").answer
'\\\\frac{1}{2}'
>>> verify_math("The answer is 1,000.", "1000")
VerificationResult(score=1.0, status='ok', reason='equal (exact numeric)')
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction

from posttrain.verifiers.result import VerificationResult, error, ok, wrong
from posttrain.verifiers.worker_pool import WorkerPool, WorkerStartError, shared_pool

logger = logging.getLogger(__name__)

EXTRACTORS: tuple[str, ...] = ("boxed", "gsm8k", "answer_is", "answer_colon", "bare", "last_number")
"""Known extractors: `boxed` (`\\boxed{..}`/`\\fbox{..}`), `gsm8k` (`#### N`), `answer_is` ("The answer
is N"), `answer_colon` ("Answer: N"), `bare` (the whole text, if it is one short line of math rather than prose),
`last_number`."""
DEFAULT_EXTRACTORS: tuple[str, ...] = ("boxed", "gsm8k", "answer_is", "answer_colon", "bare", "last_number")
"""The `final_answer` policy: a marked answer when there is one, else the last number of the prose (as the
`exact_match` evaluator reads answers), so "So 3 + 4 = 7 and then 7 * 2 = 14." answers 14."""
ANSWER_POLICIES: dict[str, tuple[str, ...]] = {
    "final_answer": DEFAULT_EXTRACTORS,
    "last_number": ("last_number",),
    "marked": ("boxed", "gsm8k", "answer_is", "answer_colon"),
}
"""Named answer-extraction policies, shared by the math reward (`match:`) and the `exact_match` evaluator
(`match:`): `final_answer` (the default extractors), `last_number` (only the last number), `marked` (only an
explicitly marked answer: boxed, `####`, "the answer is", "Answer:")."""
MAX_ANSWER_CHARS = 1000
# Extraction keeps at most this much of one candidate, and gives up on a text with more candidates than
# _MAX_CANDIDATES (hedging anyway): both keep it linear in the text's length.
_MAX_CANDIDATE_CHARS = 2 * MAX_ANSWER_CHARS
_MAX_CANDIDATES = 100
_BARE_MAX_CHARS = 100
_WORKER_MODULE = "posttrain.verifiers.math_worker"


@dataclass(frozen=True)
class ExtractedAnswer:
    """The final answer found in a text.

    Attributes:
        answer: The answer text, or None if none was found or several conflicting ones were.
        extractor: Which extractor found it ("" if none did).
        reason: Why there is no answer (empty when there is one).
    """

    answer: str | None
    extractor: str
    reason: str = ""


_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"[{}]")


def _boxed_contents(text: str) -> list[str]:
    """Contents of every `\\boxed{...}` / `\\fbox{...}`, braces balanced, in order of opening.

    One pass over the braces with a stack (linear time: rescanning from each opening took minutes on
    20,000 unclosed `\\boxed{`); an unclosed box yields nothing.
    """
    openings = {match.end() - 1 for match in _BOXED.finditer(text)}
    found: list[tuple[int, str]] = []
    stack: list[int] = []  # positions of the open braces; -1 for a brace that opens no box
    for brace in _BRACE.finditer(text):
        index = brace.start()
        if text[index] == "{":
            stack.append(index if index in openings else -1)
        elif stack:
            start = stack.pop()
            if start >= 0 and len(found) <= _MAX_CANDIDATES:  # overlong content: cut, still too long to pass
                found.append((start, text[start + 1 : min(index, start + 2 + _MAX_CANDIDATE_CHARS)]))
    return [content for _, content in sorted(found)]


# "The answer is N" / "Answer: N": the answer runs to the end of its sentence — a period followed by a space or
# the line's end (a decimal point is followed by a digit), so "The answer is 4. Wait, the answer is 5." yields
# two candidates. Found with a plain lead-in regex and string search: the former single regex with a lazy
# group before `[ \t]*` backtracked quadratically (95-117 s on "The answer is 3" + 50k spaces).
_ANSWER_IS = re.compile(r"answer is[ \t]*:?", re.IGNORECASE)
_ANSWER_COLON = re.compile(r"answer\**[ \t]*:[ \t*]*", re.IGNORECASE)  # **Answer:** 5
_SENTENCE_END = re.compile(r"\.(?=[ \t]|$)")
_GSM8K = re.compile(r"####[ \t]*([^\n]+)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


def _sentences_after(lead_in: re.Pattern[str], text: str) -> list[str]:
    """The rest of the sentence after each match of `lead_in` (linear in the text's length)."""
    found = []
    for match in lead_in.finditer(text):
        stop = match.end() + _MAX_CANDIDATE_CHARS + 1  # an overlong sentence stays too long to pass
        line_end = text.find("\n", match.end(), stop)
        line = text[match.end() : line_end if line_end >= 0 else stop]
        period = _SENTENCE_END.search(line)
        answer = (line[: period.start()] if period else line).strip(" \t")
        if answer:
            found.append(answer)
        if len(found) > _MAX_CANDIDATES:
            break
    return found


def _clean(answer: str) -> str:
    """Strip the wrapping around a math answer: whitespace, a final period, `$..$`, `\\(..\\)`, `**..**`."""
    answer = answer.strip().rstrip(".").strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**")):
        if len(answer) >= len(left) + len(right) and answer.startswith(left) and answer.endswith(right):
            answer = answer[len(left) : len(answer) - len(right)].strip()
    return answer.rstrip(".").strip()


def _candidates(text: str, extractor: str) -> list[str]:
    if extractor == "boxed":
        return _boxed_contents(text)
    if extractor == "gsm8k":
        return [match.group(1) for match in _GSM8K.finditer(text)]
    if extractor == "answer_is":
        return _sentences_after(_ANSWER_IS, text)
    if extractor == "answer_colon":
        return _sentences_after(_ANSWER_COLON, text)
    if extractor == "bare":
        stripped = text.strip()
        if not stripped or "\n" in stripped or len(stripped) > _BARE_MAX_CHARS:
            return []
        # Prose is not a bare answer: no word of 3+ letters outside LaTeX commands (\\frac, \\text...).
        return [] if re.search(r"[A-Za-z]{3,}", re.sub(r"\\[A-Za-z]+", "", stripped)) else [stripped]
    if extractor == "last_number":
        numbers = _NUMBER.findall(text)
        return numbers[-1:]
    raise ValueError(f"unknown extractor {extractor!r}; valid extractors: {', '.join(EXTRACTORS)}")


def extract_final_answer(text: str, extractors: Sequence[str] = DEFAULT_EXTRACTORS) -> ExtractedAnswer:
    """Find the final answer: the first extractor (in order) that finds any candidate decides.

    If that extractor finds several candidates that differ (e.g. two different boxed answers), there is no
    answer: hedging between answers must not be rewarded.

    Args:
        text: The model's completion.
        extractors: Names from `EXTRACTORS`, tried in order.
    """
    for extractor in extractors:
        raw = _candidates(text, extractor)
        if len(raw) > _MAX_CANDIDATES:
            return ExtractedAnswer(None, extractor, f"more than {_MAX_CANDIDATES} answers ({extractor})")
        candidates = [candidate for candidate in map(_clean, raw) if candidate]
        if not candidates:
            continue
        distinct = list(dict.fromkeys(re.sub(r"\s+", "", candidate) for candidate in candidates))
        if len(distinct) > 1:
            return ExtractedAnswer(None, extractor, f"{len(distinct)} conflicting answers ({extractor})")
        return ExtractedAnswer(candidates[-1], extractor)
    return ExtractedAnswer(None, "", "no final answer found")


def gold_answer(gold: str) -> str:
    """The gold answer text: the boxed / `####` part of a worked solution, else the whole string."""
    found = extract_final_answer(gold, ("boxed", "gsm8k"))
    return found.answer if found.answer is not None else _clean(gold)


_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_SLASH_FRACTION = re.compile(r"([+-]?\d+)\s*/\s*(\d+)")
_LATEX_FRACTION = re.compile(r"([+-]?)\\[dt]?frac\{\s*(\d+)\s*\}\{\s*(\d+)\s*\}")


def simple_number(text: str) -> Fraction | None:
    """`text` as an exact number if it is a plain integer, decimal or simple fraction, else None.

    >>> simple_number("1,000"), simple_number("-\\\\frac{3}{4}"), simple_number("x=3")
    (Fraction(1000, 1), Fraction(-3, 4), None)
    """
    text = text.strip().replace("{,}", ",").replace("\\!", "").replace(" ", "")
    if len(text) > 40:
        return None
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    if _DECIMAL.fullmatch(text):
        return Fraction(text)
    for pattern in (_SLASH_FRACTION, _LATEX_FRACTION):
        match = pattern.fullmatch(text)
        if match:
            *sign, numerator, denominator = match.groups()
            if int(denominator) == 0:
                return None
            value = Fraction(int(numerator), int(denominator))
            return -value if sign and sign[0] == "-" else value
    return None


def compare_fast(pred: str, gold: str) -> VerificationResult | None:
    """Exact comparison when both are simple numbers; None when math-verify must decide."""
    pred_value, gold_value = simple_number(pred), simple_number(gold)
    if pred_value is None or gold_value is None:
        return None
    if pred_value == gold_value:
        return ok("equal (exact numeric)")
    # math-verify rounds to 6 decimals, so 0.333333 equals 1/3: leave near misses to it, reject the rest.
    if abs(pred_value - gold_value) > Fraction(1, 1000) * max(1, abs(pred_value), abs(gold_value)):
        return wrong(f"not equal: {pred!r} vs gold {gold!r}")
    return None


def answers_match(completion: str, gold: str, policy: str) -> bool:
    """Whether ``completion``'s answer under ``policy`` (a name in `ANSWER_POLICIES`) equals the gold answer.

    In-process and exact: simple numbers compare as numbers (`1,000` = `1000`, `0.5` = `1/2`; against a
    numeric gold, an answer with words around its number, `x = 3`, gives its last number), anything else as
    text with whitespace removed. The math reward decides the rest (`x=3` vs `3`, LaTeX) with
    math-verify in worker processes; an evaluator over many rows uses this cheaper rule.

    >>> answers_match("So 3 + 4 = 7 and then 7 * 2 = 14.", "14", "final_answer")
    True
    >>> answers_match("The answer is 4. No, the answer is 5.", "5", "final_answer")
    False
    """
    if policy not in ANSWER_POLICIES:
        raise ValueError(f"unknown answer policy {policy!r}; policies: {', '.join(ANSWER_POLICIES)}")
    found = extract_final_answer(completion, ANSWER_POLICIES[policy]).answer
    gold_text = gold_answer(gold)
    if simple_number(gold_text) is None:  # a gold written as prose ("The answer is 5") is read the same way
        gold_text = extract_final_answer(gold, ANSWER_POLICIES[policy]).answer or gold_text
    if found is None or not gold_text:
        return False
    if simple_number(gold_text) is not None and simple_number(found) is None:
        # a numeric gold against an answer with words around it (`x = 3`, a short bare "So it is 3"): its last number
        numbers = _NUMBER.findall(found)
        found = numbers[-1] if numbers else found
    fast = compare_fast(found, gold_text)
    if fast is not None and fast.score == 1.0:
        return True
    if simple_number(found) is not None and simple_number(gold_text) is not None:
        return False
    return re.sub(r"\s+", "", found) == re.sub(r"\s+", "", gold_text)


class MathVerifier:
    """Verifies math answers against gold answers; safe to call from any thread.

    Args:
        extractors: Final-answer extractors, in order (see `EXTRACTORS`).
        timeout_s: Wall-clock limit per verification; past it the worker is killed and the answer scores 0.
        max_answer_chars: Longer extracted answers score 0 without being parsed.
        workers: Number of worker processes (shared by all verifiers with the same settings).
        memory_limit_mb: Address-space limit of each worker process.
        fast_path: Compare plain numbers in-process (see module docstring).
    """

    def __init__(
        self,
        *,
        extractors: Sequence[str] = DEFAULT_EXTRACTORS,
        timeout_s: float = 2.0,
        max_answer_chars: int = MAX_ANSWER_CHARS,
        workers: int = 2,
        memory_limit_mb: int = 1024,
        fast_path: bool = True,
    ) -> None:
        unknown = [name for name in extractors if name not in EXTRACTORS]
        if unknown:
            raise ValueError(f"unknown extractor(s) {unknown}; valid extractors: {', '.join(EXTRACTORS)}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.extractors = tuple(extractors)
        self.timeout_s = timeout_s
        self.max_answer_chars = max_answer_chars
        self.workers = workers
        self.memory_limit_mb = memory_limit_mb
        self.fast_path = fast_path
        self._warned = threading.Event()

    @property
    def pool(self) -> WorkerPool:
        """The worker pool (shared process-wide between verifiers with equal worker settings)."""
        return shared_pool(_WORKER_MODULE, size=self.workers, memory_limit_mb=self.memory_limit_mb)

    def warm_up(self) -> None:
        """Start the worker processes and wait until one answers (they take ~1 s to import math-verify)."""
        self._verify_in_worker("1", "1")

    def __call__(self, completion: str, gold: str) -> VerificationResult:
        """Verify one completion against one gold answer.

        Args:
            completion: The model's text; its final answer is extracted with `self.extractors`.
            gold: The gold answer (a bare answer, or a worked solution with `\\boxed{}` / `#### N`).
        """
        gold_text = gold_answer(gold)
        if not gold_text:
            return error("gold answer unparseable: empty")
        found = extract_final_answer(completion, self.extractors)
        if found.answer is None:
            return wrong(found.reason)
        if len(found.answer) > self.max_answer_chars:
            return wrong(f"answer longer than {self.max_answer_chars} characters")
        if self.fast_path:
            fast = compare_fast(found.answer, gold_text)
            if fast is not None:
                return fast
        return self._verify_in_worker(found.answer, gold_text)

    def _verify_in_worker(self, answer: str, gold: str) -> VerificationResult:
        alarm_s = max(1, int(self.timeout_s / 2))
        try:
            reply = self.pool.request({"pred": answer, "gold": gold, "alarm_s": alarm_s}, self.timeout_s)
        except WorkerStartError as exc:
            if not self._warned.is_set():
                self._warned.set()
                logger.warning("math verifier workers could not start: %s", exc)
            return error(f"math worker could not start: {exc}")
        gold_done = "gold_parsed" in reply.progress
        if reply.timed_out:
            if not gold_done:
                return error(f"gold answer unparseable: parsing it took over {self.timeout_s:g} s")
            return wrong(f"verification timed out after {self.timeout_s:g} s")
        if reply.crashed or reply.result is None:
            why = reply.exception or "worker died (memory limit?)"
            return wrong(f"verification failed: {why}") if gold_done else error(f"gold answer failed: {why}")
        status, reason = reply.result["status"], reply.result["reason"]
        if status == "ok":
            return ok(reason)
        return wrong(reason) if status == "wrong" else error(reason)

    def verify_many(self, completions: Sequence[str], golds: Sequence[str]) -> list[VerificationResult]:
        """Verify pairs in parallel over the worker pool; results in input order."""
        if len(completions) != len(golds):
            raise ValueError(f"{len(completions)} completions but {len(golds)} gold answers")
        if len(completions) <= 1:
            return [self(completion, gold) for completion, gold in zip(completions, golds)]
        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as executor:
            return list(executor.map(self, completions, golds))


_SHARED: dict[tuple[object, ...], MathVerifier] = {}


def verify_math(
    completion: str,
    gold: str,
    *,
    extractors: Sequence[str] = DEFAULT_EXTRACTORS,
    timeout_s: float = 2.0,
    max_answer_chars: int = MAX_ANSWER_CHARS,
) -> VerificationResult:
    """Verify one completion against one gold answer with default worker settings (see `MathVerifier`)."""
    key = (tuple(extractors), timeout_s, max_answer_chars)
    verifier = _SHARED.get(key)
    if verifier is None:
        verifier = _SHARED.setdefault(
            key, MathVerifier(extractors=extractors, timeout_s=timeout_s, max_answer_chars=max_answer_chars)
        )
    return verifier(completion, gold)
