"""Recipes: load a YAML file, apply `--set` overrides, validate, and report errors with file and line.

A recipe is checked completely before any training starts: unknown keys, wrong types, a `from:` naming
no earlier stage, duplicate stage names and missing data files are all reported together, each naming the
key path and, where the YAML gives it, the line. No torch import here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator

import posttrain.config  # noqa: F401  (registers every stage kind)
from posttrain.config.common import DataSpec, ModelSpec, Strict
from posttrain.config.curate import bind_evaluation_sets
from posttrain.config.evaluation import EvalConfig, GateConfig
from posttrain.config.reporting import LoggingConfig
from posttrain.config.stages import StageConfig, stage_config_class
from posttrain.data.sources import resolve_data_path
from posttrain.errors import RecipeError
from posttrain.run_paths import check_output_dir, check_plain_name


class Recipe(Strict):
    """A whole pipeline: a model, stages that chain checkpoints, and evaluations between them."""

    name: str = Field(description="Run name; the run directory defaults to `runs/NAME`.")
    model: ModelSpec = Field(ModelSpec(), description="The starting model.")
    output_dir: str | None = Field(None, description="Run directory (default `runs/NAME`, relative to the working directory).")
    seed: int = Field(0, description="Seed for data order, dropout and sampling.")
    stages: list[StageConfig] = Field(description="Stages in order.")
    evaluations: list[EvalConfig] = Field(default_factory=list, description="Evaluators run after every stage.")
    gates: list[GateConfig] = Field(default_factory=list, description="Conditions that stop the pipeline.")
    evaluate_base: bool = Field(True, description="Also evaluate the starting model, as the table's first row.")
    threads: int | None = Field(
        None, gt=0,
        description="torch intra-op threads per process; default: OMP_NUM_THREADS if set, else one per process "
        "under a multi-process launch or on a busy machine, else torch's default (posttrain.training.threads).",
    )
    logging: LoggingConfig = Field(
        default_factory=LoggingConfig, description="Trackers, progress display, samples and the run report."
    )

    # Paths stay inside the run folder (posttrain/run_paths.py).
    _plain_name = field_validator("name")(classmethod(lambda cls, name: check_plain_name(name, "run name")))
    _safe_output_dir = field_validator("output_dir")(classmethod(lambda cls, folder: check_output_dir(folder)))

    def stage(self, name: str) -> StageConfig:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    def parent_of(self, index: int) -> str | None:
        """Name of the stage that stage ``index`` starts from; None for the recipe's model."""
        stage = self.stages[index]
        if stage.from_ == "base" or not stage.makes_checkpoint:
            return None
        if stage.from_ is not None:
            return stage.from_
        # a stage that writes data only (`curate`) has no checkpoint: start from the model stage before it
        return next((s.name for s in reversed(self.stages[:index]) if s.makes_checkpoint), None)

    def evaluated_ancestor(self, index: int) -> str | None:
        """The nearest stage up stage ``index``'s lineage that is evaluated (``base`` for the recipe's model
        when `evaluate_base`), or None: where a `max_drop` gate without `relative_to` measures from."""
        names = {stage.name: i for i, stage in enumerate(self.stages)}
        parent = self.parent_of(index)
        while parent is not None:
            if self.stages[names[parent]].evaluate:
                return parent
            parent = self.parent_of(names[parent])
        return "base" if self.evaluate_base else None


@dataclass(frozen=True)
class LoadedRecipe:
    """A validated recipe and where it came from (relative data paths resolve against `directory`)."""

    recipe: Recipe
    path: Path
    raw: dict[str, Any]

    @property
    def directory(self) -> Path:
        return self.path.parent

    def run_dir(self) -> Path:
        return Path(self.recipe.output_dir or Path("runs") / self.recipe.name)


class RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats: `1e-4` is a number, not the string '1e-4'."""


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _line_index(text: str) -> dict[tuple, int]:
    """Maps key paths (tuples of keys / list indices) to 1-based line numbers in the YAML text."""
    lines: dict[tuple, int] = {}

    def walk(node: yaml.Node, path: tuple) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key_path = path + (key_node.value,)
                lines[key_path] = key_node.start_mark.line + 1
                walk(value_node, key_path)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, path + (i,))

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return lines


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Applies ``key.sub=value`` overrides; list items (stages, evaluations) are addressed by name or index.

    >>> apply_overrides({"stages": [{"name": "sft", "train": {"lr": 1}}]}, ["stages.sft.train.lr=1e-4"])
    {'stages': [{'name': 'sft', 'train': {'lr': 0.0001}}]}
    """
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override {item!r} is not of the form key.sub=value")
        dotted, value_text = item.split("=", 1)
        keys = dotted.split(".")
        node: Any = raw
        for depth, key in enumerate(keys):
            last = depth == len(keys) - 1
            where = ".".join(keys[: depth + 1])
            if isinstance(node, list):
                matches = [i for i, x in enumerate(node) if isinstance(x, dict) and x.get("name") == key]
                if matches:
                    index = matches[0]
                elif key.isdigit() and int(key) < len(node):
                    index = int(key)
                else:
                    names = [x.get("name") for x in node if isinstance(x, dict)]
                    raise RecipeError(f"override {dotted!r}: no item named {key!r} at {where}; names: {names}")
                if last:
                    node[index] = yaml.load(value_text, Loader=RecipeLoader)
                node = node[index]
            elif isinstance(node, dict):
                if last:
                    node[key] = yaml.load(value_text, Loader=RecipeLoader)
                else:
                    node = node.setdefault(key, {})
            else:
                raise RecipeError(f"override {dotted!r}: {'.'.join(keys[:depth])} is not a section")
    return raw


def _format_loc(loc: tuple, lines: dict[tuple, int], raw: dict[str, Any]) -> str:
    """Turns a pydantic error location into `stages[1] (sft).train.lr (line 12)`."""
    parts: list[str] = []
    path: list[Any] = []
    node: Any = raw
    for key in loc:
        if isinstance(key, int):
            label = f"[{key}]"
            if isinstance(node, list) and key < len(node) and isinstance(node[key], dict) and "name" in node[key]:
                label += f" ({node[key]['name']})"
            parts.append(label)
        else:
            parts.append(("." if parts else "") + str(key))
        path.append(key)
        node = node[key] if isinstance(node, (dict, list)) and _has(node, key) else None
    line = None
    for cut in range(len(path), -1, -1):
        if tuple(path[:cut]) in lines:
            line = lines[tuple(path[:cut])]
            break
    return "".join(parts) + (f" (line {line})" if line else "")


def _has(node: Any, key: Any) -> bool:
    if isinstance(node, dict):
        return key in node
    return isinstance(key, int) and key < len(node)


def _validate_structure(raw: dict[str, Any], lines: dict[tuple, int]) -> tuple[Recipe | None, list[str]]:
    problems: list[str] = []
    stages: list[StageConfig] = []
    raw_stages = raw.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        problems.append(f"stages{_line_suffix(lines, ('stages',))}: a recipe needs a non-empty list of stages")
        raw_stages = []
    for i, raw_stage in enumerate(raw_stages):
        if not isinstance(raw_stage, dict):
            problems.append(f"stages[{i}]{_line_suffix(lines, ('stages', i))}: a stage must be a mapping")
            continue
        try:
            cls = stage_config_class(str(raw_stage.get("kind")))
        except ValueError as err:
            loc = _format_loc(("stages", i, "kind"), lines, raw)
            problems.append(f"{loc}: {err}")
            stages.append(StageConfig.model_construct(**_identity(raw_stage, i)))
            continue
        try:
            stages.append(cls.model_validate(raw_stage))
        except ValidationError as err:
            for e in err.errors():
                problems.append(f"{_format_loc(('stages', i) + tuple(e['loc']), lines, raw)}: {_message(e)}")
            # keep the stage's place (name, from) so later cross-reference checks see the right stages
            stages.append(StageConfig.model_construct(**_identity(raw_stage, i)))
    rest = {k: v for k, v in raw.items() if k != "stages"}
    try:
        recipe = Recipe.model_validate({**rest, "stages": stages})
    except ValidationError as err:
        for e in err.errors():
            if e["loc"][:1] != ("stages",):
                problems.append(f"{_format_loc(tuple(e['loc']), lines, raw)}: {_message(e)}")
        recipe = None
    return recipe, problems


def _identity(raw_stage: dict[str, Any], index: int) -> dict[str, Any]:
    """Name, kind and `from` of a stage that failed validation, for a placeholder in its place."""
    name, kind, parent = raw_stage.get("name"), raw_stage.get("kind"), raw_stage.get("from")
    return {
        "name": name if isinstance(name, str) else f"<stage {index}>",
        "kind": str(kind),
        "from_": parent if isinstance(parent, str) else None,
    }


# TRL / transformers TrainingArguments names a TRL user writes first, and where the setting lives here
TRL_NAMES = {
    "learning_rate": "`lr`",
    "max_length": "`seq_len` (train), or `max_new_tokens` / `max_prompt_tokens` (generation)",
    "max_seq_length": "`seq_len`",
    "bf16": "`precision: bf16`",
    "fp16": "`precision` (fp16 is not offered: see TrainSpec.precision)",
    "per_device_train_batch_size": "`batch_size` (SFT/DPO/RM) or `micro_batch_size` (RL)",
    "gradient_accumulation_steps": "`grad_accum`",
    "num_train_epochs": "`epochs`",
    "max_steps": "`steps`",
    "lr_scheduler_type": "`schedule`",
    "logging_steps": "`log_every`",
    "save_steps": "`save_every`",
    "save_total_limit": "`keep_last`",
    "gradient_checkpointing_kwargs": "`gradient_checkpointing`",
    "num_generations": "`group_size`",
    "max_completion_length": "`generation.max_new_tokens`",
    "max_prompt_length": "`generation.max_prompt_tokens`",
    "dataset_text_field": "`data.format: text`",
    "packing": "`train.packing`",
    "lora_r": "`lora.r`",
    "lora_alpha": "`lora.alpha`",
    "lora_dropout": "`lora.dropout`",
    "lora_target_modules": "`lora.target_modules`",
    "loss_type": "`policy_loss` (RL) or the DPO stage's `beta`/`label_smoothing`",
    "seed": "the recipe's top-level `seed`",
}


def _message(error: dict[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        key = error["loc"][-1] if error["loc"] else None
        if isinstance(key, str) and key in TRL_NAMES:
            return f"unknown key (a TRL name); did you mean {TRL_NAMES[key]}?"
        return "unknown key"
    if error["type"] == "missing":
        return "required key missing"
    return error["msg"]


def _line_suffix(lines: dict[tuple, int], path: tuple) -> str:
    return f" (line {lines[path]})" if path in lines else ""


def _check_semantics(recipe: Recipe, recipe_dir: Path, lines: dict[tuple, int]) -> list[str]:
    problems: list[str] = []
    seen: set[str] = set()
    for i, stage in enumerate(recipe.stages):
        where = f"stages[{i}] ({stage.name})"
        if stage.name in seen or stage.name == "base":
            problems.append(f"{where}{_line_suffix(lines, ('stages', i, 'name'))}: stage name {stage.name!r} is used twice or reserved")
        if stage.from_ is not None and stage.from_ != "base" and stage.from_ not in seen:
            problems.append(
                f"{where}.from{_line_suffix(lines, ('stages', i, 'from'))}: {stage.from_!r} names no earlier stage "
                f"(earlier stages: {sorted(seen) or 'none'}; `base` is the recipe's model)"
            )
        seen.add(stage.name)
    problems += _check_stage_inputs(recipe, recipe_dir, lines)
    problems += _check_environments(recipe, recipe_dir, lines)
    for path, spec in data_specs(recipe):
        file = resolve_data_path(spec.source, recipe_dir)
        if file is not None and not file.exists():
            problems.append(f"{path}.source{_line_suffix(lines, _tuple_path(path, recipe))}: data file not found: {file}")
        if spec.source.startswith("builtin:") and spec.source not in BUILTIN_SOURCES:
            problems.append(f"{path}.source: unknown built-in dataset {spec.source!r}; built-in: {sorted(BUILTIN_SOURCES)}")
        if spec.negatives is not None and spec.source != "builtin:preferences":
            problems.append(f"{path}.negatives: only `builtin:preferences` takes `negatives` (source: {spec.source!r})")
        if spec.carry_slip is not None and spec.source != "builtin:arithmetic":
            problems.append(f"{path}.carry_slip: only `builtin:arithmetic` takes `carry_slip` (source: {spec.source!r})")
        if spec.tool_share is not None and spec.source != "builtin:calculator":
            problems.append(f"{path}.tool_share: only `builtin:calculator` takes `tool_share` (source: {spec.source!r})")
    problems += _demonstration_options_unused(recipe)
    eval_names = [e.name for e in recipe.evaluations]
    if len(set(eval_names)) != len(eval_names):
        problems.append(f"evaluations: names must be unique, got {eval_names}")
    unevaluated = {stage.name for stage in recipe.stages if not stage.evaluate}
    if not recipe.evaluate_base:
        unevaluated.add("base")
    for i, gate in enumerate(recipe.gates):
        prefix = gate.metric.split(".")[0]
        if prefix not in eval_names:
            problems.append(f"gates[{i}].metric: {gate.metric!r} names no evaluation (evaluations: {eval_names})")
        for name in gate.stages or []:
            if name not in seen:
                problems.append(f"gates[{i}].stages: {name!r} names no stage")
        if gate.relative_to is not None and gate.relative_to not in seen | {"base"}:
            problems.append(f"gates[{i}].relative_to: {gate.relative_to!r} names no stage (nor base)")
        if gate.relative_to in unevaluated:
            problems.append(
                f"gates[{i}].relative_to: {gate.relative_to!r} is not evaluated (`evaluate: false` or "
                "`evaluate_base: false`), so there is no value to measure the drop from"
            )
        if gate.max_drop is not None and gate.relative_to is None:
            for index, stage in enumerate(recipe.stages):
                # a gate on every stage skips those with nothing evaluated before them (the first stage when
                # the base is not evaluated); a gate that names the stage must have something to measure from
                named = gate.stages is not None and stage.name in gate.stages
                if named and stage.evaluate and recipe.evaluated_ancestor(index) is None:
                    problems.append(
                        f"gates[{i}]: nothing stage {stage.name!r} descends from is evaluated (nor the base model), "
                        "so its drop cannot be measured; set `relative_to:` or evaluate an earlier stage"
                    )
    return problems


def _check_environments(recipe: Recipe, recipe_dir: Path, lines: dict[tuple, int]) -> list[str]:
    """Each RL stage's `environment:`: the class loads, its args fit its constructor, its tools describe."""
    from posttrain.envs.registry import check_environment

    problems: list[str] = []
    for i, stage in enumerate(recipe.stages):
        spec = getattr(stage, "environment", None)
        if spec is None:
            continue
        if getattr(stage, "dapo", None) is not None:  # its refill rounds rebuild rollouts without the episode masks
            problems.append(f"stages[{i}] ({stage.name}).environment: multi-turn episodes do not combine with `dapo:` yet")
        try:
            check_environment(spec.name, spec.args, recipe_dir, describe=False)
        except ValueError as error:
            line = _line_suffix(lines, ("stages", i, "environment", "name"))
            problems.append(f"stages[{i}] ({stage.name}).environment{line}: {error}")
    return problems


BUILTIN_SOURCES = {"builtin:arithmetic", "builtin:calculator", "builtin:code", "builtin:corpus", "builtin:preferences", "builtin:rlaif"}


def _check_stage_inputs(recipe: Recipe, recipe_dir: Path, lines: dict[tuple, int]) -> list[str]:
    """`stage:NAME/OUTPUT` data sources (an earlier stage with that output; not in evaluations) and
    constitution files (read and checked here, so a bad principle or template stops before any generation)."""
    from posttrain.data.stage_outputs import parse_stage_source, source_problem
    from posttrain.data.constitution import ConstitutionError, load_constitution

    problems: list[str] = []
    earlier: dict[str, Any] = {}
    checked: dict[Path, str | None] = {}

    def check_constitution(where: str, name: str, line_path: tuple) -> None:
        file = resolve_data_path(name, recipe_dir)
        if file not in checked:
            try:
                load_constitution(file)
                checked[file] = None
            except ConstitutionError as err:
                checked[file] = str(err)
        if checked[file]:
            problems.append(f"{where}{_line_suffix(lines, line_path)}: {checked[file]}")

    for i, stage in enumerate(recipe.stages):
        for path, spec in data_specs(stage):
            where = f"stages[{i}] ({stage.name}).{path}"
            problem = source_problem(spec.source, earlier)
            if problem:
                problems.append(f"{where}.source{_line_suffix(lines, ('stages', i, path.split('.')[0], 'source'))}: {problem}")
            if spec.constitution:
                check_constitution(f"{where}.constitution", spec.constitution, ("stages", i, path.split(".")[0]))
        if isinstance(getattr(stage, "constitution", None), str):
            check_constitution(f"stages[{i}] ({stage.name}).constitution", stage.constitution, ("stages", i, "constitution"))
        earlier[stage.name] = stage
    for i, evaluation in enumerate(recipe.evaluations):
        if evaluation.data is not None and parse_stage_source(evaluation.data.source):
            problems.append(f"evaluations[{i}] ({evaluation.name}).data.source: stage outputs cannot be evaluated "
                            "after every stage; evaluate a file or built-in data")
    return problems


def _demonstration_options_unused(recipe: Recipe) -> list[str]:
    """`carry_slip` and `tool_share` change the built-in demonstrations (the assistant turns SFT imitates); RL
    prompts and evaluations read the question and the right answer only, so there the options would be silently
    ignored: an error instead."""
    problems = []
    readers = [(f"stages[{i}] ({s.name})", s, "a grpo/ppo stage samples its own answers") for i, s in
               enumerate(recipe.stages) if s.kind in ("grpo", "ppo")]
    readers += [(f"evaluations[{i}] ({e.name})", e, "an evaluation scores against the right answer") for i, e in
                enumerate(recipe.evaluations)]
    for where, section, why in readers:
        for path, spec in data_specs(section):
            for option in ("carry_slip", "tool_share"):
                if getattr(spec, option) is not None:
                    problems.append(
                        f"{where}.{path}.{option}: it changes the demonstrations' answers, which this data does not "
                        f"use ({why}); set it on the SFT stage's data"
                    )
    return problems


def data_specs(recipe: Strict) -> list[tuple[str, DataSpec]]:
    """Every DataSpec in the recipe with its dotted location."""
    found: list[tuple[str, DataSpec]] = []

    def walk(obj: Any, path: str) -> None:
        if isinstance(obj, DataSpec):
            found.append((path, obj))
        elif isinstance(obj, Strict):
            for key in type(obj).model_fields:
                walk(getattr(obj, key), f"{path}.{key}" if path else key)
        elif isinstance(obj, (list, tuple)):
            for i, item in enumerate(obj):
                label = f"{path}[{i}]" + (f" ({item.name})" if hasattr(item, "name") and isinstance(getattr(item, "name"), str) else "")
                walk(item, label)

    walk(recipe, "")
    return found


def _tuple_path(dotted: str, recipe: Recipe) -> tuple:
    """`stages[1] (sft).data` -> ('stages', 1, 'data', 'source') for line lookup."""
    out: list[Any] = []
    for part in dotted.replace("]", "").split("."):
        name, _, index = part.partition("[")
        out.append(name)
        if index:
            out.append(int(index.split(" ")[0]))
    return tuple(out) + ("source",)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> LoadedRecipe:
    """Reads, overrides and validates a recipe; raises `RecipeError` listing every problem found."""
    path = Path(path)
    if not path.exists():
        raise RecipeError(f"recipe file not found: {path}")
    text = path.read_text()
    try:
        raw = yaml.load(text, Loader=RecipeLoader)
        lines = _line_index(text)
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe must be a YAML mapping")
    raw = apply_overrides(raw, overrides or [])
    recipe, problems = _validate_structure(raw, lines)
    if recipe is not None:
        problems += _check_semantics(recipe, path.parent, lines)
        recipe, curation_problems = bind_evaluation_sets(recipe)  # `posttrain.config.curate`
        problems += curation_problems
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise RecipeError(f"{path}: {len(problems)} problem(s):\n{listing}")
    return LoadedRecipe(recipe=recipe, path=path, raw=raw)
