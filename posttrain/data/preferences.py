"""Preference pairs: reading and checking `prompt`/`chosen`/`rejected` rows, the built-in pairs, tokenising.

A row holds a prompt and two responses to it, the preferred one first. Either field may be plain text or
chat messages (the layout TRL calls "conversational")::

    {"prompt": "What is 2 + 3?", "chosen": "5", "rejected": "6"}
    {"prompt": [{"role": "user", "content": "What is 2 + 3?"}],
     "chosen": [{"role": "assistant", "content": "5"}], "rejected": [{"role": "assistant", "content": "6"}]}

A text prompt becomes one user message and a text response one assistant message. Without a `prompt`,
`chosen` and `rejected` may be whole conversations sharing their opening turns (TRL's implicit prompt,
UltraFeedback's layout): the shared turns become the prompt. A row may also carry a
numeric `margin` (the reward gap a reward model is asked for) and any other fields, which are kept.

A row with a missing field, an empty response, or identical chosen and rejected responses is an error
naming the file and row, or, with `on_bad_row: skip`, skipped and counted. Plain Python (no torch).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posttrain.config.common import DataSpec
from posttrain.data import world
from posttrain.data.sources import Messages, as_messages, check_rows, file_records, numbered_records
from posttrain.data.packing import ChatRenderer
from posttrain.errors import DataError

BUILTIN_PREFERENCES = "builtin:preferences"
FIELDS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class PreferencePair:
    """One checked pair: the conversation so far and two candidate continuations of it."""

    prompt: Messages
    chosen: Messages
    rejected: Messages
    where: str  # file and row, for messages about this pair
    margin: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # the row's other fields (e.g. `kind`, `answer`)


@dataclass
class PreferenceData:
    """Checked pairs of one data spec, plus how many malformed rows were skipped (and why)."""

    pairs: list[PreferencePair]
    origin: str
    skipped: int = 0
    problems: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- built-in pairs from the arithmetic world

# filler made of words the built-in tokenizer knows, so a rambling answer stays a few tokens long
_RAMBLE = (
    "The sun is warm.",
    "It rains in the morning.",
    "A box holds many eggs.",
    "The shop sells cups.",
    "Ann and Bob play cards.",
    "Bob walks to the shop.",
)


def _near_miss(answer: int, rng: random.Random) -> int:
    """A wrong answer one slip away: off by 1, 2 or 10, or with its last two digits swapped."""
    text = str(answer)
    if len(text) >= 2 and text[-1] != text[-2] and rng.random() < 0.3:
        return int(text[:-2] + text[-1] + text[-2])
    offsets = [d for d in (-10, -2, -1, 1, 2, 10) if answer + d >= 0]
    return answer + rng.choice(offsets)


def _clearly_wrong(answer: int, rng: random.Random) -> int:
    """A wrong answer of the right shape but far off: 30-60% of the answer away from it (at least 3)."""
    low, high = max(3, round(0.3 * answer)), max(6, round(0.6 * answer))
    offset = rng.randint(low, high)
    return answer + offset if offset > answer or rng.random() < 0.5 else answer - offset


def _rambling(answer: str, rng: random.Random) -> str:
    """The right answer buried after filler sentences."""
    return " ".join(rng.sample(_RAMBLE, rng.randint(1, 2))) + f" Now it is {answer}."


# the pair kind and wrong-answer maker of each `negatives` choice (`mixed` alternates the two)
NEGATIVES = {"clear": ("correct", _clearly_wrong), "near": ("near_miss", _near_miss)}


def builtin_preference_rows(
    split: str, count: int, seed: int, levels: tuple[int, ...] = world.LEVELS, negatives: str = "clear"
) -> list[dict[str, Any]]:
    """Preference rows over the built-in arithmetic problems of one split.

    Pairs alternate between correctness pairs (the right answer over a wrong one) and ``format`` pairs (the
    bare answer the SFT data teaches over a rambling one with the same number). The wrong answers follow
    ``negatives``: ``clear`` ones (kind ``correct``) are 30-60% off, ``near`` ones (kind ``near_miss``) are
    one slip away (off by 1, 2 or 10, or two digits swapped), ``mixed`` alternates the two. Rows come from the
    problems of ``split`` only, so test pairs never share a problem with training pairs.

    Why two kinds of wrong answer: a scalar reward head on the tiny SFT model learns ``clear`` pairs but
    hardly ``near`` ones, although the SFT model's own log-probabilities rank most ``near`` pairs right:
    telling a near miss needs the model's next-token prediction, which a head reading the last position
    does not see. The near misses are the mistakes the SFT model makes, so they are what DPO is measured on.

    >>> row = builtin_preference_rows("train", 2, seed=0)[1]
    >>> row["kind"], row["chosen"] == row["answer"], row["rejected"].endswith(row["answer"] + ".")
    ('format', True, True)
    """
    if negatives not in (*NEGATIVES, "mixed"):
        raise ValueError(f"negatives must be one of {sorted((*NEGATIVES, 'mixed'))}, got {negatives!r}")
    rng = random.Random(f"preferences/{split}/{seed}")
    rows = []
    for index, (problem, question) in enumerate(world.arithmetic_problems(split, count, seed, levels)):
        chosen = world.answer_text(problem)
        if index % 2 == 0:
            choice = negatives if negatives != "mixed" else ("clear", "near")[index // 2 % 2]
            kind, wrong = NEGATIVES[choice]
            rejected = str(wrong(problem.answer, rng))
        else:
            kind, rejected = "format", _rambling(chosen, rng)
        rows.append(
            {"prompt": question, "chosen": chosen, "rejected": rejected, "kind": kind,
             "answer": str(problem.answer), "level": problem.level}
        )
    return rows


# ---------------------------------------------------------------- checking rows


def split_implicit_prompt(chosen: Messages, rejected: Messages, where: str) -> tuple[Messages, Messages, Messages]:
    """``(prompt, chosen, rejected)`` of two whole conversations that share their beginning (TRL's
    "implicit prompt" preference rows, UltraFeedback's layout): the prompt is the longest shared run of
    messages that does not end with an assistant turn.

    >>> user = {"role": "user", "content": "2 + 3?"}
    >>> split_implicit_prompt([user, {"role": "assistant", "content": "5"}], [user, {"role": "assistant", "content": "6"}], "x")[0]
    [{'role': 'user', 'content': '2 + 3?'}]
    """
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    while shared > 0 and chosen[shared - 1]["role"] == "assistant":
        shared -= 1
    if shared == 0:
        raise DataError(
            f"{where}: no `prompt`, and `chosen` and `rejected` share no opening user turn to take it from; "
            "give a `prompt` field"
        )
    return chosen[:shared], chosen[shared:], rejected[shared:]


def check_pair(row: Any, where: str) -> PreferencePair:
    """Checks one raw row and returns it as a `PreferencePair`; raises `DataError` naming ``where``.

    >>> check_pair({"prompt": "1 + 1?", "chosen": "2", "rejected": "2"}, "pairs.jsonl:3")
    Traceback (most recent call last):
    ...
    posttrain.errors.DataError: pairs.jsonl:3: `chosen` and `rejected` are identical; a pair must differ
    """
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    implicit = row.get("prompt") is None and isinstance(row.get("chosen"), list) and isinstance(row.get("rejected"), list)
    missing = [name for name in FIELDS if row.get(name) is None and not (implicit and name == "prompt")]
    if missing:
        raise DataError(
            f"{where}: missing field(s) {', '.join(f'`{m}`' for m in missing)}; a preference row needs "
            f"`prompt`, `chosen` and `rejected` (found keys {sorted(row)})"
        )
    if implicit:
        prompt, *sides = split_implicit_prompt(
            as_messages(row["chosen"], "chosen", "assistant", where),
            as_messages(row["rejected"], "rejected", "assistant", where), where,
        )
    else:
        prompt = as_messages(row["prompt"], "prompt", "user", where)
        sides = [as_messages(row[name], name, "assistant", where) for name in ("chosen", "rejected")]
    if not any(m["content"].strip() for m in prompt):
        raise DataError(f"{where}: `prompt` is empty")
    responses = {}
    for name, side in zip(("chosen", "rejected"), sides):
        responses[name] = side
        if not any(m["content"].strip() for m in responses[name]):
            raise DataError(f"{where}: `{name}` is an empty response")
    if responses["chosen"] == responses["rejected"]:
        raise DataError(f"{where}: `chosen` and `rejected` are identical; a pair must differ")
    margin = row.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin)):
        raise DataError(f"{where}: `margin` must be a finite number, got {margin!r}")
    extra = {k: v for k, v in row.items() if k not in FIELDS and k != "margin"}
    return PreferencePair(prompt, responses["chosen"], responses["rejected"], where,
                          None if margin is None else float(margin), extra)


def load_preferences(spec: DataSpec, recipe_dir: Path, seed: int) -> PreferenceData:
    """Loads and checks every pair of a data spec (built-in, JSONL/JSON/Parquet file, or `hf:` dataset)."""
    if spec.source == BUILTIN_PREFERENCES:
        levels = tuple(spec.levels) if spec.levels else world.LEVELS
        try:
            rows = builtin_preference_rows(spec.split, spec.count or 2000, seed, levels, spec.negatives or "clear")
        except ValueError as err:
            raise DataError(f"{spec.source}: {err}") from None
        records, origin = numbered_records(f"{spec.source} ({spec.split})", rows), spec.source
    elif spec.source.startswith("builtin:"):
        raise DataError(
            f"{spec.source} holds no preference pairs; use {BUILTIN_PREFERENCES} or a file with "
            "`prompt`, `chosen` and `rejected` fields"
        )
    else:
        records, origin = file_records(spec, recipe_dir)
    checked = check_rows(records, check_pair, spec, origin, "preference pairs")
    return PreferenceData(pairs=checked.rows, origin=origin, skipped=checked.skipped, problems=checked.problems)


# ---------------------------------------------------------------- tokenising


def encode_pairs(tokenizer: Any, pairs: list[PreferencePair], seq_len: int) -> list[dict[str, list[int]]]:
    """Tokenises pairs into equal-length rows for `posttrain.training.loop.train_loop`.

    Each side is the chat-template rendering of prompt + response (as `rewards.reward_model` renders it),
    truncated to ``seq_len`` tokens and right-padded with the pad token to the longest row. The response
    mask marks the response's tokens (with its end-of-turn token): the tokens whose log-probability DPO
    sums. A reward model reads its score at the last non-pad token.

    Returns:
        rows with ``chosen_input_ids``, ``chosen_response_mask``, ``rejected_input_ids`` and
        ``rejected_response_mask`` (0/1), all of one length.

    Raises:
        DataError: if a template renders the prompt inconsistently, or truncation leaves no response token.
    """
    render = ChatRenderer(tokenizer)
    texts, starts = [], []
    for pair in pairs:
        prompt_text = render(pair.prompt, add_generation_prompt=True)
        for response in (pair.chosen, pair.rejected):
            full = render(pair.prompt + response)
            if not full.startswith(prompt_text):
                raise DataError(
                    f"{pair.where}: the chat template does not render the prompt as a prefix of prompt + "
                    "response, so the response tokens cannot be located"
                )
            texts.append(full)
            starts.append(len(prompt_text))
    batch = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    sides: list[tuple[list[int], list[int]]] = []
    for index, (ids, offsets, start) in enumerate(zip(batch["input_ids"], batch["offset_mapping"], starts)):
        ids, mask = list(ids)[:seq_len], [int(begin >= start) for begin, _ in offsets][:seq_len]
        if not any(mask):
            raise DataError(
                f"{pairs[index // 2].where}: the prompt fills all {seq_len} tokens of `train.seq_len`, "
                "leaving none of the response; raise seq_len or shorten the prompt"
            )
        sides.append((ids, mask))
    length = max(len(ids) for ids, _ in sides)
    pad = tokenizer.pad_token_id
    rows = []
    for chosen, rejected in zip(sides[0::2], sides[1::2]):
        row: dict[str, list[int]] = {}
        for name, (ids, mask) in (("chosen", chosen), ("rejected", rejected)):
            missing = length - len(ids)
            row[f"{name}_input_ids"] = ids + [pad] * missing
            row[f"{name}_response_mask"] = mask + [0] * missing
        rows.append(row)
    return rows
