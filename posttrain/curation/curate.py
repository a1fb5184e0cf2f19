"""One curation job: read the sources, apply the rules, mix, order, write the outputs, count everything.

Outputs (in ``out_dir``, read by later stages as ``stage:NAME/OUTPUT``): ``rows.jsonl`` (the curated rows,
as they were read), ``removed.jsonl`` (each removed row: rule, reason, where it came from, its text) and,
with a curriculum in phases, ``phase_1.jsonl`` .. ``phase_N.jsonl``. No torch here.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from posttrain.config.common import DataSpec
from posttrain.config.curate import CurateConfig
from posttrain.config.stages import StageConfig
from posttrain.curation.decontamination import ContaminationIndex
from posttrain.curation.dedup import ExactDuplicates, NearDuplicates
from posttrain.curation.mixture import Share, curriculum_order, phase_bounds, take, target_counts
from posttrain.curation.rules import Rules, Tally
from posttrain.curation.stream import Spool, source_records, write_selection
from posttrain.curation.text import row_text


def prompt_text(row: Any) -> str:
    """What an evaluation row asks: its user/system messages (not the reference answer), or its text fields.

    >>> prompt_text({"messages": [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}]})
    'What is 2 + 3?'
    """
    if isinstance(row, dict) and isinstance(row.get("messages"), list):
        return "\n".join(m.get("content", "") for m in row["messages"] if isinstance(m, dict) and m.get("role") != "assistant")
    if isinstance(row, dict):
        return row_text({k: v for k, v in row.items() if k not in ("completion", "response", "chosen", "rejected")})
    return row_text(row)


def contamination_index(config: StageConfig, recipe_dir: Path, seed: int) -> ContaminationIndex | None:
    """The n-gram index of every evaluation set a stage (curate or training) checks against (None when
    decontamination is off); its common n-grams are found by `count_common` over the rows to check."""
    spec = config.decontaminate
    if not spec.enabled:
        return None
    index = ContaminationIndex(ngram=spec.ngram, threshold=spec.threshold, min_words=spec.min_words,
                               common_rows=spec.common_rows)
    for evaluation in spec.sets:
        for _, row in source_records(evaluation.data, recipe_dir, seed):
            index.add(evaluation.name, prompt_text(row))
    return index


def count_common(index: ContaminationIndex | None, specs: list[DataSpec], recipe_dir: Path, seed: int) -> None:
    """The first pass of decontamination: which evaluation n-grams are common text in the rows of ``specs``
    (`ContaminationIndex.count`); nothing to do without an index, evaluation rows or a `common_rows` limit."""
    if index is None or not index.rows or index.common_rows is None:
        return
    for spec in specs:
        for _, row in source_records(spec, recipe_dir, seed):
            index.count(row_text(row))
    index.settle()


def contamination_summary(index: ContaminationIndex | None) -> dict[str, Any]:
    """What the manifest records of the evaluation sets: rows indexed and too short, per set, and the n-grams
    ignored as common text (how many, a few of them)."""
    return {
        "evaluation_sets": index.set_sizes() if index else {},
        "evaluation_rows_too_short": dict(index.skipped) if index else {},
        "common_ngrams": len(index.common) if index else 0,
        "common_ngram_examples": index.common_examples() if index else [],
    }


def build_rules(config: CurateConfig, recipe_dir: Path, seed: int) -> Rules:
    """The stage's rules, with the user's filter loaded (a missing file or function is an error now)."""
    user_filter = None
    if config.quality.filter:
        user_filter = (config.quality.filter, load_user_function(config.quality.filter, recipe_dir))
    dedup = config.dedup
    near = (NearDuplicates(dedup.near_threshold, dedup.num_perm, dedup.shingle, dedup.shingle_size, dedup.near_min_words,
                           dedup.near_same_numbers) if dedup.near else None)
    return Rules(
        contamination=contamination_index(config, recipe_dir, seed), quality=config.quality,
        exact=ExactDuplicates() if dedup.exact else None, near=near, user_filter=user_filter,
        tally=Tally(examples_per_rule=config.examples),
    )


def load_user_function(value: str, recipe_dir: Path):
    """``path/to/file.py:function``, the path relative to the recipe's folder unless absolute."""
    from posttrain.rewards.python_function import load_function

    return load_function(value, what=f"curation function {value!r}", relative_to=recipe_dir)


def difficulty_of(config: CurateConfig, recipe_dir: Path):
    """The function giving a row's difficulty under the curriculum, or None without one."""
    curriculum = config.curriculum
    if curriculum is None:
        return None
    if curriculum.function:
        function = load_user_function(curriculum.function, recipe_dir)
    else:
        def function(row: Any) -> Any:
            return row.get(curriculum.key) if isinstance(row, dict) else None
    name = curriculum.function or f"key {curriculum.key!r}"

    def difficulty(row: Any, where: str) -> float:
        value = function(row)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise ValueError(f"curriculum {name}: {where} has difficulty {value!r}; a number is needed")
        return float(value)

    return difficulty


def curate(config: CurateConfig, recipe_dir: Path, seed: int, out_dir: Path) -> dict[str, Any]:
    """Runs the whole job; returns the summary the manifest records (see `Tally.summary`)."""
    started = time.time()
    out_dir.mkdir(parents=True, exist_ok=True)
    rules = build_rules(config, recipe_dir, seed)
    count_common(rules.contamination, [source.data for source in config.sources], recipe_dir, seed)
    difficulty = difficulty_of(config, recipe_dir)
    spools, difficulties, per_source = [], [], []
    with (out_dir / "removed.jsonl").open("w") as removed:
        for number, source in enumerate(config.sources):
            spool, scores, before = Spool(out_dir / "work" / f"source_{number}.jsonl"), [], rules.tally.seen
            for where, row in source_records(source.data, recipe_dir, seed):
                removal = rules.check(row, where)
                if removal is not None:
                    removed.write(json.dumps({"source": source.label(), **removal.record()}, ensure_ascii=False) + "\n")
                    continue
                spool.append(row)
                if difficulty is not None:
                    scores.append(difficulty(row, where))
            spool.close()
            spools.append(spool)
            difficulties.append(np.asarray(scores, dtype=np.float64))
            per_source.append({"source": source.label(), "read": rules.tally.seen - before, "kept": len(spool)})
    summary = rules.tally.summary()
    summary.update(_mix_and_write(config, spools, difficulties, per_source, out_dir, seed))
    summary["sources"] = per_source
    summary.update(contamination_summary(rules.contamination))
    summary["seconds"] = time.time() - started
    summary["rows_per_second"] = summary["rows_read"] / max(summary["seconds"], 1e-9)
    shutil.rmtree(out_dir / "work", ignore_errors=True)  # the spools (and any a crashed run left)
    return summary


def _mix_and_write(config: CurateConfig, spools: list[Spool], difficulties: list[np.ndarray],
                   per_source: list[dict[str, Any]], out_dir: Path, seed: int) -> dict[str, Any]:
    """Chooses the mixture's rows, orders them (curriculum or shuffle) and writes `rows` and the phases."""
    rng = np.random.default_rng(seed)
    shares = [Share(s.label(), len(spool), s.weight, s.count, info["read"])
              for s, spool, info in zip(config.sources, spools, per_source)]
    counts = target_counts(shares, config.mixture.total, config.mixture.replacement)
    chosen = [take(len(spool), count, rng) for spool, count in zip(spools, counts)]
    for info, numbers in zip(per_source, chosen):
        info["in_mixture"] = len(numbers)
    sources = np.concatenate([np.full(len(n), i, dtype=np.int64) for i, n in enumerate(chosen)])
    numbers = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
    curriculum = config.curriculum
    if curriculum is not None:
        scores = np.concatenate([d[n] for d, n in zip(difficulties, chosen)])
        order = curriculum_order(scores, curriculum.order == "hard_to_easy", rng)
    else:
        order = rng.permutation(len(sources)) if config.mixture.shuffle else np.arange(len(sources))
    sources, numbers = sources[order], numbers[order]
    written = write_selection(spools, sources, numbers, out_dir / "rows.jsonl")
    if written == 0:
        raise ValueError(f"curation kept no rows ({sum(p['read'] for p in per_source)} read); see {out_dir / 'removed.jsonl'}")
    result: dict[str, Any] = {"rows_written": written}
    if curriculum is not None and curriculum.phases > 1:
        bounds = phase_bounds(written, curriculum.phases)
        for i, (start, end) in enumerate(bounds, start=1):
            write_selection(spools, sources[start:end], numbers[start:end], out_dir / f"phase_{i}.jsonl")
        result["phases"] = [end - start for start, end in bounds]
    return result
