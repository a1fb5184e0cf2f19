"""`posttrain validate` reads the local JSONL data files a recipe names, with the loader its stage uses.

So a malformed line, a row without the fields its stage needs (`text`; `messages` or `prompt`/`completion`;
`prompt`/`chosen`/`rejected`; a prompt for RL) or a file with no usable row is reported, naming the stage,
the file and the line, before a run starts instead of when its stage is reached.

Cheap on purpose: JSONL only (read line by line, no `datasets` import; JSON arrays and Parquet would need it,
which costs seconds, so for those the recipe check stops at "the file exists"), built-in and `hf:` sources
not read, and a stage's `count:` honoured (the loaders stop there). The fields a reward source reads from
RL rows are checked for the built-in verifiers (`math`: `answer_field`, default `answer`; `code`: `tests_field`,
default `tests`); other sources' fields are checked when the stage starts. Torch-free. It sits beside recipe.py, not in
`data/`, because it reads the recipe (data/ imports nothing above it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from posttrain.errors import DataError
from posttrain.data.sources import resolve_data_path
from posttrain.recipe import LoadedRecipe, data_specs


def _loader(kind: str) -> Callable[..., Any] | None:
    """The function that stage kind `kind` reads its `data:` with (None: not checked here)."""
    if kind in ("pretrain", "sft"):
        from posttrain.data.loading import load_dataset

        return load_dataset
    if kind in ("dpo", "reward_model"):
        from posttrain.data.preferences import load_preferences

        return load_preferences
    if kind in ("grpo", "ppo"):
        from posttrain.rl.prompts import load_prompts

        return load_prompts
    return None


def check_data_files(loaded: LoadedRecipe) -> list[str]:
    """One line per local JSONL data file that its stage could not use (empty when all are fine)."""
    problems: list[str] = []
    for index, stage in enumerate(loaded.recipe.stages):
        loader = _loader(stage.kind)
        for where, spec in data_specs(stage):
            if loader is None or where not in ("data", "replay.data"):
                continue
            path = resolve_data_path(spec.source, loaded.directory)
            if path is None or path.suffix != ".jsonl" or not path.is_file():
                continue
            try:
                data = loader(spec, loaded.directory, loaded.recipe.seed)
            except DataError as err:
                problems.append(f"stages[{index}] ({stage.name}).{where}: {err}")
                continue
            problems += [f"stages[{index}] ({stage.name}).{where}: {p}" for p in _reward_fields(stage, data)]
    return problems + _evaluation_problems(loaded)


def _evaluation_problems(loaded: LoadedRecipe) -> list[str]:
    """Local JSONL files of `exact_match` / `perplexity` evaluations read as the evaluator reads them; an
    `exact_match` row without the `answer` it is scored against is named."""
    from posttrain.data.loading import load_dataset

    problems = []
    for index, evaluation in enumerate(loaded.recipe.evaluations):
        spec = evaluation.data
        if spec is None or evaluation.kind not in ("exact_match", "perplexity"):
            continue
        path = resolve_data_path(spec.source, loaded.directory)
        if path is None or path.suffix != ".jsonl" or not path.is_file():
            continue
        where = f"evaluations[{index}] ({evaluation.name}).data"
        try:
            data = load_dataset(spec, loaded.directory, loaded.recipe.seed, purpose="evaluate")
        except DataError as err:
            problems.append(f"{where}: {err}")
            continue
        missing = [i for i, row in enumerate(data.rows) if evaluation.kind == "exact_match" and "answer" not in row]
        if missing:
            problems.append(
                f"{where}: {data.origin}: {len(missing)} of {len(data.rows)} rows have no `answer` field, which "
                f"exact_match scores against (first: row {missing[0] + 1})"
            )
    return problems


# the example field each built-in verifier reads, and the argument that renames it
_VERIFIER_FIELDS = {"math": ("answer_field", "answer"), "code": ("tests_field", "tests")}


def _reward_fields(stage: Any, data: Any) -> list[str]:
    """RL prompt rows without the field a `math` or `code` reward entry of the stage reads (first one named)."""
    problems = []
    for entry in getattr(stage, "reward", None) or []:
        if entry.source not in _VERIFIER_FIELDS:
            continue
        argument, default = _VERIFIER_FIELDS[entry.source]
        field = entry.args.get(argument, default)
        missing = [i for i, row in enumerate(data.rows) if field not in row.example]
        if missing:
            problems.append(
                f"{data.origin}: {len(missing)} of {len(data.rows)} rows have no `{field}` field, which the "
                f"`{entry.source}` reward reads (first: row {missing[0] + 1})"
            )
    return problems
