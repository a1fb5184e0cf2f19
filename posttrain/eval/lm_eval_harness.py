"""`kind: lm_eval`: EleutherAI's lm-evaluation-harness tasks on the checkpoint the pipeline has loaded.

The loaded model and tokenizer are handed to lm-eval's HF backend (`lm_eval.models.huggingface.HFLM`
accepts a `PreTrainedModel`), so nothing is loaded twice and a LoRA or reward-stage checkpoint is scored as
the pipeline loads it. lm-eval does the rest: prompts, few-shot, generation, filters and metrics.

Metric names: lm-eval reports ``results[TASK]["METRIC,FILTER"]`` (e.g. ``gsm8k`` / ``exact_match,strict-match``);
they are flattened to ``TASK.METRIC,FILTER`` and the pipeline prefixes the evaluation's name, so a gate reads
``harness.gsm8k.exact_match,strict-match`` (evaluation ``harness``, task ``gsm8k``, metric ``exact_match``
after the ``strict-match`` filter). Standard errors keep lm-eval's name (``exact_match_stderr,strict-match``);
``TASK.n`` is the number of documents scored; ``chat_template`` is 1.0 when the prompts were rendered with the
tokenizer's chat template. Group rows (e.g. ``mmlu``) are flattened the same way. Non-numbers are dropped.

Provenance (lm-eval version, a hash of each task's resolved config, the generation settings, few-shot
counts, the chat-template choice) comes back as the result's ``provenance`` attribute; the pipeline stores it
in the stage's ``eval.json`` and ``posttrain eval`` prints it.

Several processes: the pipeline evaluates on the main process while the others wait for its metrics (a
broadcast, under the process group's timeout, 30 min by default for gloo and NCCL); lm-eval runs in that one
process (HFLM given a model object is single-process by design).
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from posttrain.config.evaluation import BUILTIN_LM_EVAL_TASKS, LM_EVAL_INSTALL, EvalConfig, require_lm_eval
from posttrain.eval.evaluators import register_evaluator
from posttrain.eval.lm_eval_tasks import ARITHMETIC_TASK, builtin_task_folder


class HarnessMetrics(dict):
    """Flat ``{name: float}`` metrics plus ``provenance``: what decided them (for eval.json, not the table)."""

    provenance: dict[str, Any]


def flatten_results(results: dict[str, dict[str, Any]], samples: dict[str, Any] | None = None) -> dict[str, float]:
    """lm-eval's ``results`` table as ``{"TASK.METRIC,FILTER": value}``; names, aliases, ``sample_len`` and
    non-numbers (an ``N/A`` stderr) dropped; ``TASK.n`` from lm-eval's ``n-samples`` (``effective``) when given.

    >>> flatten_results({"gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.25,
    ...                            "exact_match_stderr,strict-match": "N/A"}}, {"gsm8k": {"effective": 8}})
    {'gsm8k.exact_match,strict-match': 0.25, 'gsm8k.n': 8.0}
    """
    flat: dict[str, float] = {}
    for task, values in sorted(results.items()):
        for metric, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and metric != "sample_len":
                flat[f"{task}.{metric}"] = float(value)
        if samples and task in samples:
            flat[f"{task}.n"] = float(samples[task]["effective"])
    return flat


def config_hash(task_config: dict[str, Any]) -> str:
    """sha256 (16 hex digits) of a task's resolved config as lm-eval reports it."""
    return hashlib.sha256(json.dumps(task_config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def uses_chat_template(config: EvalConfig, tokenizer: Any) -> bool:
    """The evaluation's `apply_chat_template`, or (unset) whether the tokenizer has a chat template."""
    if config.apply_chat_template is not None:
        return config.apply_chat_template
    return bool(getattr(tokenizer, "chat_template", None))


def task_manager(config: EvalConfig) -> Any:
    """lm-eval's task index with the evaluation's `task_paths` (and posttrain's task folder when asked for).

    lm-eval's own ~15,000 task files are indexed only when a task may need them (indexing them takes
    5-20 s here): not when every task is posttrain's own.
    """
    from lm_eval.tasks import TaskManager

    paths = list(config.task_paths)
    if ARITHMETIC_TASK in config.tasks:
        paths.append(str(builtin_task_folder()))
    only_builtin = set(config.tasks) <= set(BUILTIN_LM_EVAL_TASKS)
    return TaskManager(include_path=paths or None, include_defaults=not only_builtin)


def run_harness(model: Any, tokenizer: Any, config: EvalConfig, seed: int = 0) -> dict[str, Any]:
    """lm-eval's ``simple_evaluate`` on the loaded model; its raw result dictionary (samples kept)."""
    require_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    model.eval()
    # HFLM warns that a model object is not for `accelerate launch`: it is right, and the pipeline calls this
    # on the main process only (see the module docstring), so the warning would only mislead here
    backend_logger = logging.getLogger("lm_eval.models.huggingface")
    level = backend_logger.level
    backend_logger.setLevel(logging.ERROR)
    try:
        harness_model = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=config.batch_size)
    finally:
        backend_logger.setLevel(level)
    limit = config.limit if config.limit is None or config.limit < 1 else int(config.limit)
    return simple_evaluate(
        model=harness_model, tasks=list(config.tasks), num_fewshot=config.num_fewshot, limit=limit,
        apply_chat_template=uses_chat_template(config, tokenizer), task_manager=task_manager(config),
        random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
        **{"log_samples": True, "bootstrap_iters": 0, **config.args},
    )


def provenance(raw: dict[str, Any], chat_template: bool) -> dict[str, Any]:
    """What decided the numbers: lm-eval version, task config hashes, generation settings, few-shot counts."""
    import importlib.metadata

    configs = raw.get("configs", {})
    return {
        "lm_eval_version": importlib.metadata.version("lm_eval"),
        "task_config_hash": {task: config_hash(task_config) for task, task_config in sorted(configs.items())},
        "generation": {task: c.get("generation_kwargs") for task, c in sorted(configs.items()) if c.get("generation_kwargs")},
        "num_fewshot": raw.get("n-shot", {}),
        "chat_template": chat_template,
    }


@register_evaluator("lm_eval")
def lm_eval(model: Any, tokenizer: Any, rows: list[Any], config: EvalConfig) -> dict[str, float]:
    """lm-evaluation-harness `tasks` on the model; flat metrics (see the module docstring) with provenance."""
    if rows:
        raise ValueError(f"evaluation {config.name!r}: `kind: lm_eval` reads its tasks' data, not rows")
    raw = run_harness(model, tokenizer, config)
    if raw is None:  # lm-eval returns None off rank 0 of its own process group; ours is always rank 0
        raise RuntimeError(f"lm-eval returned no results for {config.tasks} ({LM_EVAL_INSTALL} for the extra)")
    chat = uses_chat_template(config, tokenizer)
    metrics = HarnessMetrics(flatten_results(raw["results"], raw.get("n-samples")), chat_template=float(chat))
    metrics.provenance = provenance(raw, chat)
    return metrics
