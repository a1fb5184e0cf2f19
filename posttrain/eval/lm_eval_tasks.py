"""posttrain's own lm-evaluation-harness task: the built-in arithmetic test split as an lm-eval YAML task.

`posttrain_arithmetic` is written (YAML + JSONL, no hub) to a cache folder the first time it is asked for, and
the `lm_eval` evaluator adds that folder to lm-eval's task paths. It asks what the `exact_match` evaluator
asks, the same way, so the two accuracies agree on the same rows:

- rows: `builtin:arithmetic`, split `test`, seed 0, all levels, the first `ARITHMETIC_TASK_ROWS` (lm-eval's
  `limit: N` takes the first N, as `count: N` does);
- prompt: the user turn alone (`doc_to_text`), zero-shot, so with the chat template applied it renders as
  `render_prompt` does; without a template it is the bare question (the one intended difference);
- generation: greedy, 16 new tokens, stopping only at the end-of-sequence token (`until: []`; lm-eval adds
  the tokenizer's end token), as `greedy_generate` does;
- answer: the last number of the completion (`regex` filter, `group_select: -1`, the pattern of
  `posttrain.data.world.last_number`), thousands separators ignored (`regexes_to_ignore: [","]`), compared
  exactly with the row's answer (`exact_match`). No match gives lm-eval's `[invalid]`, never equal to a number.

The YAML is written rather than shipped because lm-eval resolves `data_files` against the working directory,
not the YAML's folder: the written YAML names its JSONL by absolute path.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

from posttrain.data.world import arithmetic_rows

# `posttrain.data.world.last_number`'s pattern (tests/eval/test_lm_eval.py checks they stay the same)
NUMBER_PATTERN = r"-?\d[\d,]*(?:\.\d+)?"
ARITHMETIC_TASK = "posttrain_arithmetic"
ARITHMETIC_TASK_ROWS = 500
ARITHMETIC_MAX_NEW_TOKENS = 16


def arithmetic_task_rows() -> list[dict[str, Any]]:
    """The task's documents: `builtin:arithmetic` test rows (seed 0) as ``{question, answer, level}``."""
    rows = arithmetic_rows("test", ARITHMETIC_TASK_ROWS, 0)
    return [{"question": r["messages"][0]["content"], "answer": r["answer"], "level": r["level"]} for r in rows]


def arithmetic_task_config(data_file: Path) -> dict[str, Any]:
    """The lm-eval task config (what the YAML holds) over the JSONL file ``data_file``."""
    return {
        "task": ARITHMETIC_TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "{{question}}",
        "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": [], "do_sample": False, "max_gen_toks": ARITHMETIC_MAX_NEW_TOKENS},
        "filter_list": [
            {
                "name": "last_number",
                "filter": [
                    {"function": "regex", "regex_pattern": NUMBER_PATTERN, "group_select": -1},
                    {"function": "take_first"},  # one response per document (no repeats)
                ],
            }
        ],
        "metric_list": [
            {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True, "regexes_to_ignore": [","]}
        ],
        "metadata": {"version": 1.0},
    }


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "posttrain" / "lm_eval_tasks"


def builtin_task_folder(root: Path | None = None) -> Path:
    """A folder holding `posttrain_arithmetic.yaml` and its JSONL, written once per content (atomically, so
    concurrent processes never read half a file); the folder name is the hash of both."""
    body = "".join(json.dumps(row, sort_keys=True) + "\n" for row in arithmetic_task_rows())
    template = json.dumps(arithmetic_task_config(Path("DATA")), sort_keys=True)
    digest = hashlib.sha256((template + body).encode()).hexdigest()[:16]
    folder = (root or _cache_root()) / digest
    data_file = folder / "arithmetic_test.jsonl"
    task_file = folder / f"{ARITHMETIC_TASK}.yaml"
    if not task_file.exists():
        folder.mkdir(parents=True, exist_ok=True)
        for path, text in ((data_file, body), (task_file, yaml.safe_dump(arithmetic_task_config(data_file), sort_keys=False))):
            partial = path.with_name(f".{path.name}.{os.getpid()}")
            partial.write_text(text)
            os.replace(partial, path)
    return folder
