"""Evaluation and gate settings of a recipe.

`kind: lm_eval` evaluations name lm-evaluation-harness tasks; their names are checked here, at recipe load
(so `posttrain validate` reports an unknown task with lm-eval's close matches, without loading a model),
through lm-eval's task index, which imports no torch.
"""

from __future__ import annotations

import difflib
import functools
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from posttrain.config.common import DataSpec, Strict
from posttrain.registry import EVALUATORS

LM_EVAL_INSTALL = "pip install 'posttrain[lm_eval]'"
VLLM_INSTALL = "pip install 'posttrain[vllm]'"
# tasks posttrain writes itself (`posttrain.eval.lm_eval_tasks`), offline; not in lm-eval's index
BUILTIN_LM_EVAL_TASKS = ("posttrain_arithmetic",)
# simple_evaluate arguments the evaluation's own fields (or the evaluator) set; `args` may not repeat them
LM_EVAL_RESERVED_ARGS = (
    "model", "model_args", "tasks", "num_fewshot", "limit", "apply_chat_template", "task_manager", "batch_size",
)
# fields added after results were first cached: at their defaults they stay out of the cache key
# (`posttrain.eval.cache_key`), so results stored before them stay valid
LATER_FIELDS = {"backend": "hf", "backend_args": {}, "timeout_minutes": 30.0}


def require_lm_eval() -> None:
    """Raises a one-line ValueError naming the extra to install when lm-eval is not importable."""
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        raise ValueError(f"`kind: lm_eval` needs lm-evaluation-harness, which is not installed: {LM_EVAL_INSTALL}")


def require_vllm() -> None:
    """Raises a one-line ValueError naming the extra to install when vLLM is not importable."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise ValueError(f"`backend: vllm` needs vLLM, which is not installed: {VLLM_INSTALL} (or `backend: hf`)")


@functools.lru_cache(maxsize=4)
def lm_eval_task_names(task_paths: tuple[str, ...]) -> frozenset[str]:
    """Every task, group and tag name lm-eval knows (its own plus those under ``task_paths``)."""
    from lm_eval.tasks import TaskManager

    return frozenset(TaskManager(include_path=list(task_paths) or None).all_tasks)


def check_lm_eval_tasks(tasks: list[str], task_paths: list[str]) -> None:
    """Raises a ValueError naming each unknown task with lm-eval's closest task names (difflib over its index)."""
    wanted = [t for t in tasks if t not in BUILTIN_LM_EVAL_TASKS]
    if not wanted:
        return
    known = lm_eval_task_names(tuple(str(Path(p).expanduser().resolve()) for p in task_paths)) | set(BUILTIN_LM_EVAL_TASKS)
    unknown = [t for t in wanted if t not in known]
    if unknown:
        hints = [f"{t!r} (close: {', '.join(difflib.get_close_matches(t, known, n=5, cutoff=0.6)) or 'none'})" for t in unknown]
        raise ValueError(f"unknown lm-eval task(s): {'; '.join(hints)}; `task_paths:` adds local task folders")


class EvalConfig(Strict):
    """One evaluator, run after every stage (and by `posttrain eval`)."""

    name: str = Field(description="Short name; metrics appear as `NAME.metric` in the table.")
    kind: str = Field(
        description="`exact_match`: greedy answers compared with the `answer` column (the final number, "
        "or the whole text); `perplexity`: on held-out text; `pairwise_accuracy`: a reward model's "
        "chosen-over-rejected accuracy on preference pairs (runs on reward-model checkpoints only); "
        "`preference_accuracy`: the same for a language model's response log-probabilities; "
        "`principle_violations`: the share of greedy answers breaking the built-in world's checkable principles; "
        "`lm_eval`: EleutherAI lm-evaluation-harness `tasks` (metrics `NAME.TASK.METRIC,FILTER`, e.g. "
        "`harness.gsm8k.exact_match,strict-match`; needs the `lm_eval` extra)."
    )
    data: DataSpec | None = Field(None, description="Held-out data (every kind but `lm_eval`, whose tasks name theirs).")
    max_new_tokens: int = Field(16, gt=0, description="exact_match: generation budget per answer.")
    batch_size: int = Field(64, gt=0, description="Examples per forward pass.")
    match: Literal["last_number", "final_answer", "marked", "full_text"] = Field(
        "last_number",
        description="exact_match: how the answer is read, the answer policies the math reward's `match:` names "
        "(posttrain.verifiers.math_answer.ANSWER_POLICIES): `last_number`, `final_answer` (a marked answer "
        "- boxed, `####`, 'the answer is', 'Answer:' - else the last number; conflicting answers score 0), "
        "`marked`; or `full_text` (the stripped text).",
    )
    seq_len: int = Field(256, gt=0, description="perplexity: tokens per window; preference evaluators: tokens per text.")
    tasks: list[str] = Field(
        default_factory=list,
        description="lm_eval: task or group names, lm-eval's (`gsm8k`, `mmlu`, ...; the hub data needs the "
        "network), from `task_paths`, or `posttrain_arithmetic` (the built-in arithmetic test split, offline).",
    )
    task_paths: list[str] = Field(
        default_factory=list, description="lm_eval: folders of local lm-eval YAML tasks (relative to the working directory)."
    )
    num_fewshot: int | None = Field(None, ge=0, description="lm_eval: few-shot examples (default: each task's own).")
    limit: float | None = Field(
        None, gt=0, description="lm_eval: examples per task (the first ones); below 1, a share of each task."
    )
    apply_chat_template: bool | None = Field(
        None,
        description="lm_eval: render prompts with the tokenizer's chat template (lm-eval's `apply_chat_template`); "
        "default: when the tokenizer has one (chat models yes, base models no). Recorded as `NAME.chat_template`.",
    )
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="lm_eval: further `lm_eval.simple_evaluate` arguments, e.g. `gen_kwargs`, `system_instruction`, "
        "`fewshot_as_multiturn`, `bootstrap_iters`.",
    )
    backend: Literal["hf", "vllm"] = Field(
        "hf", description="lm_eval: lm-eval's model class: `hf` (the loaded model, in process) or `vllm` (lm-eval's "
        "vLLM class on the checkpoint's folder; needs the `vllm` extra).",
    )
    backend_args: dict[str, Any] = Field(
        default_factory=dict, description="lm_eval: further arguments of that model class, e.g. for vllm "
        "`{max_model_len: 2048, gpu_memory_utilization: 0.5, dtype: float32}`.",
    )
    timeout_minutes: float = Field(
        30.0, gt=0, description="With several processes the main one evaluates while the others wait for its "
        "metrics: at most the sum of the evaluations' `timeout_minutes` per checkpoint, then the run stops.",
    )

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        return EVALUATORS.check(kind)

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> "EvalConfig":
        harness_fields = [f for f in ("tasks", "task_paths", "args", "backend_args") if getattr(self, f)]
        harness_fields += ["backend"] if self.backend != "hf" else []
        harness_fields += [f for f in ("num_fewshot", "limit", "apply_chat_template") if getattr(self, f) is not None]
        if self.kind != "lm_eval":
            if self.data is None:
                raise ValueError(f"evaluation {self.name!r} (kind {self.kind}) needs `data`")
            if harness_fields:
                raise ValueError(f"{', '.join(harness_fields)}: only `kind: lm_eval` evaluations take these")
            return self
        if self.data is not None:
            raise ValueError("`kind: lm_eval` takes `tasks`, not `data` (each lm-eval task names its own data)")
        if not self.tasks:
            raise ValueError("`kind: lm_eval` needs `tasks`, e.g. [posttrain_arithmetic] or [gsm8k]")
        if reserved := sorted(set(self.args) & set(LM_EVAL_RESERVED_ARGS)):
            raise ValueError(f"args: {reserved} are set by the evaluation's own fields or by posttrain")
        require_lm_eval()
        if self.backend == "vllm":
            require_vllm()
        check_lm_eval_tasks(self.tasks, self.task_paths)
        return self


class GateConfig(Strict):
    """A condition checked after a stage's evaluation; a failed gate stops the pipeline with a message."""

    metric: str = Field(description="Metric name as in the table, e.g. `arithmetic.accuracy`.")
    max_drop: float | None = Field(
        None,
        ge=0,
        description="The metric may fall by at most this much from the stage's parent (the nearest evaluated "
        "stage it descends from; or `relative_to`).",
    )
    min: float | None = Field(None, description="The metric must be at least this.")
    stages: list[str] | None = Field(None, description="Stages the gate applies to; default all.")
    relative_to: str | None = Field(
        None,
        description="`max_drop` is measured from this earlier stage's value (or `base`: the starting model), e.g. "
        "the SFT model every later stage must stay near, instead of from each stage's parent.",
    )

    @model_validator(mode="after")
    def _has_condition(self) -> "GateConfig":
        if self.max_drop is None and self.min is None:
            raise ValueError("a gate needs `max_drop` or `min`")
        return self
