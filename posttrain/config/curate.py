"""Recipe section of `kind: curate` (no torch): a stage that trains nothing and writes a curated dataset; the
stage is `posttrain.stages.curate`, the rules are `posttrain.curation`.

::

    - name: clean
      kind: curate
      sources:
        - {data: {source: sft.jsonl}, weight: 3}
        - {data: {source: "builtin:corpus", count: 5000}, weight: 1}   # replay
      mixture: {total: 8000, replacement: false}
      dedup: {near_threshold: 0.8}
      decontaminate: {ngram: 13}          # on by default, against every evaluation set of the recipe
      quality: {min_words: 3, repetition: true, filter: my_filters.py:keep}
      curriculum: {key: level, phases: 2}
    - name: sft
      kind: sft
      data: {source: "stage:clean/rows"}
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from posttrain.config.common import DataSpec, Strict
from posttrain.config.decontamination import DecontaminationSpec, EvaluationSet  # noqa: F401 (importable from here)
from posttrain.config.stages import StageConfig, register_stage_config
from posttrain.registry import is_file_function


def _file_function(value: str | None, what: str) -> str | None:
    if value is not None and not is_file_function(value):
        raise ValueError(f"{what} {value!r}: a function in a file is written 'path/to/file.py:function'")
    return value


class CurationSource(Strict):
    """One source of the mixture."""

    data: DataSpec = Field(description="The rows (any data source, `stage:NAME/OUTPUT` included).")
    name: str | None = Field(None, description="Label in the report; default the source.")
    weight: float | None = Field(None, description="Share of the mixture, relative to the other sources' weights.")
    count: int | None = Field(None, gt=0, description="Exact number of rows to take (instead of a weight).")

    @field_validator("weight")
    @classmethod
    def _weight(cls, weight: float | None) -> float | None:
        if weight is not None and (math.isnan(weight) or math.isinf(weight) or weight < 0):
            raise ValueError(f"a mixture weight must be a finite number >= 0, got {weight}")
        return weight

    @model_validator(mode="after")
    def _one_of(self) -> "CurationSource":
        if self.weight is not None and self.count is not None:
            raise ValueError("give a source `weight` or `count`, not both")
        return self

    def label(self) -> str:
        return self.name or self.data.source


class MixtureSpec(Strict):
    """How the sources are combined once curated."""

    total: int | None = Field(
        None, gt=0, description="Rows in the mixture when sources have weights; default the largest mixture that "
        "keeps the weights without drawing any row twice.",
    )
    replacement: bool = Field(False, description="Draw rows with replacement (a source may be repeated, e.g. replay).")
    shuffle: bool = Field(True, description="Interleave the sources in a seeded random order (a curriculum orders instead).")


class DedupSpec(Strict):
    """Duplicate removal (`posttrain.curation.dedup`); the first row seen is kept."""

    exact: bool = Field(True, description="Drop rows whose normalised text (case, spacing, punctuation ignored) was seen.")
    near: bool = Field(True, description="Drop near duplicates (MinHash-LSH, `datasketch`).")
    near_threshold: float = Field(0.8, gt=0, le=1, description="Jaccard similarity from which rows are near duplicates "
                                  "(0.8: Lee et al. 2022, arXiv 2107.06499).")
    num_perm: int = Field(128, ge=16, description="MinHash permutations.")
    shingle: Literal["char", "word"] = Field("char", description="Shingle by characters of the normalised text or by words.")
    shingle_size: int = Field(5, gt=0, description="Characters or words per shingle.")
    near_same_numbers: bool = Field(True, description="Near duplicates must hold the same numbers in order ("
                                    "`gets 9 more` / `gets 5 more` are other problems, however alike the text).")
    near_min_words: int = Field(10, ge=1, description="Rows with fewer words get exact deduplication only: in a short "
                                "row one changed character is often another item (`What is 10 + 0?` / `10 + 1?`).")


class QualitySpec(Strict):
    """Per-row quality filters (`posttrain.curation.quality`)."""

    min_words: int = Field(1, ge=0, description="Drop rows with fewer words.")
    max_words: int | None = Field(None, gt=0, description="Drop rows with more words.")
    max_chars: int | None = Field(None, gt=0, description="Drop rows with more characters.")
    repetition: bool = Field(True, description="Gopher's repeated n-gram limits (Rae et al. 2021, arXiv 2112.11446 table A1).")
    repetition_scale: float = Field(1.0, gt=0, description="Multiplies Gopher's limits (above 1 is more lenient).")
    repetition_min_words: int = Field(50, ge=1, description="Rows shorter than this are not judged for repetition "
                                      "(50: Gopher's least document length; one repeated phrase is most of a short row).")
    min_alphanumeric: float = Field(0.5, ge=0, le=1, description="Least share of letters, digits and spaces.")
    scripts: list[str] | None = Field(
        None, description="Unicode scripts letters must mostly belong to (e.g. [LATIN]); default any.")
    filter: str | None = Field(None, description="`path/to/file.py:function` (relative to the recipe): called with "
                               "each row, True keeps it, False or a reason string drops it.")

    _filter = field_validator("filter")(classmethod(lambda cls, value: _file_function(value, "quality filter")))


class CurriculumSpec(Strict):
    """Order rows by difficulty (easy to hard) and optionally cut them into phases, one output each."""

    key: str | None = Field(None, description="The row field holding the difficulty (a number), e.g. `level`.")
    function: str | None = Field(None, description="`path/to/file.py:function` returning a row's difficulty (a number).")
    order: Literal["easy_to_hard", "hard_to_easy"] = Field("easy_to_hard", description="Direction of the order.")
    phases: int = Field(1, gt=0, le=32, description="Cut the ordered rows into this many equal phases, written as "
                        "outputs `phase_1`.. `phase_N`, for one training stage each (stages shuffle within their data).")

    _function = field_validator("function")(classmethod(lambda cls, value: _file_function(value, "curriculum function")))

    @model_validator(mode="after")
    def _key_or_function(self) -> "CurriculumSpec":
        if (self.key is None) == (self.function is None):
            raise ValueError("give the curriculum exactly one of `key` and `function`")
        return self


@register_stage_config("curate")
class CurateConfig(StageConfig):
    """Reads sources, removes duplicates, contaminated and low-quality rows, mixes and orders the rest, and writes
    them as ``stage:NAME/rows`` (plus ``stage:NAME/removed`` with each removed row and why, and curriculum phases)."""

    makes_checkpoint: ClassVar[bool] = False
    evaluate: bool = Field(False, description="A curate stage trains no model: nothing to evaluate (must stay false).")
    sources: list[CurationSource] = Field(min_length=1, description="The data to curate, in order (earlier rows win ties).")
    mixture: MixtureSpec = Field(default_factory=MixtureSpec, description="How sources combine.")
    dedup: DedupSpec = Field(default_factory=DedupSpec, description="Duplicate removal.")
    decontaminate: DecontaminationSpec = Field(default_factory=DecontaminationSpec, description="Decontamination of "
                                               "the sources (`false` turns it off).")
    quality: QualitySpec = Field(default_factory=QualitySpec, description="Quality filters.")
    curriculum: CurriculumSpec | None = Field(None, description="Difficulty order; default none.")
    examples: int = Field(3, ge=0, le=50, description="Removed rows shown per rule in the manifest and report.")

    @property
    def outputs(self) -> tuple[str, ...]:
        phases = self.curriculum.phases if self.curriculum and self.curriculum.phases > 1 else 0
        return ("rows", "removed", *(f"phase_{i}" for i in range(1, phases + 1)))

    @model_validator(mode="after")
    def _consistent(self) -> "CurateConfig":
        if self.evaluate:
            raise ValueError("a curate stage trains no model; `evaluate` must be false")
        if self.from_ is not None:
            raise ValueError("a curate stage reads data, not a checkpoint; remove `from`")
        weighted = [s.weight is not None for s in self.sources]
        if any(weighted) and not all(weighted):
            raise ValueError("give every source a `weight`, or none (then each takes its `count`, or all its rows)")
        if all(weighted) and sum(s.weight for s in self.sources) <= 0:
            raise ValueError("the mixture weights sum to 0")
        if all(weighted) and self.mixture.replacement and self.mixture.total is None:
            raise ValueError("weights drawn with replacement need `mixture.total`")
        return self


def evaluation_sets(recipe) -> dict[str, DataSpec]:
    """Every evaluation set of a recipe by name: each `evaluations:` entry by its name and each stage's
    `heldout:` as ``STAGE.heldout`` (sets another stage writes, ``stage:``, are not known before the run;
    an `lm_eval` evaluation has no `data:`, its rows live in lm-eval's task files and are not checked)."""
    sets = {evaluation.name: evaluation.data for evaluation in recipe.evaluations if evaluation.data is not None}
    for stage in recipe.stages:
        heldout = getattr(stage, "heldout", None)
        if heldout is not None and not heldout.data.source.startswith("stage:"):
            sets[f"{stage.name}.heldout"] = heldout.data
    return {name: spec for name, spec in sets.items() if not spec.source.startswith("stage:")}


def training_data(stage) -> list[tuple[str, DataSpec]]:
    """The data a stage trains on, by its recipe key: `data` and pre-training's `replay.data` (a curate stage's
    sources are checked by the curate stage itself)."""
    found = [("data", getattr(stage, "data", None))]
    replay = getattr(stage, "replay", None)
    if replay is not None:
        found.append(("replay.data", replay.data))
    return [(key, spec) for key, spec in found if isinstance(spec, DataSpec)]


def curated_by(spec: DataSpec, curate_stages: set[str]) -> str | None:
    """The curate stage whose output ``spec`` reads (its own `decontaminate` settings applied), or None."""
    if not spec.source.startswith("stage:"):
        return None
    name = spec.source.removeprefix("stage:").partition("/")[0]
    return name if name in curate_stages else None


def bind_evaluation_sets(recipe) -> tuple[object, list[str]]:
    """The recipe with each stage's `decontaminate.sets` filled in (so its fingerprint covers them), and the
    problems found: a name in `against` that is no evaluation set, a `from:` naming a curate stage.

    A curate stage checks its sources; any other stage its training data (`training_data`), except data a
    curate stage wrote (checked there, with that stage's settings): a stage reading only such data gets no sets.
    """
    available = evaluation_sets(recipe)
    problems: list[str] = []
    stages = []
    data_only = {stage.name: stage.kind for stage in recipe.stages if not stage.makes_checkpoint}
    curate_stages = {stage.name for stage in recipe.stages if isinstance(stage, CurateConfig)}
    for i, stage in enumerate(recipe.stages):
        if stage.from_ in data_only:
            problems.append(f"stages[{i}] ({stage.name}).from: {stage.from_!r} is a {data_only[stage.from_]} stage, "
                            "which writes data and no checkpoint")
        checks = isinstance(stage, CurateConfig) or any(
            curated_by(spec, curate_stages) is None for _, spec in training_data(stage))
        if checks and stage.decontaminate.enabled:
            names = stage.decontaminate.against if stage.decontaminate.against is not None else list(available)
            unknown = [name for name in names if name not in available]
            if unknown:
                problems.append(f"stages[{i}] ({stage.name}).decontaminate.against: {unknown} name no evaluation set "
                                f"(sets: {sorted(available) or 'none'})")
            sets = [EvaluationSet(name=name, data=available[name]) for name in names if name in available]
            stage = stage.model_copy(update={"decontaminate": stage.decontaminate.model_copy(update={"sets": sets})})
        stages.append(stage)
    return recipe.model_copy(update={"stages": stages}), problems
