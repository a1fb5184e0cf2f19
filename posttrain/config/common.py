"""Building blocks of a recipe: model, data, training and LoRA settings.

Pydantic models with ``extra="forbid"`` so a misspelt key is an error, and a description on every field
(which also documents the recipe format). No torch import here: `posttrain validate` must answer fast.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Strict(BaseModel):
    """Base of every recipe section: unknown keys are errors, values are not coerced silently."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ModelSpec(Strict):
    """Where the first stage's weights come from."""

    name_or_path: str = Field(
        "builtin:tiny",
        description="`builtin:tiny` / `builtin:micro` (a model the project builds offline), a local "
        "folder in HF format, or a hub id such as `Qwen/Qwen2.5-0.5B`.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) to load.")
    trust_remote_code: bool = Field(
        False, description="Allow model code from the hub. Off by default: it runs arbitrary code."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weight dtype when loading; `auto` = bfloat16 on a GPU that supports it, else float32."
    )
    seed: int = Field(0, description="Seed for building a built-in model (initial weights and tokenizer).")
    init_std: float | None = Field(
        None, gt=0, le=1,
        description="Built-in models only: standard deviation of the initial weights (transformers' "
        "`initializer_range`); default the configuration's 0.02. The quickstart uses 0.06: SFT leaves its loss "
        "plateau in far fewer steps (posttrain/data/world.py has the measurements).",
    )

    @model_validator(mode="after")
    def _init_std_only_for_builtin(self) -> "ModelSpec":
        if self.init_std is not None and not self.name_or_path.startswith("builtin:"):
            raise ValueError(
                f"init_std sets the initial weights of a built-in model; {self.name_or_path!r} is loaded with its "
                "trained weights (remove init_std, or use builtin:tiny / builtin:micro)"
            )
        return self


class DataSpec(Strict):
    """One dataset: a built-in task, a local JSONL/Parquet/JSON file, or a `datasets` dataset."""

    source: str = Field(
        description="`builtin:arithmetic`, `builtin:corpus`, a path to a .jsonl/.json/.parquet file "
        "(relative to the recipe file), or `hf:NAME` for a `datasets` hub dataset or local dataset folder."
    )
    split: str = Field("train", description="Split to read (`train`/`test` for built-in tasks).")
    count: int | None = Field(
        None, gt=0, description="Rows to take (built-in tasks: how many to generate; files: a limit)."
    )
    format: Literal["auto", "messages", "prompt_completion", "text"] = Field(
        "auto",
        description="Row layout: chat `messages`, `prompt`/`completion` (strings or message lists), or plain "
        "`text`; `auto` picks by each row's keys.",
    )
    render: Literal["auto", "chat_template", "raw"] = Field(
        "auto",
        description="How string `prompt`/`completion` rows become tokens: `chat_template` (a user and an assistant "
        "turn; `auto`, logged) or `raw` (the prompt text then the completion text and eos, as TRL concatenates "
        "them; loss on the completion; RL prompts: the prompt text as it is). Message rows always use the chat "
        "template.",
    )
    subset: str | None = Field(None, description="`datasets` configuration name (hf: sources only).")
    levels: list[int] | None = Field(
        None, description="Built-in arithmetic only: difficulty levels to include (1-5), drawn in turn; a level listed "
        "twice is drawn twice as often. Default all."
    )
    on_bad_row: Literal["error", "skip"] = Field(
        "error", description="A malformed row stops with an error naming file and line, or is skipped and counted."
    )
    constitution: str | None = Field(
        None,
        description="`builtin:rlaif` only: the constitution file (relative to the recipe) whose principles and "
        "templates the demonstrations use; default the built-in arithmetic constitution.",
    )
    negatives: Literal["clear", "near", "mixed"] | None = Field(
        None,
        description="`builtin:preferences` only: the wrong answers of the correctness pairs: `clear` (off by "
        "30-60% of the answer; the default), `near` (off by 1, 2 or 10, or two digits swapped) or `mixed` "
        "(each half the time).",
    )
    carry_slip: float | None = Field(
        None,
        ge=0,
        le=1,
        description="`builtin:arithmetic` only: share of the sums that carry whose demonstrated answer forgets the "
        "carry (`27 + 5` -> `22`), as a weak teacher would; the rows' `answer` field stays right. Default 0.",
    )
    tool_share: float | None = Field(
        None,
        gt=0,
        le=1,
        description="`builtin:calculator` only: share of the demonstrations that call the calculator, as a weak "
        "teacher would; the others answer with an estimate (numbers rounded to tens). Default 1 (all call it).",
    )
    demonstrations: list[Literal["answer", "critique", "revision", "judge"]] | None = Field(
        None,
        description="`builtin:rlaif` only: which demonstrations to make (answers, or the critic's, reviser's and "
        "judge's roles), in their usual shares renormalised; default all (see posttrain.data.rlaif_demonstrations).",
    )


class LoraSpec(Strict):
    """Low-rank adapters (peft). With LoRA only the adapters train; the base stays frozen."""

    r: int = Field(16, gt=0, description="Adapter rank.")
    alpha: float = Field(32.0, gt=0, description="Scaling numerator: updates are scaled by alpha / r.")
    dropout: float = Field(
        0.0, ge=0, lt=1,
        description="Dropout on the adapter input (SFT and reward models only: RL and DPO stages turn every dropout "
        "off, as TRL does, so log-probabilities computed at different times agree).",
    )
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or `all-linear`."
    )
    merge: bool = Field(
        True,
        description="Merge adapters into the weights when saving, so the checkpoint is a plain model; "
        "the adapter is saved beside it in `adapter/` as well.",
    )


def refuse_fp16(value: object) -> object:
    """`precision: fp16` is refused with the reason, rather than as one more value not in the list.

    fp16 training needs a dynamic loss scaler (gradients under ~6e-8 underflow to zero in fp16), which the
    optimizer step does not implement; bf16 has fp32's exponent range and needs none. On a GPU without bf16
    (before Ampere) train in fp32.
    """
    if value in ("fp16", "float16", "half"):
        raise ValueError(
            "fp16 training is not offered: it needs a loss scaler the optimizer step does not implement; use "
            "`bf16` (GPUs from Ampere on, recent CPUs) or `fp32` (older GPUs)"
        )
    return value


class TrainSpec(Strict):
    """Optimisation settings shared by the training stages."""

    steps: int | None = Field(None, gt=0, description="Optimizer steps. Exactly one of steps/epochs.")
    epochs: float | None = Field(None, gt=0, description="Passes over the data. Exactly one of steps/epochs.")
    batch_size: int = Field(16, gt=0, description="Sequences per micro-batch on each process.")
    grad_accum: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    seq_len: int = Field(256, gt=0, description="Tokens per sequence; longer examples are truncated.")
    packing: bool = Field(
        True, description="Pack several examples into each sequence (attention kept within each example)."
    )
    packing_strategy: Literal["in_order", "best_fit"] = Field(
        "in_order",
        description="SFT packing: `in_order` fills rows in data order (an example that does not fit starts a new "
        "row); `best_fit` packs best-fit decreasing, as TRL's `bfd` (quickstart SFT data, seq_len 128: 6.5% -> "
        "4.2% padding, 5,727 -> 5,587 rows).",
    )
    lr: float = Field(1e-4, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    schedule: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Learning-rate decay after warm-up (to 10% of the peak for cosine/linear)."
    )
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm; null disables.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="`auto`: bf16 autocast on a GPU that supports it, fp32 on CPU. fp16 is refused: "
        "it needs a loss scaler (see refuse_fp16)."
    )
    log_every: int = Field(10, gt=0, description="Log metrics every N optimizer steps.")
    on_nan: Literal["stop", "skip"] = Field(
        "stop", description="A NaN/inf loss or gradient norm stops the stage, or skips the step (counted)."
    )
    save_every: int | None = Field(
        None,
        gt=0,
        description="Save a resumable training state (weights, optimizer, random-number generators, data position) "
        "every N optimizer steps inside the stage; `posttrain run RECIPE --resume` continues from the newest. "
        "null: none.",
    )
    keep_last: int = Field(2, gt=0, description="Resumable training states kept per stage; older ones are deleted.")

    _no_fp16 = field_validator("precision", mode="before")(refuse_fp16)

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> "TrainSpec":
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("set exactly one of `steps` and `epochs`")
        return self


def pairs_only(spec: DataSpec) -> DataSpec:
    """Preference rows have one layout of their own; the chat/text `format:` choices do not apply."""
    if spec.format != "auto":
        raise ValueError(
            f"preference data is read as `prompt`/`chosen`/`rejected` rows; remove `format: {spec.format}`"
        )
    return spec
